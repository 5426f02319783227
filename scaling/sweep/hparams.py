"""The per-size settings a sweep's runs get: the peak learning rate from a rule lr(N), the
warmup and the init scale, the same for every run of one model size.

**Learning rate.** ``lr = c * (N / n_ref)^-gamma`` (:class:`LrRule`), with N the count the
spec's sizing matches (``sizing.count``: all parameters or the non-embedding ones). The rule
is fitted to a pilot scan (``lr_scan:``, :mod:`scaling.sweep.pilot`) or given in the spec
(``lr_rule: {c, gamma, n_ref}``); each run's peak lr is the rule at its size, rounded to 4
significant digits (so that configs read well and hash stably).

**Warmup** (``per_size:``): ``warmup_steps = min(ceil(k N / T), floor(f S_min))`` with
T the tokens per step, S_min the steps of the size's shortest run, k =
``warmup_tokens_per_param`` (default 1) and f = ``warmup_max_fraction`` (default 0.05).
Porian et al. 2024 find that a warmup too long for small models is one of the causes of
Kaplan's exponent, and warm up for N tokens (k = 1); at Chinchilla's optimum D = 20 N that
is 5% of the run, hence the cap: a run far below the optimum's D/N (a large model at a small
budget) spends at most 5% of its shortest run warming up. Taking the shortest run of the
size gives every run of a size (and every cooldown branch of a constant-rate run) one
warmup, so that their learning-rate schedules agree wherever they overlap.

**Init** (``per_size.init_scale``, optional): ``model.init_std = init_scale / sqrt(d_model)``,
the variance 1/d_model that keeps a unit-scale residual stream's projections of unit scale at
every width (the fan-in rule of muP's hidden weights, Yang et al. 2022); residual projections
are scaled down by sqrt(2 n_layer) as always. The library default (a fixed 0.02, GPT-2's)
is untouched; a sweep asks for this.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Protocol, TypeVar

from scaling.config import Config
from scaling.sweep.spec import PerSizeSpec, Spec

FORMULA = "lr = c * (N / n_ref)^-gamma"


@dataclass(frozen=True)
class LrOptimum:
    """One scanned size: the rates tried, their losses (None: diverged or not finite) and the
    optimum read off them (:func:`scaling.sweep.pilot.optimum`)."""

    n_params: int  # the rule's count of this size
    shape: str
    lr_opt: float
    lrs: tuple[float, ...]
    losses: tuple[float | None, ...]
    in_range: bool  # False: the best rate is at an end of the scanned range (the optimum may lie beyond)

    def to_dict(self) -> dict:
        return {
            "n_params": self.n_params,
            "shape": self.shape,
            "lr_opt": self.lr_opt,
            "lrs": list(self.lrs),
            "losses": list(self.losses),
            "in_range": self.in_range,
        }


@dataclass(frozen=True)
class LrApplied:
    """The peak lr one size of the main plan got."""

    n_params: int  # the rule's count of this size
    shape: str
    lr: float

    def to_dict(self) -> dict:
        return {"n_params": self.n_params, "shape": self.shape, "lr": self.lr}


@dataclass(frozen=True)
class LrRule:
    """``lr = c * (N / n_ref)^-gamma``, with the scan it was fitted to (``optima``; empty for
    a rule the spec gives) and the rates the main plan's sizes got (``applied``)."""

    c: float
    gamma: float
    n_ref: float
    count: str = "total"  # the N the rule reads: total (n_params) | nonembed (n_params_nonembed)
    optima: tuple[LrOptimum, ...] = ()
    applied: tuple[LrApplied, ...] = ()

    def lr(self, n: float) -> float:
        """The rule at N, rounded to 4 significant digits."""
        return float(f"{self.c * (n / self.n_ref) ** -self.gamma:.4g}")

    @property
    def out_of_range(self) -> tuple[LrOptimum, ...]:
        return tuple(o for o in self.optima if not o.in_range)

    def to_dict(self) -> dict:
        return {
            "c": self.c,
            "gamma": self.gamma,
            "formula": FORMULA,
            "n_ref": self.n_ref,
            "count": self.count,
            "optima": [o.to_dict() for o in self.optima],
            "applied": [a.to_dict() for a in self.applied],
        }

    @classmethod
    def from_dict(cls, d: dict) -> LrRule:
        return cls(
            c=float(d["c"]),
            gamma=float(d["gamma"]),
            n_ref=float(d["n_ref"]),
            count=str(d["count"]),
            optima=tuple(
                LrOptimum(
                    int(o["n_params"]),
                    str(o["shape"]),
                    float(o["lr_opt"]),
                    tuple(map(float, o["lrs"])),
                    tuple(None if x is None else float(x) for x in o["losses"]),
                    bool(o["in_range"]),
                )
                for o in d.get("optima", ())
            ),
            applied=tuple(LrApplied(int(a["n_params"]), str(a["shape"]), float(a["lr"])) for a in d.get("applied", ())),
        )


class SizedRun(Protocol):
    """What the settings read of a planned run (:class:`scaling.sweep.plan.PlannedRun`)."""

    cfg: Config
    n_params: int
    n_params_nonembed: int
    steps: int


R = TypeVar("R", bound=SizedRun)


@dataclass(frozen=True)
class SizeSettings:
    """The settings every run of one size gets (None: the base config's value stays)."""

    shape: str
    n: int  # the rule's count
    lr: float | None = None
    warmup_steps: int | None = None
    init_std: float | None = None


