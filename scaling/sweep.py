"""Sweeps over model size N and tokens D: the spec, the sizing rule, the plan, the runner and
the results table.

A sweep spec is a YAML file (``experiments/configs/*.yaml``)::

    name: smoke                  # optional; the default --out is runs/sweep-<name> (default: the file's stem)
    description: ...             # optional, printed with the plan
    base:                        # the train config of every run (sections as in experiments.train --config),
      data: {corpus: gutenberg}  #   or a path to such a YAML file (relative to the spec)
      model: {seq_len: 128}
      train: {batch_size: 16}
    sizing:                      # how a target parameter count becomes a shape (defaults shown)
      aspect: 16                 #   d_model / n_layer
      head_dim: 16               #   n_head = d_model / head_dim
      count: total               #   the count matched to the target: total (n_params) | nonembed
      max_layers: 64
    isoflop:                     # EITHER an IsoFLOP design: FLOP budgets x model sizes, D = C / (6 N) ...
      budgets: [1e12, 3e12]      #   a number, or {flops: C, models: [...]} with its own model list
      models: [3e4, 1e5, 3e5]    #   (used by budgets without their own list)
      min_steps: 1               #   runs of fewer steps are left out of the plan (and listed)
    grid:                        # ... OR a grid: models x token budgets
      models: [{n_layer: 2, d_model: 64}, 1e5]
      tokens: [1e6, 4e6]
    seeds: [0, 1]                # optional (default: base train.seed); every run once per seed
    arms:                        # optional named config variants; every run once per arm
      - name: baseline           #   (adds an ``arm`` column and a ``-<arm>`` run-id suffix)
      - name: linear
        config: {data: {curriculum: linear}}
        tags: {pacing: linear}   #   extra results columns of this arm's runs
    tags: {project: demo}        # optional extra results columns of every run
    fit: true                    # false: no fit at the end; or {loss: val_loss}

A model is a *shape* ``{n_layer, d_model[, n_head]}`` (``n_head`` defaults to
``d_model / sizing.head_dim``) or a *target parameter count* (``1e5``, ``"100K"``, ``"1.5M"``).

Sizing rule (one rule, documented): for every depth ``n_layer = 1 .. max_layers`` take the
width ``d_model = head_dim * max(1, round(aspect * n_layer / head_dim))`` (the fixed
depth-to-width ratio, rounded to whole heads of ``head_dim``), ``n_head = d_model / head_dim``,
and keep the depth whose real parameter count (``count``: all parameters, the N of C = 6ND,
by default; or the non-embedding count) is closest to the target in log ratio (ties go to the
shallower model). Counts include the embedding of the configured vocabulary and context, so
the plan prints the real N next to the target.

Token budgets are whole batches: a grid's D is rounded to the nearest multiple of
``batch_size * seq_len`` (at least one batch), an IsoFLOP run's D = C / (6 N) with N the total
parameter count, rounded the same way; the ``budget`` column keeps the nominal C.

Overrides ``--section.field VALUE`` apply to the base config of every run (arms apply on top of
them); the fields the design sets (``model.n_layer``, ``model.d_model``, ``model.n_head``,
``train.tokens`` and, with ``seeds``, ``train.seed``) cannot be overridden.

Run ids are ``L<n_layer>-d<d_model>-D<tokens>-s<seed>`` (e.g. ``L4-d128-D2.0e6-s0``), with
``-h<n_head>`` when n_head is not the sizing default and ``-<arm>`` for arms.

Sweep directory::

    DIR/plan.json                 the whole plan (every run's shape, N, D, C, budget, seed, arm)
    DIR/runs/<run_id>/            experiments.train's outputs, plus plan.json (this run's plan entry)
    DIR/results.csv               one row per finished run, rebuilt from runs/*/summary.json
    DIR/sweep_log.jsonl           one line per run start/end: run_id, start step, status, pid, host
    DIR/fit.json, DIR/plots/      when every planned run has finished
    DIR/locks/                    advisory locks (a run being trained; the results rebuild)

Rerunning resumes: finished runs are kept (a diverged one is retried only with
``retry_diverged``: it resumes from its last good checkpoint), a partial run resumes from its
checkpoint. ``shard=(i, n)`` runs the plan's runs ``i, i+n, i+2n, ...``; a run being trained by
another process (a lock held) is skipped, and the results table is rebuilt under a lock from
every run's summary.json, so concurrent shards never lose or duplicate a row. The shard that
finishes last (when every planned run has a summary) writes fit.json and the plots.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from scaling import config as config_lib
from scaling.config import Config, ModelConfig
from scaling.errors import UsageError
from scaling import flops as flops_lib

DESIGN_FIELDS = ("model.n_layer", "model.d_model", "model.n_head", "train.tokens")
SPEC_KEYS = {"name", "description", "base", "sizing", "grid", "isoflop", "seeds", "arms", "tags", "fit"}
RESULT_COLUMNS = (
    "run_id", "n_layer", "d_model", "n_head", "seq_len", "batch_size", "n_params", "n_params_nonembed", "tokens",
    "steps", "flops_6nd", "flops_kaplan", "flops_chinchilla", "flops_xla", "final_train_loss", "val_loss", "val_bpb",
    "status", "wall_s", "compile_s", "tokens_per_s", "epochs", "budget", "seed", "target_n",
)
"""results.csv columns, then ``arm`` (when the sweep has arms) and any tags."""
VOLATILE_COLUMNS = ("wall_s", "compile_s", "tokens_per_s")
"""Columns that depend on the machine and timing (everything else is reproducible)."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+]*$")
_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


# ----------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class Sizing:
    """The sizing rule for target parameter counts (see the module docstring)."""

    aspect: float = 16.0
    head_dim: int = 16
    count: str = "total"
    max_layers: int = 64

    def describe(self) -> str:
        what = "n_params" if self.count == "total" else "n_params_nonembed"
        return (f"d_model = {self.head_dim} * round({self.aspect:g} * n_layer / {self.head_dim}), "
                f"n_head = d_model / {self.head_dim}, depth chosen so that {what} is closest to the target")


@dataclass(frozen=True)
class ModelSpec:
    """One model entry: a target count, or an explicit shape."""

    target: float | None = None
    n_layer: int | None = None
    d_model: int | None = None
    n_head: int | None = None

    def describe(self) -> str:
        if self.target is not None:
            return f"target {_si(self.target)}"
        return f"L{self.n_layer}-d{self.d_model}" + (f"-h{self.n_head}" if self.n_head else "")


@dataclass(frozen=True)
class Arm:
    name: str
    config: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Budget:
    flops: float
    models: tuple[ModelSpec, ...]


@dataclass(frozen=True)
class Spec:
    name: str
    path: str
    design: str  # "grid" | "isoflop"
    base: dict
    sizing: Sizing = Sizing()
    description: str = ""
    models: tuple[ModelSpec, ...] = ()  # grid
    tokens: tuple[float, ...] = ()  # grid
    budgets: tuple[Budget, ...] = ()  # isoflop
    min_steps: int = 1
    seeds: tuple[int, ...] | None = None
    arms: tuple[Arm, ...] = ()
    tags: dict = field(default_factory=dict)
    fit: bool = True
    fit_loss: str = "val_loss"


