"""A sweep's plan: the sizing rule, and every run resolved to its Config (with the noise seeds and
the cooldown families of a wsd sweep, :mod:`scaling.sweep.families`); :mod:`scaling.sweep.show`
prints it."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import numpy as np

from scaling import config_parse, tokenizer
from scaling import flops as flops_lib
from scaling.config import Config, ModelConfig
from scaling.data import Batches, load_tokens
from scaling.errors import UsageError
from scaling.laws.support import SWEEP
from scaling.sweep import hparams
from scaling.sweep.families import assign_families
from scaling.sweep.hparams import LrRule
from scaling.sweep.spec import Arm, ModelSpec, Sizing, Spec

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
    family: int = -1  # runs of one family (a parent and its cooldown branches) go to one shard
    parent: str | None = None  # a cooldown branch: the run_id whose checkpoint it starts from
    stable_steps: int | None = None  # ... and that checkpoint's step
    keep_steps: tuple[int, ...] = ()  # a parent: the steps its branches start from

    @property
    def tokens(self) -> int:
        return self.cfg.train.tokens

    @property
    def train_steps(self) -> int:
        """The steps this run trains itself: a branch's after its branch point."""
        return self.steps - (self.stable_steps or 0)

    @property
    def train_flops(self) -> float:
        """6ND FLOPs of the steps this run trains itself (what it costs)."""
        return self.flops["6nd"] * self.train_steps / self.steps

    @property
    def shape(self) -> str:
        m = self.cfg.model
        return f"L{m.n_layer}-d{m.d_model}-h{m.n_head}"

    @property
    def flops_per_step(self) -> float:
        return self.flops["6nd"] / self.steps

    def to_json(self) -> dict:
        m = self.cfg.model
        return {
            "index": self.index,
            "run_id": self.run_id,
            "n_layer": m.n_layer,
            "d_model": m.d_model,
            "n_head": m.n_head,
            "seq_len": m.seq_len,
            "batch_size": self.cfg.train.batch_size,
            "n_params": self.n_params,
            "n_params_nonembed": self.n_params_nonembed,
            "tokens": self.tokens,
            "steps": self.steps,
            "flops_6nd": self.flops["6nd"],
            "flops_kaplan": self.flops["kaplan"],
            "flops_chinchilla": self.flops["chinchilla"],
            "budget": self.budget,
            "seed": self.seed,
            "arm": self.arm,
            "target_n": self.target,
            "tags": self.tags,
            "config_hash": self.cfg.identity_hash(),
            "family": self.family,
            "parent": self.parent,
            "stable_steps": self.stable_steps,
            "keep_steps": list(self.keep_steps),
        }


@dataclass(frozen=True)
class Plan:
    spec: Spec
    runs: tuple[PlannedRun, ...]
    base: Config  # base config after overrides (before arms and the design)
    dropped: tuple[str, ...] = ()  # notes on design points left out
    approaches: tuple[str, ...] = ()  # the fits the plan supports
    lr_rule: LrRule | None = None  # the rule the runs' lr comes from (None: the base lr; provisional with lr_scan)

    def shard(self, index: int, count_: int) -> tuple[PlannedRun, ...]:
        """Shard ``index`` of ``count_``: whole families (a parent with its branches), round robin."""
        return tuple(r for r in self.runs if r.family % count_ == index)

    @property
    def has_arms(self) -> bool:
        return bool(self.spec.arms)


def parse_shard(text: str | None) -> tuple[int, int]:
    """ "I/N" (0 <= I < N) -> (I, N); None -> (0, 1)."""
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
    fixed = list(spec.design_fields) + (["train.seed"] if spec.seeds is not None else [])
    for key in fixed:
        sec, name = key.split(".")
        if name in (overrides.get(sec) or {}):
            raise UsageError(f"--{key} is set by the sweep design of {spec.path}; edit the spec instead")
    for i, arm in enumerate(spec.arms):
        for key in fixed:
            sec, name = key.split(".")
            if name in (arm.config.get(sec) or {}):
                raise UsageError(f"sweep spec {spec.path}: arms[{i}] ({arm.name}) sets {key}, which the design sets")


