"""A sweep spec's ``noise:`` section: extra seeds of the smallest sizes at the smallest budgets,
so that pairs of runs that differ only in the seed measure the sweep's own noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scaling.sweep.parse import parse_list, parse_mapping, positive_int, spec_error


@dataclass(frozen=True)
class NoiseSpec:
    """Extra seeds for the ``models`` smallest sizes at the ``budgets`` smallest budgets (token
    budgets of a grid): pairs of runs that differ only in the seed measure the sweep's noise."""

    seeds: tuple[int, ...]
    models: int
    budgets: int

    def extra_runs(self, runs: list[dict], seeds: tuple[int, ...], where: str) -> list[dict]:
        """Copies, with each noise seed, of the first seed's planned runs (dicts with ``seed``,
        ``counts`` and ``point``: the budget, or a grid's tokens) of the ``models`` smallest sizes
        (by N) at the ``budgets`` smallest budgets; UsageError when the design has fewer."""
        clash = sorted(set(self.seeds) & set(seeds))
        if clash:
            raise spec_error(where, f"noise.seeds has seed {clash[0]}, which the sweep trains already")
        sizes = sorted({r["counts"]["n_params"] for r in runs})
        points = sorted({r["point"] for r in runs})
        for key, want, have in (("models", self.models, len(sizes)), ("budgets", self.budgets, len(points))):
            if want > have:
                raise spec_error(where, f"noise.{key} is {want}, but the design has only {have}")
        small, low = set(sizes[: self.models]), set(points[: self.budgets])
        return [
            dict(r, seed=s)
            for s in self.seeds
            for r in runs
            if r["seed"] == seeds[0] and r["counts"]["n_params"] in small and r["point"] in low
        ]


def parse_noise(value: Any, where: str, seeds: tuple[int, ...] | None) -> NoiseSpec:
    """The ``noise:`` section; ``seeds``: the sweep's own seeds (None: the base config's)."""
    m = parse_mapping(value, where, {"seeds", "models", "budgets"})
    for key in ("seeds", "models", "budgets"):
        if key not in m:
            raise spec_error(where, f"needs {key} (noise: {{seeds: [1], models: K, budgets: M}})")
    extra = parse_list(m["seeds"], f"{where}.seeds")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in extra):
        raise spec_error(where, f"seeds must be non-negative integers, got {extra}")
    if len(set(extra)) != len(extra):
        raise spec_error(where, "seeds has a repeated seed")
    if seeds is not None and set(extra) & set(seeds):
        raise spec_error(where, f"seed {sorted(set(extra) & set(seeds))[0]} is one of the sweep's seeds already")
    return NoiseSpec(
        seeds=tuple(extra),
        models=positive_int(m["models"], f"{where}.models"),
        budgets=positive_int(m["budgets"], f"{where}.budgets"),
    )