def _err(where: str, msg: str) -> UsageError:
    return UsageError(f"sweep spec {where}: {msg}")


def parse_number(value: Any, where: str, *, positive: bool = True) -> float:
    """A number from YAML: 1e6, 2000000, "1e6", "100K", "1.5M", "2B", "3T"."""
    if isinstance(value, bool):
        raise _err(where, f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        x = float(value)
    elif isinstance(value, str):
        s = value.strip().replace("_", "").replace(",", "")
        mult = 1.0
        if s and s[-1].lower() in _SUFFIX:
            mult, s = _SUFFIX[s[-1].lower()], s[:-1]
        try:
            x = float(s) * mult
        except ValueError:
            raise _err(where, f"expected a number, got {value!r}") from None
    else:
        raise _err(where, f"expected a number, got {value!r}")
    if not math.isfinite(x) or (positive and x <= 0):
        raise _err(where, f"expected a positive number, got {value!r}")
    return x


def _positive_int(value: Any, where: str) -> int:
    x = parse_number(value, where)
    if x != int(x):
        raise _err(where, f"expected a whole number, got {value!r}")
    return int(x)


def _mapping(value: Any, where: str, allowed: set[str] | None = None) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _err(where, f"expected a mapping, got {type(value).__name__}")
    if allowed is not None:
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise _err(where, f"unknown key {unknown[0]!r} (expected one of {sorted(allowed)})")
    return value


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list) or not value:
        raise _err(where, "expected a non-empty list")
    return value


def _parse_model(value: Any, where: str) -> ModelSpec:
    if isinstance(value, dict):
        m = _mapping(value, where, {"n_layer", "d_model", "n_head", "params"})
        if "params" in m:
            if set(m) != {"params"}:
                raise _err(where, "give either params (a target count) or n_layer and d_model, not both")
            return ModelSpec(target=parse_number(m["params"], f"{where}.params"))
        if "n_layer" not in m or "d_model" not in m:
            raise _err(where, "a shape needs n_layer and d_model (n_head is optional)")
        return ModelSpec(n_layer=_positive_int(m["n_layer"], f"{where}.n_layer"),
                         d_model=_positive_int(m["d_model"], f"{where}.d_model"),
                         n_head=_positive_int(m["n_head"], f"{where}.n_head") if m.get("n_head") is not None else None)
    return ModelSpec(target=parse_number(value, where))


def _parse_models(value: Any, where: str) -> tuple[ModelSpec, ...]:
    return tuple(_parse_model(v, f"{where}[{i}]") for i, v in enumerate(_list(value, where)))


def _parse_tags(value: Any, where: str) -> dict:
    tags = _mapping(value, where)
    for k, v in tags.items():
        if not isinstance(k, str) or not _NAME_RE.match(k):
            raise _err(where, f"tag name {k!r} must be a plain word")
        if k in RESULT_COLUMNS or k == "arm":
            raise _err(where, f"tag {k!r} would shadow a results column")
        if isinstance(v, (dict, list)):
            raise _err(f"{where}.{k}", "a tag value must be a scalar")
    return dict(tags)


def load_spec(path: str | Path) -> Spec:
    """Parse and check a sweep spec; UsageError naming the problem."""
    p = Path(path)
    d = config_lib.load_yaml(p)
    where = str(p)
    _mapping(d, where, SPEC_KEYS)
    name = str(d.get("name") or p.stem)
    if not _NAME_RE.match(name):
        raise _err(where, f"name {name!r} must be a plain word (letters, digits, - _ . +)")
    base = d.get("base") or {}
    if isinstance(base, str):
        base_path = (p.parent / base) if not Path(base).is_absolute() else Path(base)
        base = config_lib.load_yaml(base_path)
    base = _mapping(base, f"{where}: base")
    sz = _mapping(d.get("sizing"), f"{where}: sizing", {"aspect", "head_dim", "count", "max_layers"})
    sizing = Sizing(
        aspect=parse_number(sz.get("aspect", Sizing.aspect), f"{where}: sizing.aspect"),
        head_dim=_positive_int(sz.get("head_dim", Sizing.head_dim), f"{where}: sizing.head_dim"),
        count=str(sz.get("count", Sizing.count)),
        max_layers=_positive_int(sz.get("max_layers", Sizing.max_layers), f"{where}: sizing.max_layers"),
    )
    if sizing.count not in ("total", "nonembed"):
        raise _err(where, f"sizing.count must be total or nonembed, got {sizing.count!r}")
    designs = [k for k in ("grid", "isoflop") if k in d]
    if len(designs) != 1:
        raise _err(where, "give exactly one design: grid (models x tokens) or isoflop (budgets x models)")
    design = designs[0]
    kw: dict[str, Any] = {}
    if design == "grid":
        g = _mapping(d["grid"], f"{where}: grid", {"models", "tokens"})
        if "models" not in g or "tokens" not in g:
            raise _err(where, "grid needs models and tokens")
        kw["models"] = _parse_models(g["models"], f"{where}: grid.models")
        kw["tokens"] = tuple(parse_number(t, f"{where}: grid.tokens[{i}]")
                             for i, t in enumerate(_list(g["tokens"], f"{where}: grid.tokens")))
    else:
        g = _mapping(d["isoflop"], f"{where}: isoflop", {"budgets", "models", "min_steps"})
        if "budgets" not in g:
            raise _err(where, "isoflop needs budgets")
        shared = _parse_models(g["models"], f"{where}: isoflop.models") if "models" in g else None
        budgets = []
        for i, b in enumerate(_list(g["budgets"], f"{where}: isoflop.budgets")):
            bw = f"{where}: isoflop.budgets[{i}]"
            if isinstance(b, dict):
                bm = _mapping(b, bw, {"flops", "models"})
                if "flops" not in bm:
                    raise _err(bw, "needs flops")
                models = _parse_models(bm["models"], f"{bw}.models") if "models" in bm else shared
                flops = parse_number(bm["flops"], f"{bw}.flops")
            else:
                flops, models = parse_number(b, bw), shared
            if models is None:
                raise _err(bw, "has no models (give isoflop.models or models for this budget)")
            budgets.append(Budget(flops, models))
        if len({b.flops for b in budgets}) != len(budgets):
            raise _err(where, "isoflop.budgets has a repeated budget")
        kw["budgets"] = tuple(budgets)
        kw["min_steps"] = _positive_int(g.get("min_steps", 1), f"{where}: isoflop.min_steps")
    if d.get("seeds") is not None:
        seeds = _list(d["seeds"], f"{where}: seeds")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
            raise _err(where, f"seeds must be non-negative integers, got {seeds}")
        if len(set(seeds)) != len(seeds):
            raise _err(where, "seeds has a repeated seed")
        kw["seeds"] = tuple(seeds)
    arms = []
    if d.get("arms") is not None:
        for i, a in enumerate(_list(d["arms"], f"{where}: arms")):
            aw = f"{where}: arms[{i}]"
            if isinstance(a, str):
                a = {"name": a}
            am = _mapping(a, aw, {"name", "config", "tags"})
            aname = str(am.get("name", ""))
            if not _NAME_RE.match(aname):
                raise _err(aw, f"name {aname!r} must be a plain word (letters, digits, _ . +)")
            if "-" in aname:
                raise _err(aw, f"name {aname!r} must not contain '-'")
            cfg = _mapping(am.get("config"), f"{aw}.config")
            arms.append(Arm(aname, cfg, _parse_tags(am.get("tags"), f"{aw}.tags")))
        if len({a.name for a in arms}) != len(arms):
            raise _err(where, "arms has a repeated name")
    fit, fit_loss = d.get("fit", True), "val_loss"
    if isinstance(fit, dict):
        fm = _mapping(fit, f"{where}: fit", {"enabled", "loss"})
        fit_loss = str(fm.get("loss", "val_loss"))
        fit = fm.get("enabled", True)
    if not isinstance(fit, bool):
        raise _err(where, f"fit must be true, false or a mapping, got {fit!r}")
    if fit_loss not in ("val_loss", "final_train_loss", "val_bpb"):
        raise _err(where, f"fit.loss must be val_loss, final_train_loss or val_bpb, got {fit_loss!r}")
    return Spec(name=name, path=str(p), design=design, base=base, sizing=sizing,
                description=str(d.get("description") or "").strip(), arms=tuple(arms),
                tags=_parse_tags(d.get("tags"), f"{where}: tags"), fit=fit, fit_loss=fit_loss, **kw)


