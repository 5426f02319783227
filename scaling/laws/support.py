"""Which fit approaches a set of runs can support: the one rule the fit CLI, a sweep's
planner and a sweep's end-of-run fit apply, checked from the design without fitting.

- approach 3 needs at least as many runs as the law has parameters (a sweep asks one more,
  over 2+ model sizes and 2+ token counts, so that its fit is determined);
- approach 2 needs 2 IsoFLOP budgets with 3+ model sizes each (a parabola per budget);
- approach 1, as a sweep fits it (the envelope of the annealed endpoints,
  :func:`scaling.laws.approach1.fit_approach1_endpoints`), needs 3+ model sizes with 2+
  endpoints of distinct compute C each (a best size with a neighbour on each side).

``python -m analysis.fit`` reads approach 1 off training curves instead
(:func:`scaling.laws.approach1.fit_approach1`, which checks its own input).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scaling.laws import approach1
from scaling.laws.approach2 import MIN_SIZES, approach2_problem
from scaling.laws.law import N_PARAMS

__all__ = ["Requirements", "FIT_CLI", "SWEEP"]


@dataclass(frozen=True)
class Requirements:
    """The least a set of runs needs for each approach; each check returns why not, or None."""

    approach3_runs: int = N_PARAMS
    approach3_spread: bool = False  # also 2+ sizes and 2+ token counts
    approach2_budgets: int = 2
    approach2_sizes: int = MIN_SIZES
    approach1_sizes: int = approach1.MIN_SIZES
    approach1_endpoints: int = approach1.MIN_ENDPOINTS  # per size, of distinct C

    def approach3(self, N, D) -> str | None:
        n, n_sizes, n_tokens = len(N), np.unique(N).size, np.unique(D).size
        if not self.approach3_spread:
            if n < self.approach3_runs:
                return f"{n} runs is fewer than the {N_PARAMS} parameters of L = E + A/N^alpha + B/D^beta"
            return None
        if n < self.approach3_runs or n_sizes < 2 or n_tokens < 2:
            return (
                f"{n} completed runs; approach 3 needs at least {self.approach3_runs} (more than the law's "
                f"{N_PARAMS} parameters) over 2+ sizes and 2+ token counts"
            )
        return None

    def approach2(self, N, C, budgets=None, rtol: float = 0.1) -> str | None:
        return approach2_problem(
            N, C, budgets, rtol, min_budgets=self.approach2_budgets, min_sizes=self.approach2_sizes
        )

    def approach1(self, N, C) -> str | None:
        return approach1.endpoints_problem(N, C, min_sizes=self.approach1_sizes, min_endpoints=self.approach1_endpoints)

    def supported(self, N, D, C, budgets=None, rtol: float = 0.1) -> tuple[str, ...]:
        """The approaches these runs support, in the order '3', '2', '1'."""
        why = {"3": self.approach3(N, D), "2": self.approach2(N, C, budgets, rtol), "1": self.approach1(N, C)}
        return tuple(a for a, w in why.items() if w is None)

    def describe(self) -> str:
        """What each approach needs, in words (the message that refuses a design)."""
        spread = " over 2+ sizes and 2+ token counts" if self.approach3_spread else ""
        return (
            f"approach 3 needs {self.approach3_runs} runs{spread}, approach 2 {self.approach2_budgets} "
            f"IsoFLOP budgets of {self.approach2_sizes}+ sizes, approach 1 (annealed endpoints) "
            f"{self.approach1_sizes}+ sizes with {self.approach1_endpoints}+ token counts each"
        )


FIT_CLI = Requirements()
"""``python -m analysis.fit``: approach 3 from as many runs as parameters."""
SWEEP = Requirements(approach3_runs=N_PARAMS + 1, approach3_spread=True)
"""A sweep's plan and its end-of-run fit."""
