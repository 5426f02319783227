"""The values of a sweep spec read from YAML: numbers (with SI suffixes), whole numbers,
mappings with known keys, non-empty lists; each check raises a UsageError naming where in
the spec the value is. Also the SI form numbers are printed in (:func:`format_si`).

And the spec's values given on the command line (``--isoflop.budgets 1e12,3e12``,
``--seeds 0,1``): :data:`SPEC_FLAGS` names them, :func:`parse_flag` reads one flag's text
(lists are comma-separated; a model is a target count such as ``1e5`` or ``100K``, or a shape
``L2-d32`` or ``L2-d32-h4``: n_layer, d_model, n_head) and :func:`with_flags` puts them into
the spec's mapping before the spec is checked, so a bad value fails as in a spec file.
"""

from __future__ import annotations

import math
import re
from typing import Any

from scaling.errors import UsageError, did_you_mean

_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def spec_error(where: str, msg: str) -> UsageError:
    return UsageError(f"sweep spec {where}: {msg}")


def parse_number(value: Any, where: str, *, positive: bool = True) -> float:
    """A number from YAML: 1e6, 2000000, "1e6", "100K", "1.5M", "2B", "3T"."""
    if isinstance(value, bool):
        raise spec_error(where, f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        try:
            x = float(value)
        except OverflowError:
            raise spec_error(
                where, f"expected a number in the floating-point range, got an integer of {value.bit_length()} bits"
            ) from None
    elif isinstance(value, str):
        s = value.strip().replace("_", "").replace(",", "")
        mult = 1.0
        if s and s[-1].lower() in _SUFFIX:
            mult, s = _SUFFIX[s[-1].lower()], s[:-1]
        try:
            x = float(s) * mult
        except ValueError:
            raise spec_error(where, f"expected a number, got {value!r}") from None
    else:
        raise spec_error(where, f"expected a number, got {value!r}")
    if not math.isfinite(x) or (positive and x <= 0):
        raise spec_error(where, f"expected a positive number, got {value!r}")
    return x


def positive_int(value: Any, where: str) -> int:
    x = parse_number(value, where)
    if x != int(x):
        raise spec_error(where, f"expected a whole number, got {value!r}")
    return int(x)


def parse_mapping(value: Any, where: str, allowed: set[str] | None = None) -> dict:
    """A mapping (None: an empty one) whose keys are all in ``allowed`` (None: any keys)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise spec_error(where, f"expected a mapping, got {type(value).__name__}")
    if allowed is not None:
        unknown = sorted((k for k in value if k not in allowed), key=str)
        if unknown:
            hint = did_you_mean(unknown[0], allowed)
            raise spec_error(where, f"unknown key {unknown[0]!r}{hint} (expected one of {sorted(allowed)})")
    return value


def parse_list(value: Any, where: str) -> list:
    """A non-empty list."""
    if not isinstance(value, list) or not value:
        raise spec_error(where, "expected a non-empty list")
    return value


def tokens_per_param_band(g: dict, where: str) -> dict:
    """``isoflop.min_tokens_per_param`` and ``max_tokens_per_param`` of an isoflop mapping (those
    given): the band of D / N a planned point must lie in, 0 for no bound."""
    band = {}
    for bound in ("min_tokens_per_param", "max_tokens_per_param"):
        if g.get(bound) is not None:
            band[bound] = parse_number(g[bound], f"{where}: isoflop.{bound}", positive=False)
            if band[bound] < 0:
                raise spec_error(where, f"isoflop.{bound} must be 0 (no bound) or positive, got {g[bound]!r}")
    low, high = band.get("min_tokens_per_param", 0.0), band.get("max_tokens_per_param", 0.0)
    if high and high <= low:
        raise spec_error(where, f"isoflop.max_tokens_per_param ({high:g}) must be above min_tokens_per_param ({low:g})")
    return band


def format_si(x: float) -> str:
    """``x`` to 3 significant digits with the suffix K, M, G or T (as parse_number reads it)."""
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suf}"
    return f"{x:.3g}"


# ----------------------------------------------------------------------------- command-line values

SPEC_FLAGS: dict[str, tuple[str, ...]] = {
    "isoflop": ("budgets", "models", "min_steps", "min_tokens_per_param", "max_tokens_per_param"),
    "grid": ("models", "tokens"),
    "noise": ("seeds", "models", "budgets"),
    "lr_scan": ("lrs", "models", "flops"),
    "lr_rule": ("c", "gamma", "n_ref"),
    "per_size": ("warmup_tokens_per_param", "warmup_max_fraction", "init_scale"),
    "sizing": ("aspect", "head_dim", "count", "max_layers"),
    "fit": ("enabled", "loss", "count", "bootstrap"),
}
"""The spec's sections settable as ``--section.field VALUE`` (no Config section has these
names), besides ``--seeds``."""

NUMBER_LISTS = ("isoflop.budgets", "grid.tokens", "lr_scan.lrs")
SEED_LISTS = ("seeds", "noise.seeds")
MODEL_LISTS = ("isoflop.models", "grid.models", "lr_scan.models")
EXCLUSIVE = (("isoflop", "grid"), ("lr_scan", "lr_rule"))
"""Sections of which a spec has one: a flag of one drops the other from the spec."""

_SHAPE_RE = re.compile(r"^L(\d+)-d(\d+)(?:-h(\d+))?$")


def flag_error(flag: str, msg: str) -> UsageError:
    return UsageError(f"--{flag}: {msg}")


def parse_items(text: str, flag: str) -> list[str]:
    """A comma-separated list: its items stripped of spaces; UsageError on an empty item."""
    items = [t.strip() for t in str(text).split(",")]
    if not all(items):
        raise flag_error(flag, f"expected a comma-separated list without empty items, got {text!r}")
    return items


def parse_seeds(text: str, flag: str) -> list[int]:
    """``0,1,2``: non-negative whole numbers."""
    items = parse_items(text, flag)
    if not all(t.isdigit() for t in items):
        raise flag_error(flag, f"expected non-negative whole numbers separated by commas, got {text!r}")
    return [int(t) for t in items]


def parse_model_item(text: str, flag: str) -> dict | str:
    """``L2-d32`` or ``L2-d32-h4``: a shape (a spec mapping); anything else is a target count,
    left to the spec's number check (``1e5``, ``100K``)."""
    m = _SHAPE_RE.match(text)
    if m:
        shape = {"n_layer": int(m[1]), "d_model": int(m[2])}
        return shape if m[3] is None else {**shape, "n_head": int(m[3])}
    if text[:1] in "Ll":
        raise flag_error(flag, f"expected a model as L<n_layer>-d<d_model>[-h<n_head>] or a count, got {text!r}")
    return text