# ----------------------------------------------------------------------------- sizing


def count(model: ModelConfig, which: str = "total") -> int:
    c = flops_lib.param_counts(model)
    return c["n_params"] if which == "total" else c["n_params_nonembed"]


def shape_for(target: float, sizing: Sizing, model: ModelConfig) -> tuple[int, int, int]:
    """(n_layer, d_model, n_head) of the sizing rule for a target parameter count.

    ``model`` supplies everything else that counts (vocabulary, context, MLP, biases)."""
    best: tuple[float, int, int] | None = None
    for n_layer in range(1, sizing.max_layers + 1):
        d_model = sizing.head_dim * max(1, round(sizing.aspect * n_layer / sizing.head_dim))
        m = dataclasses.replace(model, n_layer=n_layer, d_model=d_model, n_head=d_model // sizing.head_dim)
        err = abs(math.log(count(m, sizing.count) / target))
        if best is None or err < best[0]:
            best = (err, n_layer, d_model)
    _, n_layer, d_model = best  # type: ignore[misc]
    return n_layer, d_model, d_model // sizing.head_dim


# ----------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PlannedRun:
    """One run of the sweep, fully resolved (its Config is the one Run trains)."""

    index: int
    run_id: str
    cfg: Config
    seed: int
    arm: str | None
    budget: float | None
    target: float | None
    tags: dict
    n_params: int
    n_params_nonembed: int
    steps: int
    flops: dict  # 6nd, kaplan, chinchilla: totals over the run

    @property
    def tokens(self) -> int:
        return self.cfg.train.tokens

    @property
    def shape(self) -> str:
        m = self.cfg.model
        return f"L{m.n_layer}-d{m.d_model}-h{m.n_head}"

    @property
    def flops_per_step(self) -> float:
        return self.flops["6nd"] / self.steps

    def to_json(self) -> dict:
        m = self.cfg.model
        return {"index": self.index, "run_id": self.run_id, "n_layer": m.n_layer, "d_model": m.d_model,
                "n_head": m.n_head, "seq_len": m.seq_len, "batch_size": self.cfg.train.batch_size,
                "n_params": self.n_params, "n_params_nonembed": self.n_params_nonembed, "tokens": self.tokens,
                "steps": self.steps, "flops_6nd": self.flops["6nd"], "flops_kaplan": self.flops["kaplan"],
                "flops_chinchilla": self.flops["chinchilla"], "budget": self.budget, "seed": self.seed,
                "arm": self.arm, "target_n": self.target, "tags": self.tags,
                "config_hash": self.cfg.identity_hash()}


@dataclass(frozen=True)
class Plan:
    spec: Spec
    runs: tuple[PlannedRun, ...]
    base: Config  # base config after overrides (before arms and the design)
    dropped: tuple[str, ...] = ()  # notes on design points left out
    approaches: tuple[str, ...] = ()  # the fits the plan supports

    def shard(self, index: int, count_: int) -> tuple[PlannedRun, ...]:
        return tuple(r for r in self.runs if r.index % count_ == index)

    @property
    def has_arms(self) -> bool:
        return bool(self.spec.arms)


def parse_shard(text: str | None) -> tuple[int, int]:
    """"I/N" (0 <= I < N) -> (I, N); None -> (0, 1)."""
    if text is None:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise UsageError(f"--shard expects I/N (e.g. 0/4), got {text!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard {text}: need 0 <= I < N")
    return i, n


def format_tokens(tokens: float) -> str:
    mant, exp = f"{tokens:.1e}".split("e")
    return f"{mant}e{int(exp)}"


def _check_overrides(spec: Spec, overrides: dict) -> None:
    fixed = list(DESIGN_FIELDS) + (["train.seed"] if spec.seeds is not None else [])
    for key in fixed:
        sec, name = key.split(".")
        if name in (overrides.get(sec) or {}):
            raise UsageError(f"--{key} is set by the sweep design of {spec.path}; edit the spec instead")
    for i, arm in enumerate(spec.arms):
        for key in fixed:
            sec, name = key.split(".")
            if name in (arm.config.get(sec) or {}):
                raise UsageError(f"sweep spec {spec.path}: arms[{i}] ({arm.name}) sets {key}, which the design sets")


def make_plan(spec: Spec, overrides: dict | None = None, *, load_data: bool = True) -> Plan:
    """Resolve every run of the sweep and validate it (configs, budgets, corpus, mesh, batch).

    Nothing is trained or written. ``load_data`` checks the corpus (tokenizing it into the
    token cache the first time) and takes the vocabulary from the tokenizer; without it the
    vocabulary must be given (``model.vocab_size``) or is taken from the tokenizer name."""
    overrides = overrides or {}
    _check_overrides(spec, overrides)
    base_dict = config_lib.merge(spec.base, overrides)
    base = config_lib.from_dict(base_dict)
    arms: tuple[Arm | None, ...] = spec.arms or (None,)
    seeds = spec.seeds if spec.seeds is not None else (base.train.seed,)
    vocab_of: dict = {}
    arm_info = []
    for arm in arms:
        d = config_lib.merge(base_dict, arm.config) if arm else base_dict
        try:
            cfg = config_lib.from_dict(d)
        except UsageError as e:
            raise UsageError(f"arm {arm.name}: {e}" if arm else str(e)) from None
        if cfg.data not in vocab_of:
            vocab_of[cfg.data] = _vocab(cfg, load_data)
        n_vocab = vocab_of[cfg.data]
        if cfg.model.vocab_size and cfg.model.vocab_size < n_vocab:
            raise UsageError(f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the tokenizer's "
                             f"{n_vocab} ids")
        vocab = cfg.model.vocab_size or n_vocab
        d = config_lib.merge(d, {"model": {"vocab_size": vocab}})
        arm_info.append((arm, d, config_lib.from_dict(d)))

    points: list[tuple] = []  # (budget, tokens request, model spec) in design order
    if spec.design == "grid":
        for t in sorted(spec.tokens):
            for m in spec.models:
                points.append((None, t, m))
    else:
        for b in sorted(spec.budgets, key=lambda b: b.flops):
            for m in b.models:
                points.append((b.flops, None, m))

    runs: list[dict] = []
    dropped: list[str] = []
    for budget, tokens_req, mspec in points:
        per_arm = []
        for arm, d, cfg in arm_info:
            shape = _shape(mspec, spec.sizing, cfg.model)
            model = _model(cfg.model, shape, mspec)
            counts = flops_lib.param_counts(model)
            per_step = cfg.train.batch_size * cfg.model.seq_len
            if budget is None:
                steps = max(1, round(tokens_req / per_step))
                if tokens_req < per_step / 2:
                    raise UsageError(f"grid tokens {tokens_req:g} is less than one batch "
                                     f"(train.batch_size * model.seq_len = {per_step})")
            else:
                steps = round(budget / (6 * counts["n_params"] * per_step))
                if steps < spec.min_steps:
                    dropped.append(f"budget {budget:.3g} x {mspec.describe()} (N={counts['n_params']:,}): "
                                   f"{steps} steps < isoflop.min_steps {spec.min_steps}")
                    per_arm = None
                    break
            per_arm.append((arm, d, model, counts, steps))
        if per_arm is None:
            continue
        for seed in seeds:
            for arm, d, model, counts, steps in per_arm:
                runs.append(dict(arm=arm, d=d, model=model, counts=counts, steps=steps, seed=seed,
                                 budget=budget, target=mspec.target, mspec=mspec))
    if not runs:
        raise UsageError(f"sweep spec {spec.path} plans no runs" + (f" ({dropped[0]}; ...)" if dropped else ""))

    planned: list[PlannedRun] = []
    seen: dict[str, str] = {}
    for r in runs:
        model, seed, arm = r["model"], r["seed"], r["arm"]
        d = config_lib.merge(r["d"], {"model": {"n_layer": model.n_layer, "d_model": model.d_model,
                                                "n_head": model.n_head}})
        cfg0 = config_lib.from_dict(d)
        tokens = r["steps"] * cfg0.train.batch_size * cfg0.model.seq_len
        cfg = config_lib.from_dict(config_lib.merge(d, {"train": {"tokens": tokens, "seed": seed}}))
        run_id = f"L{model.n_layer}-d{model.d_model}-D{format_tokens(tokens)}-s{seed}"
        if model.n_head * spec.sizing.head_dim != model.d_model:
            run_id = run_id.replace("-D", f"-h{model.n_head}-D", 1)
        if arm is not None:
            run_id += f"-{arm.name}"
        what = f"{r['mspec'].describe()}" + (f" at budget {r['budget']:.3g}" if r["budget"] else "")
        if run_id in seen:
            raise UsageError(f"sweep spec {spec.path}: {what} and {seen[run_id]} give the same run {run_id} "
                             f"(the same shape, and tokens equal to 2 significant digits); remove or change one")
        seen[run_id] = what
        fpt = flops_lib.all_flops_per_token(cfg.model)
        tags = dict(spec.tags)
        if arm is not None:
            tags.update(arm.tags)
        planned.append(PlannedRun(
            index=len(planned), run_id=run_id, cfg=cfg, seed=seed, arm=None if arm is None else arm.name,
            budget=r["budget"], target=r["target"], tags=tags, n_params=r["counts"]["n_params"],
            n_params_nonembed=r["counts"]["n_params_nonembed"], steps=r["steps"],
            flops={k: v * tokens for k, v in fpt.items()}))
    _validate_runs(planned, load_data)
    approaches = fit_support(spec, planned)
    if spec.fit and not approaches:
        raise UsageError(f"sweep spec {spec.path} plans too few runs to fit a scaling law (approach 3 needs "
                         f"{_MIN_APPROACH3} runs over 2+ sizes and 2+ token counts, approach 2 two budgets of 3+ "
                         f"sizes, approach 1 two sizes{' per arm' if spec.arms else ''}); add runs or set fit: false")
    return Plan(spec=spec, runs=tuple(planned), base=base, dropped=tuple(dropped), approaches=approaches)


_MIN_APPROACH3 = 6  # more runs than the law's 5 parameters


def fit_support(spec: Spec, runs: tuple[PlannedRun, ...] | list[PlannedRun]) -> tuple[str, ...]:
    """The approaches a set of runs supports, in every arm: '3', '2', '1'."""
    groups: dict = {}
    for r in runs:
        groups.setdefault(r.arm, []).append(r)
    ok = {"1", "2", "3"}
    for rs in groups.values():
        ns = {r.n_params for r in rs}
        if not (len(rs) >= _MIN_APPROACH3 and len(ns) >= 2 and len({r.tokens for r in rs}) >= 2):
            ok.discard("3")
        by_budget: dict = {}
        for r in rs:
            if r.budget is not None:
                by_budget.setdefault(r.budget, set()).add(r.n_params)
        if sum(len(v) >= 3 for v in by_budget.values()) < 2:
            ok.discard("2")
        if len(ns) < 2:
            ok.discard("1")
    return tuple(a for a in ("3", "2", "1") if a in ok)


def _vocab(cfg: Config, load_data: bool) -> int:
    if load_data:
        from scaling.data import load_tokens
        return load_tokens(cfg.data).n_vocab
    from scaling import tokenizer as tok
    tok.check_name(cfg.data.tokenizer)
    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    if cfg.data.tokenizer == "byte":
        return 257
    if cfg.data.tokenizer == "gpt2":
        return 50257
    return tok.parse_bpe_vocab(cfg.data.tokenizer)


def _shape(mspec: ModelSpec, sizing: Sizing, model: ModelConfig) -> tuple[int, int, int]:
    if mspec.target is not None:
        return shape_for(mspec.target, sizing, model)
    n_head = mspec.n_head
    if n_head is None:
        if mspec.d_model % sizing.head_dim:  # type: ignore[operator]
            raise UsageError(f"model {mspec.describe()}: d_model is not a multiple of sizing.head_dim "
                             f"({sizing.head_dim}); give n_head")
        n_head = mspec.d_model // sizing.head_dim  # type: ignore[operator]
    return mspec.n_layer, mspec.d_model, n_head  # type: ignore[return-value]


def _model(model: ModelConfig, shape: tuple[int, int, int], mspec: ModelSpec) -> ModelConfig:
    n_layer, d_model, n_head = shape
    try:
        return dataclasses.replace(model, n_layer=n_layer, d_model=d_model, n_head=n_head)
    except UsageError as e:
        raise UsageError(f"model {mspec.describe()}: {e}") from None


def _validate_runs(runs: list[PlannedRun], load_data: bool) -> None:
    """Everything Run checks before compute, for every run: steps, mesh and batch, data windows."""
    from scaling.train import steps_for

    for r in runs:
        if steps_for(r.cfg) != r.steps:
            raise AssertionError(f"{r.run_id}: planned {r.steps} steps, steps_for gives {steps_for(r.cfg)}")
    import jax
    from scaling import sharding as sh

    n_dev = jax.device_count()
    for r in runs:
        try:
            shape = sh.mesh_shape(r.cfg.mesh, n_dev)
            sh.check_mesh_fits(shape, r.cfg.model, r.cfg.train.batch_size, r.cfg.train.microbatches)
        except UsageError as e:
            raise UsageError(f"run {r.run_id}: {e}") from None
    if load_data:
        from scaling.data import Batches, load_tokens

        checked = set()
        for r in runs:
            key = (r.cfg.data, r.cfg.model.seq_len)
            if key in checked:
                continue
            checked.add(key)
            Batches(load_tokens(r.cfg.data), r.cfg.model.seq_len, r.cfg.train.batch_size, r.seed)


def check_outputs(plan: Plan, out: Path) -> None:
    """Refuse (UsageError, nothing written) an --out that is a file or holds any of the plan's
    runs trained with a different config (model, data, optimizer or budget)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if plan.base.resume.allow_config_change:
        return
    for r in plan.runs:
        stored = out / "runs" / r.run_id / "config.yaml"
        if not stored.is_file():
            continue
        try:
            old = config_lib.from_dict(config_lib.load_yaml(stored))
        except UsageError as e:
            raise UsageError(f"{stored} is not a readable run config ({e}); use a new --out") from None
        if old.identity_hash() != r.cfg.identity_hash():
            diff = _first_difference(old, r.cfg)
            raise UsageError(f"{out / 'runs' / r.run_id} was trained with a different config ({diff}); "
                             f"use a new --out, or --resume.allow_config_change true")


def _first_difference(a: Config, b: Config) -> str:
    da, db = a.to_dict(), b.to_dict()
    for sec in config_lib.RESUME_IDENTITY_SECTIONS:
        for k in da[sec]:
            if f"{sec}.{k}" in config_lib.RESUME_SAFE_FIELDS:
                continue
            if da[sec][k] != db[sec].get(k):
                return f"{sec}.{k}: {da[sec][k]!r} there, {db[sec].get(k)!r} now"
    return "identity hash differs"


# ----------------------------------------------------------------------------- printing


def _si(x: float) -> str:
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suf}"
    return f"{x:.3g}"


def format_duration(s: float) -> str:
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def format_plan(plan: Plan, runs: tuple[PlannedRun, ...] | None = None, estimates: dict | None = None,
                shard: tuple[int, int] = (0, 1)) -> str:
    """The plan as a table (one line per run) with totals; ``estimates`` maps run_id to seconds."""
    spec = plan.spec
    runs = plan.runs if runs is None else runs
    n_seeds = len(spec.seeds) if spec.seeds is not None else 1
    if spec.design == "grid":
        design = f"grid of {len(spec.models)} models x {len(spec.tokens)} token budgets"
    else:
        sizes = sorted({len(b.models) for b in spec.budgets})
        n_models = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
        design = f"IsoFLOP design of {len(spec.budgets)} budgets x {n_models} models"
    lines = [f"sweep {spec.name} ({spec.path}): {design} x {n_seeds} seed(s)"
             + (f" x {len(spec.arms)} arms" if spec.arms else "") + f" = {len(plan.runs)} runs"]
    if spec.description:
        lines.append(f"  {spec.description}")
    b = plan.base
    lines.append(f"  corpus {b.data.corpus}, tokenizer {b.data.tokenizer}, seq_len {b.model.seq_len}, "
                 f"batch {b.train.batch_size} (tokens are whole batches of {b.train.batch_size * b.model.seq_len})")
    lines.append(f"  sizing rule: {spec.sizing.describe()}; N = n_params (all parameters), C = 6 N D")
    if shard != (0, 1):
        lines.append(f"  shard {shard[0]}/{shard[1]}: runs {shard[0]}, {shard[0] + shard[1]}, ... "
                     f"({len(runs)} of {len(plan.runs)})")
    for note in plan.dropped:
        lines.append(f"  left out: {note}")
    head = (f"{'#':>3} {'run_id':<26} {'L':>3} {'d':>5} {'h':>3} {'N':>10} {'N_nonemb':>10} {'target':>7} "
            f"{'D':>11} {'steps':>6} {'C=6ND':>9} {'budget':>8}")
    if spec.arms:
        head += f" {'arm':>10}"
    if estimates is not None:
        head += f" {'est.wall':>9}"
    lines.append(head)
    for r in runs:
        m = r.cfg.model
        line = (f"{r.index:>3} {r.run_id:<26} {m.n_layer:>3} {m.d_model:>5} {m.n_head:>3} {r.n_params:>10,} "
                f"{r.n_params_nonembed:>10,} {_si(r.target) if r.target else '-':>7} {r.tokens:>11,} {r.steps:>6} "
                f"{r.flops['6nd']:>9.3g} {format(r.budget, '.3g') if r.budget else '-':>8}")
        if spec.arms:
            line += f" {r.arm:>10}"
        if estimates is not None:
            line += f" {format_duration(estimates[r.run_id]):>9}"
        lines.append(line)
    total = sum(r.flops["6nd"] for r in runs)
    tail = f"total: {len(runs)} runs, {sum(r.tokens for r in runs):,} tokens, C = {total:.3g} FLOPs (6ND)"
    if estimates is not None:
        tail += f", est. wall {format_duration(sum(estimates[r.run_id] for r in runs))}"
    lines.append(tail)
    fits = {"3": "3 (parametric)", "2": "2 (IsoFLOP)", "1": "1 (training curves)"}
    if spec.fit:
        lines.append("fit at the end: approaches " + ", ".join(fits[a] for a in plan.approaches))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- calibration


def shape_key(r: PlannedRun) -> tuple:
    """Runs with equal keys share compiled functions when one process trains them (the mesh
    aside, ``train.Trainer.program_key``)."""
    from scaling.train import shape_fields
    return (*shape_fields(r.cfg), r.cfg.mesh)


@dataclass(frozen=True)
class Calibration:
    """Timings of a few real steps of some planned shapes, and a per-run wall-time model."""

    points: tuple[dict, ...]  # per calibrated shape: flops_per_step, step_s, eval_s, compile_s, ckpt_s
    fixed_s: float = 0.5  # per run: Run set-up, summary, metrics

    def _interp(self, x: float, key: str, xkey: str = "flops_per_step") -> float:
        pts = sorted(self.points, key=lambda p: p[xkey])
        if len(pts) == 1 or pts[0][xkey] == pts[-1][xkey]:
            p = pts[0]
            return p[key] * (x / p[xkey] if key in ("step_s", "eval_s") else 1.0)
        lo, hi = pts[0], pts[-1]
        lx = math.log(x)
        t = (lx - math.log(lo[xkey])) / (math.log(hi[xkey]) - math.log(lo[xkey]))
        ya, yb = math.log(max(lo[key], 1e-9)), math.log(max(hi[key], 1e-9))
        if key not in ("step_s", "eval_s"):
            t = min(max(t, 0.0), 1.0)  # compile and checkpoint times: no extrapolation
        return math.exp(ya + t * (yb - ya))

    def estimate(self, r: PlannedRun, compiles: bool = True) -> float:
        """Seconds: compile + steps + evaluations + checkpoints + a fixed overhead. ``compiles``
        False: an earlier run of the same shape in the process compiled the step already."""
        c = r.cfg
        f = r.flops_per_step
        n_eval = r.steps // c.train.eval_every + (1 if r.steps % c.train.eval_every else 0)
        every = c.checkpoint.every_steps
        n_ckpt = (r.steps // every + (1 if r.steps % every else 0)) if every else 1
        return (compiles * self._interp(f, "compile_s") + r.steps * self._interp(f, "step_s")
                + n_eval * c.train.eval_batches * self._interp(f, "eval_s")
                + n_ckpt * self._interp(f, "ckpt_s") + self.fixed_s)

    def describe(self) -> str:
        parts = [f"{p['run_id']}: {p['step_s'] * 1e3:.1f} ms/step ({p['flops_per_step'] / p['step_s'] / 1e9:.2f} "
                 f"GFLOP/s), compile {p['compile_s']:.1f}s, eval {p['eval_s'] * 1e3:.1f} ms/batch, "
                 f"checkpoint {p['ckpt_s']:.2f}s" for p in self.points]
        return "calibration on this machine (" + "; ".join(parts) + ")"


def calibrate(runs: tuple[PlannedRun, ...] | list[PlannedRun], *, target_s: float = 1.0,
              max_steps: int = 20) -> Calibration:
    """Time real train steps of the smallest and the largest planned shape (by FLOPs per step)
    in this process: compile, a few steps, an evaluation batch and a checkpoint save (into a
    temporary directory). Random tokens; nothing of the sweep is written."""
    import jax
    import numpy as np

    from scaling import sharding as sh
    from scaling.checkpoint import Checkpointer
    from scaling.train import Trainer

    by_flops = sorted(runs, key=lambda r: r.flops_per_step)
    chosen = [by_flops[0]] + ([by_flops[-1]] if by_flops[-1].shape != by_flops[0].shape else [])
    points = []
    for r in chosen:
        cfg = r.cfg
        mesh = sh.make_mesh(sh.mesh_shape(cfg.mesh, jax.device_count()))
        trainer = Trainer(cfg, mesh, r.steps)
        t0 = time.perf_counter()
        state = trainer.init_state()
        trainer.compile_step()
        compile_s = time.perf_counter() - t0
        lo, hi = sh.process_batch_rows(mesh, cfg.train.batch_size)
        rng = np.random.default_rng(0)
        local = rng.integers(0, cfg.model.vocab_size, (hi - lo, cfg.model.seq_len + 1)).astype(np.int32)
        batch = sh.make_global_batch(mesh, local, cfg.train.batch_size)
        state, m = trainer.train_step(state, batch)
        jax.block_until_ready(m)
        n, t0 = 0, time.perf_counter()
        while n < max_steps and (n < 3 or time.perf_counter() - t0 < target_s):
            state, m = trainer.train_step(state, batch)
            jax.block_until_ready(m)
            n += 1
        step_s = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        jax.block_until_ready(trainer.eval_step(state.params, batch))
        compile_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(3):
            jax.block_until_ready(trainer.eval_step(state.params, batch))
        eval_s = (time.perf_counter() - t0) / 3
        with tempfile.TemporaryDirectory(prefix="sweep-calibration-") as tmp:
            ck = Checkpointer(Path(tmp) / "checkpoints", cfg.checkpoint)
            t0 = time.perf_counter()
            ck.save(1, state, {"calibration": True})
            ck.wait()
            ckpt_s = time.perf_counter() - t0
            ck.close()
        points.append({"run_id": r.run_id, "flops_per_step": r.flops_per_step, "step_s": step_s,
                       "eval_s": eval_s, "compile_s": compile_s, "ckpt_s": ckpt_s, "steps_timed": n})
    return Calibration(points=tuple(points))


# ----------------------------------------------------------------------------- files and locks


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def file_lock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """An advisory exclusive lock (flock) on ``path``; yields whether it was acquired. The
    kernel releases it when the process dies, so a killed worker never leaves it held. Where
    the filesystem cannot lock (no flock), it yields True without locking."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no locking
        yield True
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        except OSError:  # e.g. ENOLCK on a filesystem without locks
            yield True
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def log_event(out: Path, **event) -> None:
    """Append one line to DIR/sweep_log.jsonl (a single O_APPEND write)."""
    event = {"time": round(time.time(), 3), "host": socket.gethostname(), "pid": os.getpid(), **event}
    line = (json.dumps(event) + "\n").encode()
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / "sweep_log.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_log(out: Path) -> list[dict]:
    p = Path(out) / "sweep_log.jsonl"
    if not p.is_file():
        return []
    events = []
    for line in p.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pass  # a torn line from a kill
    return events


# ----------------------------------------------------------------------------- results table


def collect_rows(out: Path) -> list[dict]:
    """One row per run directory with a summary.json (joined with its plan.json), in plan order."""
    rows = []
    for summary_path in sorted((Path(out) / "runs").glob("*/summary.json")):
        summary = _read_json(summary_path)
        if summary is None:
            continue
        run_dir = summary_path.parent
        plan = _read_json(run_dir / "plan.json") or {}
        row = {k: summary.get(k) for k in RESULT_COLUMNS if k in summary}
        row["run_id"] = run_dir.name
        row["budget"] = plan.get("budget")
        row["seed"] = plan.get("seed", summary.get("seed"))
        row["target_n"] = plan.get("target_n")
        if plan.get("arm") is not None:
            row["arm"] = plan["arm"]
        for k, v in (plan.get("tags") or {}).items():
            row[k] = v
        row["_index"] = plan.get("index", 1 << 30)
        rows.append(row)
    rows.sort(key=lambda r: (r["_index"], r["run_id"]))
    return rows


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def results_csv_text(rows: list[dict]) -> str:
    extra = []
    if any("arm" in r for r in rows):
        extra.append("arm")
    for r in rows:
        for k in r:
            if k not in RESULT_COLUMNS and k not in extra and not k.startswith("_"):
                extra.append(k)
    cols = list(RESULT_COLUMNS) + extra
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([_csv_value(r.get(c)) for c in cols])
    return buf.getvalue()


def rebuild_results(out: Path) -> list[dict]:
    """Rewrite DIR/results.csv (temp file + os.replace, under DIR/locks/results.lock) from every
    runs/*/summary.json; returns the rows. Readers never see a partial file; two writers
    never interleave, and the last one reads every summary written before it took the lock."""
    out = Path(out)
    with file_lock(out / "locks" / "results.lock"):
        return _rebuild_unlocked(out)


def _rebuild_unlocked(out: Path) -> list[dict]:
    rows = collect_rows(out)
    atomic_write(out / "results.csv", results_csv_text(rows))
    return rows


# ----------------------------------------------------------------------------- the runner


@dataclass
class SweepResult:
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # finished before (kept)
    busy: list[str] = field(default_factory=list)  # being trained by another process
    pending: list[str] = field(default_factory=list)  # planned runs without a summary at the end
    fit: dict | None = None
    rows: list[dict] = field(default_factory=list)


def _run_state(run_dir: Path) -> str | None:
    s = _read_json(run_dir / "summary.json")
    return None if s is None else s.get("status")


def execute(plan: Plan, out: Path, *, shard: tuple[int, int] = (0, 1), retry_diverged: bool = False,
            progress: bool | None = None, echo=print, trainers: dict | None = None,
            after_run=None) -> SweepResult:
    """Train this shard's runs one after another (resuming), rebuilding results.csv after each;
    when every planned run has finished, fit and plot. ``echo`` prints progress lines. Runs of
    one shape share compiled functions through ``trainers`` (a fresh dict by default; pass
    the same dict to several calls to share across them); later shapes compile on background
    threads while earlier runs train. ``after_run(run)``, if given, is called after each run
    this call trains (benchmarks/sweep_overhead.py times steps there)."""
    import jax
    from tqdm import tqdm

    from scaling.train import Run

    out = Path(out)
    is_main = jax.process_index() == 0
    locking = jax.process_count() == 1
    progress = plan.base.train.progress if progress is None else progress
    mine = plan.shard(*shard)
    res = SweepResult()
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "plan.json", json.dumps({"spec": plan.spec.path, "name": plan.spec.name,
                                                    "runs": [r.to_json() for r in plan.runs]}, indent=1))
        rebuild_results(out)

    def finished(r: PlannedRun) -> bool:
        st = _run_state(out / "runs" / r.run_id)
        return st == "completed" or (st == "diverged" and not retry_diverged)

    done_flops = sum(r.flops["6nd"] for r in mine if finished(r))
    n_done = sum(finished(r) for r in mine)
    bar = tqdm(total=sum(r.flops["6nd"] for r in mine), initial=done_flops, unit="FLOP", unit_scale=True,
               desc=f"sweep {plan.spec.name}", position=0, leave=True, dynamic_ncols=True, file=sys.stderr,
               disable=not (progress and is_main), smoothing=0.0,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} FLOPs "
                          "[{elapsed}<{remaining}{postfix}]")
    bar.set_postfix_str(f"runs {n_done}/{len(mine)}")
    trainers = {} if trainers is None else trainers  # one Trainer per shape, shared by its runs
    # one compile thread per 4 cores (an XLA compile keeps about 1.5 busy): 1 on a laptop
    ahead = concurrent.futures.ThreadPoolExecutor(max(1, (os.cpu_count() or 1) // 4),
                                                  thread_name_prefix="compile-ahead")
    try:
        _compile_ahead([r for r in mine if not finished(r)], trainers, ahead)
        for r in mine:
            run_dir = out / "runs" / r.run_id
            if finished(r):
                res.skipped.append(r.run_id)
                continue
            lock_cm = file_lock(out / "locks" / f"{r.run_id}.lock", blocking=False) if locking \
                else contextlib.nullcontext(True)
            with lock_cm as got:
                if not got:
                    res.busy.append(r.run_id)
                    bar.write(f"[{r.index}] {r.run_id}: being trained by another process; skipped")
                    continue
                if finished(r):  # finished by another process meanwhile
                    res.skipped.append(r.run_id)
                    continue
                _train_one(plan, r, run_dir, out, is_main, bar, Run, trainers)
                res.trained.append(r.run_id)
            if after_run is not None:
                after_run(r)
            n_done += 1
            bar.update(r.flops["6nd"])
            bar.set_postfix_str(f"runs {n_done}/{len(mine)}")
            if is_main:
                rebuild_results(out)
    finally:
        ahead.shutdown(wait=False, cancel_futures=True)
        bar.close()
    if is_main:
        res.rows = rebuild_results(out)
        res.pending = [r.run_id for r in plan.runs if _run_state(out / "runs" / r.run_id) is None]
        if plan.spec.fit and not res.pending:
            res.fit = finalize(plan, out, echo=echo)
    return res


def _compile_ahead(runs: list[PlannedRun], trainers: dict, pool) -> None:
    """Queue the compilation of every shape ``runs`` train on ``pool``, in the order the runs
    need them, so that later shapes compile while earlier runs train (a Trainer per shape goes
    into ``trainers``, where the runs find it)."""
    import jax

    from scaling import sharding as sh
    from scaling.train import Trainer

    def build(key, cfg, mesh, steps):
        trainer = trainers.get(key)
        if trainer is None:
            trainer = trainers.setdefault(key, Trainer(cfg, mesh, steps))
        trainer.compile_all()

    queued = set()
    for r in runs:
        mesh = sh.make_mesh(sh.mesh_shape(r.cfg.mesh, jax.device_count()))
        key = Trainer.program_key(r.cfg, mesh)
        if key not in queued:
            queued.add(key)
            pool.submit(build, key, r.cfg, mesh, r.steps)


def _train_one(plan: Plan, r: PlannedRun, run_dir: Path, out: Path, is_main: bool, bar, Run,
               trainers: dict | None = None) -> dict:
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "plan.json", json.dumps({**r.to_json(), "sweep": plan.spec.name}, indent=1))
        old = run_dir / "summary.json"
        if old.is_file():  # a diverged run being retried: keep its summary aside
            os.replace(old, run_dir / "summary.diverged.json")
    run = Run(r.cfg, run_dir, trainers=trainers)
    ckpts = run.ckpt.steps()
    start = ckpts[-1] if ckpts else 0
    if is_main:
        log_event(out, event="start", run_id=r.run_id, start_step=start, steps=r.steps)
        what = "resuming at step %d" % start if start else "starting"
        bar.write(f"[{r.index}] {r.run_id}: {what} (N={r.n_params:,}, D={r.tokens:,}, C={r.flops['6nd']:.3g}, "
                  f"{r.steps} steps)")
    summary = run.run()
    if is_main:
        log_event(out, event="end", run_id=r.run_id, status=summary["status"], steps_done=summary.get("steps_done"))
        vl = summary.get("val_loss")
        bar.write(f"[{r.index}] {r.run_id}: {summary['status']}, val_loss "
                  f"{'-' if vl is None else format(vl, '.4f')}, {format_duration(summary['wall_s'])}")
    return summary