def shape_of(cfg: Config) -> str:
    m = cfg.model
    return f"L{m.n_layer}-d{m.d_model}-h{m.n_head}"


def count_of(run: SizedRun, count: str) -> int:
    return run.n_params if count == "total" else run.n_params_nonembed


def rule_from_spec(spec: Spec) -> LrRule | None:
    """The fixed rule of ``lr_rule:`` (None without one)."""
    r = spec.lr_rule
    return None if r is None else LrRule(c=r.c, gamma=r.gamma, n_ref=r.n_ref, count=spec.sizing.count)


def warmup_steps(n: int, shortest_steps: int, tokens_per_step: int, per_size: PerSizeSpec) -> int:
    """``min(ceil(k N / T), floor(f S_min))`` (the module docstring's rule)."""
    by_n = math.ceil(per_size.warmup_tokens_per_param * n / tokens_per_step - 1e-9)
    return max(0, min(by_n, math.floor(per_size.warmup_max_fraction * shortest_steps + 1e-9)))


def init_std(d_model: int, per_size: PerSizeSpec) -> float | None:
    if per_size.init_scale is None:
        return None
    return float(f"{per_size.init_scale / math.sqrt(d_model):.4g}")


def size_settings(
    spec: Spec, runs: list[SizedRun] | tuple[SizedRun, ...], rule: LrRule | None
) -> dict[str, SizeSettings]:
    """The settings of every size (by shape) of ``runs``: lr from ``rule``, warmup and init from
    the spec's ``per_size`` (the module docstring's rules)."""
    out: dict[str, SizeSettings] = {}
    fixed = dict(spec.warmups)  # a pilot scan warms up as its main plan's runs of the size do
    for shape in dict.fromkeys(shape_of(r.cfg) for r in runs):
        rs = [r for r in runs if shape_of(r.cfg) == shape]
        n = count_of(rs[0], spec.sizing.count)
        s = SizeSettings(shape=shape, n=n, lr=None if rule is None else rule.lr(n))
        if spec.per_size is not None:
            r0 = rs[0]
            tps = r0.cfg.train.batch_size * r0.cfg.model.seq_len
            s = dataclasses.replace(
                s,
                warmup_steps=fixed.get(shape) or warmup_steps(n, min(r.steps for r in rs), tps, spec.per_size),
                init_std=init_std(r0.cfg.model.d_model, spec.per_size),
            )
        out[shape] = s
    return out


def apply(spec: Spec, runs: list[R], rule: LrRule | None) -> list[R]:
    """``runs`` with their size's settings in their configs (a dataclass copy of each)."""
    settings = size_settings(spec, runs, rule)
    out = []
    for r in runs:
        s = settings[shape_of(r.cfg)]
        optim = r.cfg.optim
        if s.lr is not None:
            optim = dataclasses.replace(optim, lr=s.lr)
        if s.warmup_steps is not None:
            optim = dataclasses.replace(optim, warmup_steps=s.warmup_steps)
        model = r.cfg.model if s.init_std is None else dataclasses.replace(r.cfg.model, init_std=s.init_std)
        out.append(dataclasses.replace(r, cfg=dataclasses.replace(r.cfg, optim=optim, model=model)))
    return out


def with_applied(rule: LrRule, spec: Spec, runs: list[SizedRun] | tuple[SizedRun, ...]) -> LrRule:
    """``rule`` with the lr each size of ``runs`` got (``applied``), smallest size first."""
    settings = sorted(size_settings(spec, runs, rule).values(), key=lambda s: s.n)
    return dataclasses.replace(rule, applied=tuple(LrApplied(s.n, s.shape, s.lr or 0.0) for s in settings))


def describe(spec: Spec, runs: list[SizedRun] | tuple[SizedRun, ...], rule: LrRule | None) -> list[str]:
    """The plan's lines on the per-size settings (none when the spec sets none)."""
    lines = []
    what = "n_params" if spec.sizing.count == "total" else "n_params_nonembed"
    settings = sorted(size_settings(spec, runs, rule).values(), key=lambda s: s.n)
    if rule is not None:
        src = "fitted to the pilot scan" if rule.optima else "given by the spec"
        lines.append(
            f"  learning rate {FORMULA} with c={rule.c:.4g}, gamma={rule.gamma:.4g}, n_ref={rule.n_ref:.4g} "
            f"(N = {what}; {src}): " + ", ".join(f"{s.shape} {s.lr:.4g}" for s in settings)
        )
    elif spec.lr_scan is not None:
        lines.append(
            f"  learning rate: lr from the scan ({FORMULA} fitted to the lr_scan runs, N = {what}); "
            f"the lr in these configs ({runs[0].cfg.optim.lr:g}) is provisional"
        )
    if spec.per_size is not None:
        ps = spec.per_size
        lines.append(
            f"  warmup per size: min({ps.warmup_tokens_per_param:g} N tokens, {ps.warmup_max_fraction:g} "
            f"of the size's shortest run) in steps: " + ", ".join(f"{s.shape} {s.warmup_steps}" for s in settings)
        )
        if ps.init_scale is not None:
            lines.append(
                f"  init std per size: {ps.init_scale:g} / sqrt(d_model): "
                + ", ".join(f"{s.shape} {s.init_std:.4g}" for s in settings)
            )
    return lines