def parse_flag(flag: str, text: str) -> Any:
    """The spec value of ``--flag TEXT`` (``flag`` as ``section.field`` or ``seeds``)."""
    if flag in SEED_LISTS:
        return parse_seeds(text, flag)
    if flag in NUMBER_LISTS:
        return parse_items(text, flag)
    if flag in MODEL_LISTS:
        if flag == "lr_scan.models" and "," not in text and not _SHAPE_RE.match(text.strip()):
            return text.strip()  # a number of sizes
        return [parse_model_item(t, flag) for t in parse_items(text, flag)]
    if flag == "fit.enabled":
        if text.lower() not in ("true", "false"):
            raise flag_error(flag, f"expected true or false, got {text!r}")
        return text.lower() == "true"
    return text.strip()


def with_flags(d: dict, flags: dict[str, Any]) -> dict:
    """The spec mapping ``d`` with the parsed flags (``{"isoflop.budgets": [...], "seeds":
    [...]}``) in place of its values: a flag of one of EXCLUSIVE's sections drops the other,
    ``isoflop.models`` gives every budget these models, ``fit`` and ``per_size`` given as true
    or false become mappings."""
    out = dict(d)
    sections: dict[str, dict] = {}
    for flag, value in flags.items():
        if "." not in flag:
            out[flag] = value
            continue
        sec, key = flag.split(".", 1)
        sections.setdefault(sec, {})[key] = value
    for sec, values in sections.items():
        for pair in EXCLUSIVE:
            if sec in pair:
                other = pair[1 - pair.index(sec)]
                if other in sections:
                    raise UsageError(f"--{sec}.* and --{other}.* exclude each other: give one")
                out.pop(other, None)
        old = out.get(sec)
        if sec == "fit" and isinstance(old, bool):
            old = {"enabled": old}
        elif old is None or old is True:
            old = {}
        if not isinstance(old, dict):
            raise spec_error(sec, f"expected a mapping to apply --{sec}.* to, got {old!r}")
        new = {**old, **values}
        if sec == "isoflop" and "models" in values and isinstance(new.get("budgets"), list):
            new["budgets"] = [b.get("flops") if isinstance(b, dict) else b for b in new["budgets"]]
        out[sec] = new
    return out