# ----------------------------------------------------------------------------- fit and plots


def _results_digest(out: Path) -> str:
    return hashlib.sha256((out / "results.csv").read_bytes()).hexdigest()[:16]


def finalize(plan: Plan, out: Path, *, echo=print, force: bool = False) -> dict:
    """Rebuild results.csv, then fit.json and plots/ from it, all under the results lock (so a
    concurrent shard cannot change the table in between); the fit is skipped when fit.json
    already describes the same results.csv. Returns the fit dict."""
    out = Path(out)
    with file_lock(out / "locks" / "results.lock"):
        _rebuild_unlocked(out)
        digest = _results_digest(out)
        old = _read_json(out / "fit.json")
        if not force and old and old.get("sweep", {}).get("results_sha256") == digest:
            return old
        result = fit_sweep(plan, out)
        result["sweep"] = {"name": plan.spec.name, "spec": plan.spec.path, "results": str(out / "results.csv"),
                           "results_sha256": digest, "n_planned": len(plan.runs)}
        try:
            paths = write_plots(plan, out, result)
            result["sweep"]["plots"] = [str(p.relative_to(out)) for p in paths]
        except Exception as e:  # a plot failing must not lose the fit
            result["sweep"]["plots_error"] = f"{type(e).__name__}: {e}"
        atomic_write(out / "fit.json", json.dumps(result, indent=2) + "\n")
    echo(fit_report(result))
    return result


