"""Shared look of the analysis plots: number formatting, colours by log value, markers per
model size, percentile bands of bootstrap samples."""

from __future__ import annotations

import math
import warnings

import matplotlib
import numpy as np

__all__ = ["MARKERS", "RANGE_COLOR", "DODGE", "sci", "log_colors", "percentile_band"]

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
"""One marker per model size (cycled)."""
RANGE_COLOR = "0.92"
"""The shading of the compute range the runs cover."""
DODGE = 0.012
"""The offset in log10 C between the sizes in the residual plot (runs of a budget share a C)."""


def sci(x: float, digits: int = 1) -> str:
    """x as mathtext m x 10^e (1.2x10^12)."""
    if not (math.isfinite(x) and x > 0):
        return f"{x:g}"
    e = math.floor(math.log10(x))
    m = round(x / 10**e, digits)
    if m >= 10:
        m, e = m / 10, e + 1
    return rf"${m:.{digits}f}\times10^{{{e}}}$"


def log_colors(values, cmap: str = "viridis") -> list:
    """A colour per value, by log10 value over the range (0.85 of the map: its light end is hard to see)."""
    lv = np.log10(np.asarray(values, dtype=np.float64))
    lo, hi = (float(lv.min()), float(lv.max())) if lv.size else (0.0, 0.0)
    cm = matplotlib.colormaps[cmap]
    return [cm(0.0 if hi == lo else 0.85 * (v - lo) / (hi - lo)) for v in lv]


def percentile_band(values, level: float):
    """(lo, hi) percentile band along axis 0 of (K, m) values, ignoring non-finite samples."""
    v = np.where(np.isfinite(values), values, np.nan)
    q = [50.0 * (1 - level), 50.0 * (1 + level)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a column with no finite sample: NaN
        lo, hi = np.nanpercentile(v, q, axis=0)
    return lo, hi
