"""How far a prediction reaches beyond the compute of the runs a law was fitted on.

A law fitted on runs up to compute C_max is tested there; a prediction at C lies
log10(C / C_max) decades of compute beyond the data. Past :data:`DECADES` (one decade) the
prediction is an extrapolation the runs do not test, and :func:`warnings` says so.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DECADES", "decades_beyond", "warnings"]

DECADES = 1.0
"""Decades of compute beyond the largest run past which a prediction is warned about."""


def decades_beyond(C, C_data) -> np.ndarray:
    """log10(C / max(C_data)) for each budget in ``C``: positive beyond the largest run's compute."""
    c_max = float(np.max(np.asarray(C_data, dtype=np.float64)))
    return np.log10(np.asarray(C, dtype=np.float64) / c_max)


def warnings(C, C_data, *, decades: float = DECADES) -> list[str]:
    """One line for each budget in ``C`` more than ``decades`` decades of compute beyond the
    largest of ``C_data``."""
    c_max = float(np.max(np.asarray(C_data, dtype=np.float64)))
    return [
        f"warning: the prediction at C = {c:.3g} FLOPs lies {k:.1f} decades of compute beyond the largest "
        f"run (C = {c_max:.3g}), more than {decades:g}: the runs do not test the law there"
        for c, k in zip(np.atleast_1d(np.asarray(C, dtype=np.float64)), np.atleast_1d(decades_beyond(C, C_data)))
        if k > decades
    ]