def _fit_group(runs, curves, isoflop: bool) -> dict:
    """Every approach the data supports on one group of runs; the others get a not_run note."""
    from analysis import fit as fit_lib
    from scaling import laws

    out: dict = {}
    n_distinct_d = len(set(runs.D.tolist()))
    if len(runs) >= _MIN_APPROACH3 and len(set(runs.N.tolist())) >= 2 and n_distinct_d >= 2:
        try:
            out.update(fit_lib.fit_runs(runs, fit_lib.FitOptions(approaches=frozenset({"3"}), progress=False)))
        except UsageError as e:
            out["approach3"] = {"not_run": str(e)}
    else:
        out["approach3"] = {"not_run": f"{len(runs)} completed runs; approach 3 needs at least {_MIN_APPROACH3} "
                                       f"(more than the law's {laws.N_PARAMS} parameters) over 2+ sizes and 2+ "
                                       f"token counts"}
    if isoflop:
        try:
            out["approach2"] = laws.fit_approach2(runs.N, runs.L, runs.C, budgets=runs.budget)
        except UsageError as e:
            out["approach2"] = {"not_run": str(e)}
    try:
        out["approach1"] = laws.fit_approach1(curves)
    except UsageError as e:
        out["approach1"] = {"not_run": str(e)}
    return out