def make_plan(
    spec: Spec, overrides: dict | None = None, *, load_data: bool = True, lr_rule: LrRule | None = None
) -> Plan:
    """Resolve every run of the sweep and validate it (configs, budgets, corpus, mesh, batch).

    Every run gets its size's settings (:mod:`scaling.sweep.hparams`): the peak lr of
    ``lr_rule`` (or of the spec's ``lr_rule:``; without either, the base lr, which is
    provisional when the spec has an ``lr_scan:``), the warmup and init of ``per_size:``.
    Nothing is trained or written. ``load_data`` checks the corpus (tokenizing it into the
    token cache the first time) and takes the vocabulary from the tokenizer; without it the
    vocabulary must be given (``model.vocab_size``) or is taken from the tokenizer name."""
    overrides = overrides or {}
    _check_overrides(spec, overrides)
    base_dict = config_parse.merge(spec.base, overrides)
    base = config_parse.from_dict(base_dict)
    arms: tuple[Arm | None, ...] = spec.arms or (None,)
    seeds = spec.seeds if spec.seeds is not None else (base.train.seed,)
    vocab_of: dict = {}
    arm_info = []
    for arm in arms:
        d = config_parse.merge(base_dict, arm.config) if arm else base_dict
        try:
            cfg = config_parse.from_dict(d)
        except UsageError as e:
            raise UsageError(f"arm {arm.name}: {e}" if arm else str(e)) from None
        if cfg.data not in vocab_of:
            vocab_of[cfg.data] = _vocab(cfg, load_data)
        n_vocab = vocab_of[cfg.data]
        if cfg.model.vocab_size and cfg.model.vocab_size < n_vocab:
            raise UsageError(f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the tokenizer's {n_vocab} ids")
        vocab = cfg.model.vocab_size or n_vocab
        d = config_parse.merge(d, {"model": {"vocab_size": vocab}})
        arm_info.append((arm, d, config_parse.from_dict(d)))

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
                    raise UsageError(
                        f"grid tokens {tokens_req:g} is less than one batch "
                        f"(train.batch_size * model.seq_len = {per_step})"
                    )
            else:
                steps = round(budget / (6 * counts["n_params"] * per_step))
                why = (
                    f"{steps} steps < isoflop.min_steps {spec.min_steps}"
                    if steps < spec.min_steps
                    else f"D/N = {steps * per_step / counts['n_params']:.3g} < isoflop.min_tokens_per_param "
                    f"{spec.min_tokens_per_param:g}"
                    if steps * per_step < spec.min_tokens_per_param * counts["n_params"]
                    else f"D/N = {steps * per_step / counts['n_params']:.3g} > isoflop.max_tokens_per_param "
                    f"{spec.max_tokens_per_param:g}"
                    if spec.max_tokens_per_param and steps * per_step > spec.max_tokens_per_param * counts["n_params"]
                    else None
                )
                if why:
                    dropped.append(f"budget {budget:.3g} x {mspec.describe()} (N={counts['n_params']:,}): {why}")
                    per_arm = None
                    break
            per_arm.append((arm, d, model, counts, steps))
        if per_arm is None:
            continue
        for seed in seeds:
            for arm, d, model, counts, steps in per_arm:
                runs.append(
                    dict(
                        arm=arm,
                        d=d,
                        model=model,
                        counts=counts,
                        steps=steps,
                        seed=seed,
                        budget=budget,
                        target=mspec.target,
                        mspec=mspec,
                        point=budget or tokens_req,
                    )
                )
    if spec.noise is not None and runs:
        runs += spec.noise.extra_runs(runs, seeds, spec.path)
    if not runs:
        raise UsageError(f"sweep spec {spec.path} plans no runs" + (f" ({dropped[0]}; ...)" if dropped else ""))

    planned: list[PlannedRun] = []
    seen: dict[str, str] = {}
    for r in runs:
        model, seed, arm = r["model"], r["seed"], r["arm"]
        d = config_parse.merge(
            r["d"], {"model": {"n_layer": model.n_layer, "d_model": model.d_model, "n_head": model.n_head}}
        )
        cfg0 = config_parse.from_dict(d)
        tokens = r["steps"] * cfg0.train.batch_size * cfg0.model.seq_len
        cfg = config_parse.from_dict(config_parse.merge(d, {"train": {"tokens": tokens, "seed": seed}}))
        run_id = f"L{model.n_layer}-d{model.d_model}-D{format_tokens(tokens)}-s{seed}"
        if model.n_head * spec.sizing.head_dim != model.d_model:
            run_id = run_id.replace("-D", f"-h{model.n_head}-D", 1)
        if arm is not None:
            run_id += f"-{arm.name}"
        what = f"{r['mspec'].describe()}" + (f" at budget {r['budget']:.3g}" if r["budget"] else "")
        if run_id in seen:
            raise UsageError(
                f"sweep spec {spec.path}: {what} and {seen[run_id]} give the same run {run_id} "
                f"(the same shape, and tokens equal to 2 significant digits); remove or change one"
            )
        seen[run_id] = what
        fpt = flops_lib.all_flops_per_token(cfg.model)
        tags = dict(spec.tags)
        if arm is not None:
            tags.update(arm.tags)
        planned.append(
            PlannedRun(
                index=len(planned),
                run_id=run_id,
                cfg=cfg,
                seed=seed,
                arm=None if arm is None else arm.name,
                budget=r["budget"],
                target=r["target"],
                tags=tags,
                n_params=r["counts"]["n_params"],
                n_params_nonembed=r["counts"]["n_params_nonembed"],
                steps=r["steps"],
                flops={k: v * tokens for k, v in fpt.items()},
            )
        )
    rule = lr_rule if lr_rule is not None else hparams.rule_from_spec(spec)
    planned = hparams.apply(spec, planned, rule)
    planned = assign_families(planned, spec.cooldown_branches)
    _validate_runs(planned, load_data)
    approaches = fit_support(spec, planned)
    if spec.fit and not approaches:
        raise UsageError(
            f"sweep spec {spec.path} plans too few runs to fit a scaling law ({SWEEP.describe()}"
            f"{'; per arm' if spec.arms else ''}); add runs or set fit: false"
        )
    return Plan(spec=spec, runs=tuple(planned), base=base, dropped=tuple(dropped), approaches=approaches, lr_rule=rule)


def fit_support(spec: Spec, runs: tuple[PlannedRun, ...] | list[PlannedRun]) -> tuple[str, ...]:
    """The approaches a set of runs supports in every arm ('3', '2', '1'), by the rule the
    sweep's fit applies (:data:`scaling.laws.support.SWEEP`)."""
    ok = ("3", "2", "1")
    for arm in dict.fromkeys(r.arm for r in runs):
        rs = [r for r in runs if r.arm == arm]
        N = np.array([r.n_params for r in rs], dtype=np.float64)
        D = np.array([r.tokens for r in rs], dtype=np.float64)
        budgets = np.array([np.nan if r.budget is None else r.budget for r in rs], dtype=np.float64)
        here = SWEEP.supported(N, D, 6 * N * D, budgets)
        ok = tuple(a for a in ok if a in here)
    return ok


def _vocab(cfg: Config, load_data: bool) -> int:
    """The tokenizer's number of ids: from the corpus's token cache (tokenizing it the first
    time), or without the data from ``model.vocab_size`` or the tokenizer's name."""
    if load_data:
        return load_tokens(cfg.data).n_vocab
    n_vocab = tokenizer.vocab_size(cfg.data.tokenizer)
    return cfg.model.vocab_size or n_vocab


def _shape(mspec: ModelSpec, sizing: Sizing, model: ModelConfig) -> tuple[int, int, int]:
    if mspec.target is not None:
        return shape_for(mspec.target, sizing, model)
    n_head = mspec.n_head
    if n_head is None:
        if mspec.d_model % sizing.head_dim:  # type: ignore[operator]
            raise UsageError(
                f"model {mspec.describe()}: d_model is not a multiple of sizing.head_dim "
                f"({sizing.head_dim}); give n_head"
            )
        n_head = mspec.d_model // sizing.head_dim  # type: ignore[operator]
    return mspec.n_layer, mspec.d_model, n_head  # type: ignore[return-value]


def _model(model: ModelConfig, shape: tuple[int, int, int], mspec: ModelSpec) -> ModelConfig:
    n_layer, d_model, n_head = shape
    try:
        return dataclasses.replace(model, n_layer=n_layer, d_model=d_model, n_head=n_head)
    except UsageError as e:
        raise UsageError(f"model {mspec.describe()}: {e}") from None


def _validate_runs(runs: list[PlannedRun], load_data: bool) -> None:
    """Everything Run checks before compute, for every run: mesh and batch, data windows."""
    import jax  # the device count: jax starts here, once the spec and overrides are known good

    from scaling import sharding as sh

    n_dev = jax.device_count()
    for r in runs:
        try:
            shape = sh.mesh_shape(r.cfg.mesh, n_dev)
            sh.check_mesh_fits(shape, r.cfg.model, r.cfg.train.batch_size, r.cfg.train.microbatches, r.cfg.mesh)
        except UsageError as e:
            raise UsageError(f"run {r.run_id}: {e}") from None
    if load_data:
        checked = set()
        for r in runs:
            key = (r.cfg.data, r.cfg.model.seq_len)
            if key in checked:
                continue
            checked.add(key)
            Batches(load_tokens(r.cfg.data), r.cfg.model.seq_len, r.cfg.train.batch_size, r.seed)
