"""The curriculum's config values: pacing names and difficulty-score specs, parsed and checked.

``scaling.config`` checks ``data.curriculum*`` with these when a DataConfig is built, so this
module depends on nothing but :mod:`scaling.errors`; the pacing functions, the scores and the
sampler they name are in :mod:`scaling.data.curriculum`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scaling.errors import UsageError

PACINGS = ("linear", "root", "step", "exp")
SCORE_KINDS = ("length", "rarity", "model")
UNITS = {"seq": "sequence", "doc": "document"}


@dataclass(frozen=True)
class ScoreSpec:
    kind: str  # length | rarity | model
    unit: str  # sequence | document
    ref: str = ""  # model: the reference run directory

    def describe(self) -> str:
        return f"{self.kind}{':' + self.ref if self.ref else ''} per {self.unit}"


def parse_curriculum(text: str) -> tuple[str, bool]:
    """``data.curriculum`` -> (pacing name, anti); UsageError on anything else ('' is not a pacing)."""
    s = str(text).strip()
    anti = s.startswith("anti-")
    name = s[5:] if anti else s
    if name not in PACINGS:
        raise UsageError(
            f"data.curriculum must be '' (none), one of {', '.join(PACINGS)} or anti-<one of them>, got {text!r}"
        )
    return name, anti


def parse_score(text: str) -> ScoreSpec:
    """``data.curriculum_score`` = ``[seq:|doc:](length | rarity | model:<run dir>)``."""
    s = str(text).strip()
    unit = "sequence"
    head = s.split(":", 1)[0]
    if head in UNITS and ":" in s:
        unit, s = UNITS[head], s.split(":", 1)[1]
    kind, sep, ref = s.partition(":")
    if kind not in SCORE_KINDS or (kind == "model") != bool(ref.strip()) or (kind != "model" and sep):
        raise UsageError(f"data.curriculum_score must be [seq:|doc:]length, rarity or model:<run dir>, got {text!r}")
    return ScoreSpec(kind, unit, ref.strip())


def check_config(data: Any) -> None:
    """Validate a DataConfig's curriculum fields (UsageError naming the field)."""
    if data.curriculum:
        parse_curriculum(data.curriculum)
    parse_score(data.curriculum_score)
    if not 0.0 < data.curriculum_horizon <= 1.0:
        raise UsageError(f"data.curriculum_horizon must be in (0, 1], got {data.curriculum_horizon}")
    if not 0.0 < data.curriculum_c0 <= 1.0:
        raise UsageError(f"data.curriculum_c0 must be in (0, 1], got {data.curriculum_c0}")