def fit_sweep(plan: Plan, out: Path) -> dict:
    """Fit the completed runs of results.csv (per arm when the sweep has arms); never raises
    for too few points: the reason goes into the JSON (``error`` when no approach ran)."""
    from analysis import fit as fit_lib

    out = Path(out)
    isoflop = plan.spec.design == "isoflop"
    loss_col = plan.spec.fit_loss
    try:
        runs = fit_lib.load_runs(out / "results.csv", n_col="n_params", d_col="tokens", loss_col=loss_col,
                                 budget_col="budget" if isoflop else None,
                                 group_col="arm" if plan.has_arms else None)
    except UsageError as e:
        return {"error": f"no fit: {e}"}
    rows = {r["run_id"]: r for r in collect_rows(out)}
    ids = [rid for rid, r in rows.items() if r.get("status") == "completed"]
    curves_by_id = {rid: c for rid in ids if (c := _curve(out / "runs" / rid, rows[rid])) is not None}
    inp = {"results": str(out / "results.csv"), "n_col": "n_params", "d_col": "tokens", "loss_col": loss_col,
           "n_runs": len(runs), "curves": "runs/*/metrics.jsonl (training loss against 6ND FLOPs)"}
    if plan.has_arms:
        result: dict = {"group_col": "arm", "groups": {}, "input": inp}
        for arm in sorted(set(runs.group.tolist())):
            part = runs.subset(runs.group == arm)
            curves = [c for rid, c in curves_by_id.items() if rows[rid].get("arm") == arm]
            result["groups"][arm] = _fit_group(part, curves, isoflop)
        ran = [g for g in result["groups"].values() if _ran(g)]
    else:
        result = _fit_group(runs, list(curves_by_id.values()), isoflop)
        result["input"] = inp
        ran = [result] if _ran(result) else []
    if not ran:
        result["error"] = "too few completed runs to fit any scaling law (see the not_run notes)"
    return result


def _ran(r: dict) -> bool:
    return "E" in r or "minima" in (r.get("approach2") or {}) or "envelope" in (r.get("approach1") or {})


def _curve(run_dir: Path, row: dict):
    """(N, flops, loss) of a run's training curve from metrics.jsonl, or None."""
    import numpy as np

    p = run_dir / "metrics.jsonl"
    if not p.is_file():
        return None
    fl, lo = [], []
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("loss") is not None and rec.get("flops") and math.isfinite(rec["loss"]):
            fl.append(float(rec["flops"]))
            lo.append(float(rec["loss"]))
    if len(fl) < 2:
        return None
    return float(row["n_params"]), np.array(fl), np.array(lo)


def write_plots(plan: Plan, out: Path, result: dict) -> list[Path]:
    """plots/: training curves, loss against N per D, IsoFLOP curves, and the fit's plots."""
    from analysis import fit as fit_lib
    from analysis import plots as fit_plots
    from analysis import sweep_plots

    out = Path(out)
    plots_dir = out / "plots"
    isoflop = plan.spec.design == "isoflop"
    paths: list[Path] = []
    fits = result.get("groups") or ({None: result} if "error" not in result else {})
    if fits:
        runs = fit_lib.load_runs(out / "results.csv", n_col="n_params", d_col="tokens", loss_col=plan.spec.fit_loss,
                                 budget_col="budget" if isoflop else None,
                                 group_col="arm" if plan.has_arms else None)
        for arm, r in fits.items():
            part = runs if arm is None else runs.subset(runs.group == arm)
            paths += fit_plots.make_all(plots_dir if arm is None else plots_dir / arm, part, _for_plots(r))
    rows = collect_rows(out)
    for arm in sorted({r.get("arm") for r in rows}, key=str):
        sub = [r for r in rows if r.get("arm") == arm]
        fit = fits.get(arm, {}) if fits else {}
        paths += sweep_plots.write_sweep_plots(plots_dir if arm is None else plots_dir / arm, out / "runs", sub,
                                               fit, loss_col=plan.spec.fit_loss, isoflop=isoflop)
    return paths


def _for_plots(r: dict) -> dict:
    """The fit dict without the not_run notes (analysis.plots expects fitted approaches only)."""
    return {k: v for k, v in r.items() if not (isinstance(v, dict) and "not_run" in v)}


def fit_report(result: dict) -> str:
    from analysis import fit as fit_lib

    if "error" in result:
        text = f"fit: {result['error']}"
    elif "groups" in result:
        text = "\n".join(fit_lib.report(_report_view(r), title=f"arm = {a}") for a, r in result["groups"].items())
    else:
        text = fit_lib.report(_report_view(result), title="fit")
    notes = []
    for title, r in (result.get("groups") or {"": result}).items():
        for k in ("approach3", "approach2", "approach1"):
            v = r.get(k)
            if isinstance(v, dict) and "not_run" in v and k == "approach3":
                notes.append(f"{title + ': ' if title else ''}approach 3 not run: {v['not_run']}")
    return "\n".join([text] + notes)


def _report_view(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "approach3"}
