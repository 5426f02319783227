"""A sweep spec: the YAML file of ``experiments.sweep`` parsed and checked (the format is in
:mod:`scaling.sweep`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling.io import load_yaml
from scaling.sweep import parse as parse_lib
from scaling.sweep.noise import NoiseSpec, parse_noise
from scaling.sweep.parse import format_si, parse_list, parse_mapping, parse_number, positive_int, spec_error, with_flags

RESULT_COLUMNS = (
    "run_id",
    "n_layer",
    "d_model",
    "n_head",
    "seq_len",
    "batch_size",
    "n_params",
    "n_params_nonembed",
    "tokens",
    "steps",
    "flops_6nd",
    "flops_kaplan",
    "flops_chinchilla",
    "flops_xla",
    "final_train_loss",
    "val_loss",
    "val_bpb",
    "status",
    "wall_s",
    "compile_s",
    "tokens_per_s",
    "epochs",
    "budget",
    "seed",
    "target_n",
    "parent",
    "stable_steps",
    "lr",
    "warmup_steps",
)
"""results.csv columns, then ``arm`` (when the sweep has arms) and any tags. ``parent``: the
run_id whose checkpoint a cooldown branch starts from (empty for a run from scratch);
``stable_steps``: the step it starts from; ``lr`` (peak) and ``warmup_steps`` from the run's
config."""

DESIGN_FIELDS = ("model.n_layer", "model.d_model", "model.n_head", "train.tokens")
SPEC_KEYS = {
    "name",
    "description",
    "base",
    "sizing",
    "grid",
    "isoflop",
    "seeds",
    "arms",
    "tags",
    "fit",
    "lr_scan",
    "lr_rule",
    "per_size",
    "cooldown_branches",
    "noise",
}

MAX_LAYERS = 1024  # the depths the sizing rule tries, one parameter count each
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+]*$")


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
        return (
            f"d_model = {self.head_dim} * round({self.aspect:g} * n_layer / {self.head_dim}), "
            f"n_head = d_model / {self.head_dim}, depth chosen so that {what} is closest to the target"
        )


@dataclass(frozen=True)
class ModelSpec:
    """One model entry: a target count, or an explicit shape."""

    target: float | None = None
    n_layer: int | None = None
    d_model: int | None = None
    n_head: int | None = None

    def describe(self) -> str:
        if self.target is not None:
            return f"target {format_si(self.target)}"
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
class LrScanSpec:
    """``lr_scan:``: the pilot scan of peak learning rates (:mod:`scaling.sweep.pilot`)."""

    lrs: tuple[float, ...]  # the peak rates tried at every scanned size, ascending
    flops: float  # the budget of each scan run (tokens = flops / 6N, whole batches)
    n_models: int = 2  # that many sizes of the design, smallest to largest, evenly by rank ...
    models: tuple[ModelSpec, ...] = ()  # ... or these sizes


@dataclass(frozen=True)
class LrRuleSpec:
    """``lr_rule:``: a fixed rule lr = c (N / n_ref)^-gamma instead of a scan."""

    c: float
    gamma: float
    n_ref: float


@dataclass(frozen=True)
class PerSizeSpec:
    """``per_size:``: the per-size settings of every run (:mod:`scaling.sweep.hparams`)."""

    warmup_tokens_per_param: float = 1.0
    warmup_max_fraction: float = 0.05
    init_scale: float | None = None  # model.init_std = init_scale / sqrt(d_model); None: the base init_std


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
    min_tokens_per_param: float = 0.0  # isoflop: points with D / N below it are left out
    max_tokens_per_param: float = 0.0  # isoflop: points with D / N above it are left out (0: none)
    seeds: tuple[int, ...] | None = None
    noise: NoiseSpec | None = None
    warmups: tuple[tuple[str, int], ...] = ()  # (shape, warmup steps) fixed by a main plan (an lr scan's)
    cooldown_branches: bool = True  # with a wsd base schedule: shorter runs branch from the longest
    arms: tuple[Arm, ...] = ()
    tags: dict = field(default_factory=dict)
    fit: bool = True
    fit_loss: str = "val_loss"
    fit_count: str = "total"  # the parameter count N of the law: total (n_params) | nonembed
    fit_bootstrap: int = 40  # approach-3 bootstrap resamples (each refitted from the full start grid)
    lr_scan: LrScanSpec | None = None
    lr_rule: LrRuleSpec | None = None
    per_size: PerSizeSpec | None = None
    flags: str = ""  # the command-line flags that changed the file's values, as given

    @property
    def design_fields(self) -> tuple[str, ...]:
        """The config fields the design sets (neither an override nor an arm may)."""
        extra = (
            (("optim.lr",) if self.lr_scan or self.lr_rule else ())
            + (("optim.warmup_steps",) if self.per_size else ())
            + (("model.init_std",) if self.per_size and self.per_size.init_scale is not None else ())
        )
        return DESIGN_FIELDS + extra


def _parse_model(value: Any, where: str) -> ModelSpec:
    if isinstance(value, dict):
        m = parse_mapping(value, where, {"n_layer", "d_model", "n_head", "params"})
        if "params" in m:
            if set(m) != {"params"}:
                raise spec_error(where, "give either params (a target count) or n_layer and d_model, not both")
            return ModelSpec(target=parse_number(m["params"], f"{where}.params"))
        if "n_layer" not in m or "d_model" not in m:
            raise spec_error(where, "a shape needs n_layer and d_model (n_head is optional)")
        return ModelSpec(
            n_layer=positive_int(m["n_layer"], f"{where}.n_layer"),
            d_model=positive_int(m["d_model"], f"{where}.d_model"),
            n_head=positive_int(m["n_head"], f"{where}.n_head") if m.get("n_head") is not None else None,
        )
    return ModelSpec(target=parse_number(value, where))


def _parse_models(value: Any, where: str) -> tuple[ModelSpec, ...]:
    return tuple(_parse_model(v, f"{where}[{i}]") for i, v in enumerate(parse_list(value, where)))


def _parse_tags(value: Any, where: str) -> dict:
    tags = parse_mapping(value, where)
    for k, v in tags.items():
        if not isinstance(k, str) or not _NAME_RE.match(k):
            raise spec_error(where, f"tag name {k!r} must be a plain word")
        if k in RESULT_COLUMNS or k == "arm":
            raise spec_error(where, f"tag {k!r} would shadow a results column")
        if isinstance(v, (dict, list)):
            raise spec_error(f"{where}.{k}", "a tag value must be a scalar")
    return dict(tags)


def load_spec(path: str | Path, flags: dict[str, Any] | None = None, shown: str = "") -> Spec:
    """Parse and check a sweep spec with ``flags`` (parsed by :func:`~scaling.sweep.parse.parse_flag`,
    ``shown`` as given) in place of its values; UsageError naming the problem."""
    p = Path(path)
    d = load_yaml(p)
    parse_mapping(d, str(p), SPEC_KEYS)
    d, where = with_flags(d, flags or {}), f"{p} with {shown}" if shown else str(p)
    name = str(d.get("name") or p.stem)
    if not _NAME_RE.match(name):
        raise spec_error(where, f"name {name!r} must be a plain word (letters, digits, - _ . +)")
    base = d.get("base") or {}
    if isinstance(base, str):
        base_path = (p.parent / base) if not Path(base).is_absolute() else Path(base)
        base = load_yaml(base_path)
    base = parse_mapping(base, f"{where}: base")
    sz = parse_mapping(d.get("sizing"), f"{where}: sizing", {"aspect", "head_dim", "count", "max_layers"})
    sizing = Sizing(
        aspect=parse_number(sz.get("aspect", Sizing.aspect), f"{where}: sizing.aspect"),
        head_dim=positive_int(sz.get("head_dim", Sizing.head_dim), f"{where}: sizing.head_dim"),
        count=str(sz.get("count", Sizing.count)),
        max_layers=positive_int(sz.get("max_layers", Sizing.max_layers), f"{where}: sizing.max_layers"),
    )
    if sizing.max_layers > MAX_LAYERS:
        raise spec_error(where, f"sizing.max_layers must be at most {MAX_LAYERS}, got {sizing.max_layers}")
    if sizing.count not in ("total", "nonembed"):
        raise spec_error(where, f"sizing.count must be total or nonembed, got {sizing.count!r}")
    designs = [k for k in ("grid", "isoflop") if k in d]
    if len(designs) != 1:
        raise spec_error(where, "give exactly one design: grid (models x tokens) or isoflop (budgets x models)")
    design = designs[0]
    kw: dict[str, Any] = {}
    if design == "grid":
        g = parse_mapping(d["grid"], f"{where}: grid", {"models", "tokens"})
        if "models" not in g or "tokens" not in g:
            raise spec_error(where, "grid needs models and tokens")
        kw["models"] = _parse_models(g["models"], f"{where}: grid.models")
        kw["tokens"] = tuple(
            parse_number(t, f"{where}: grid.tokens[{i}]")
            for i, t in enumerate(parse_list(g["tokens"], f"{where}: grid.tokens"))
        )
    else:
        g = parse_mapping(
            d["isoflop"],
            f"{where}: isoflop",
            {"budgets", "models", "min_steps", "min_tokens_per_param", "max_tokens_per_param"},
        )
        if "budgets" not in g:
            raise spec_error(where, "isoflop needs budgets")
        shared = _parse_models(g["models"], f"{where}: isoflop.models") if "models" in g else None
        budgets = []
        for i, b in enumerate(parse_list(g["budgets"], f"{where}: isoflop.budgets")):
            bw = f"{where}: isoflop.budgets[{i}]"
            if isinstance(b, dict):
                bm = parse_mapping(b, bw, {"flops", "models"})
                if "flops" not in bm:
                    raise spec_error(bw, "needs flops")
                models = _parse_models(bm["models"], f"{bw}.models") if "models" in bm else shared
                flops = parse_number(bm["flops"], f"{bw}.flops")
            else:
                flops, models = parse_number(b, bw), shared
            if models is None:
                raise spec_error(bw, "has no models (give isoflop.models or models for this budget)")
            budgets.append(Budget(flops, models))
        if len({b.flops for b in budgets}) != len(budgets):
            raise spec_error(where, "isoflop.budgets has a repeated budget")
        kw["budgets"] = tuple(budgets)
        kw["min_steps"] = positive_int(g.get("min_steps", 1), f"{where}: isoflop.min_steps")
        kw.update(parse_lib.tokens_per_param_band(g, where))
    if d.get("seeds") is not None:
        seeds = parse_list(d["seeds"], f"{where}: seeds")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
            raise spec_error(where, f"seeds must be non-negative integers, got {seeds}")
        if len(set(seeds)) != len(seeds):
            raise spec_error(where, "seeds has a repeated seed")
        kw["seeds"] = tuple(seeds)
    if d.get("noise") is not None:
        kw["noise"] = parse_noise(d["noise"], f"{where}: noise", kw.get("seeds"))
    branches = d.get("cooldown_branches", True)
    if not isinstance(branches, bool):
        raise spec_error(where, f"cooldown_branches must be true or false, got {branches!r}")
    kw["cooldown_branches"] = branches
    arms = []
    if d.get("arms") is not None:
        for i, a in enumerate(parse_list(d["arms"], f"{where}: arms")):
            aw = f"{where}: arms[{i}]"
            if isinstance(a, str):
                a = {"name": a}
            am = parse_mapping(a, aw, {"name", "config", "tags"})
            aname = str(am.get("name", ""))
            if not _NAME_RE.match(aname):
                raise spec_error(aw, f"name {aname!r} must be a plain word (letters, digits, _ . +)")
            if "-" in aname:
                raise spec_error(aw, f"name {aname!r} must not contain '-'")
            cfg = parse_mapping(am.get("config"), f"{aw}.config")
            arms.append(Arm(aname, cfg, _parse_tags(am.get("tags"), f"{aw}.tags")))
        if len({a.name for a in arms}) != len(arms):
            raise spec_error(where, "arms has a repeated name")
    fit, fit_loss, fit_count, fit_boot = d.get("fit", True), "val_loss", sizing.count, Spec.fit_bootstrap
    if isinstance(fit, dict):
        fm = parse_mapping(fit, f"{where}: fit", {"enabled", "loss", "count", "bootstrap"})
        fit_loss = str(fm.get("loss", "val_loss"))
        fit_count = str(fm.get("count", sizing.count))
        fit_boot = positive_int(fm.get("bootstrap", fit_boot), f"{where}: fit.bootstrap")
        fit = fm.get("enabled", True)
    if not isinstance(fit, bool):
        raise spec_error(where, f"fit must be true, false or a mapping, got {fit!r}")
    if fit_loss not in ("val_loss", "final_train_loss", "val_bpb"):
        raise spec_error(where, f"fit.loss must be val_loss, final_train_loss or val_bpb, got {fit_loss!r}")
    kw.update(_parse_hparams(d, where))
    if fit_count not in ("total", "nonembed"):
        raise spec_error(where, f"fit.count must be total or nonembed, got {fit_count!r}")
    return Spec(
        name=name,
        path=str(p),
        design=design,
        base=base,
        sizing=sizing,
        description=str(d.get("description") or "").strip(),
        arms=tuple(arms),
        tags=_parse_tags(d.get("tags"), f"{where}: tags"),
        fit=fit,
        fit_loss=fit_loss,
        fit_count=fit_count,
        fit_bootstrap=fit_boot,
        flags=shown,
        **kw,
    )


def _parse_hparams(d: dict, where: str) -> dict:
    """The ``lr_scan``, ``lr_rule`` and ``per_size`` sections."""
    kw: dict[str, Any] = {}
    if d.get("lr_scan") is not None and d.get("lr_rule") is not None:
        raise spec_error(where, "give lr_scan (fit the rule to a pilot scan) or lr_rule (a fixed rule), not both")
    if d.get("lr_scan") is not None:
        w = f"{where}: lr_scan"
        m = parse_mapping(d["lr_scan"], w, {"lrs", "models", "flops"})
        if "lrs" not in m or "flops" not in m:
            raise spec_error(w, "needs lrs (the peak rates tried) and flops (the budget of each scan run)")
        lrs = tuple(parse_number(x, f"{w}.lrs[{i}]") for i, x in enumerate(parse_list(m["lrs"], f"{w}.lrs")))
        if len(lrs) < 2 or len(set(lrs)) != len(lrs):
            raise spec_error(w, f"lrs needs 2 or more distinct rates (3 or more to locate an optimum), got {list(lrs)}")
        models = m.get("models", 2)
        listed = _parse_models(models, f"{w}.models") if isinstance(models, list) else ()
        n = len(listed) or positive_int(models, f"{w}.models")
        if n < 2:
            raise spec_error(w, f"models needs 2 or more sizes (the rule has two parameters), got {models!r}")
        kw["lr_scan"] = LrScanSpec(
            tuple(sorted(lrs)), parse_number(m["flops"], f"{w}.flops"), 0 if listed else n, listed
        )
    if d.get("lr_rule") is not None:
        w = f"{where}: lr_rule"
        m = parse_mapping(d["lr_rule"], w, {"c", "gamma", "n_ref"})
        if set(m) != {"c", "gamma", "n_ref"}:
            raise spec_error(w, "needs c, gamma and n_ref (lr = c * (N / n_ref)^-gamma)")
        kw["lr_rule"] = LrRuleSpec(
            parse_number(m["c"], f"{w}.c"),
            parse_number(m["gamma"], f"{w}.gamma", positive=False),
            parse_number(m["n_ref"], f"{w}.n_ref"),
        )
    if d.get("per_size") is not None:
        w = f"{where}: per_size"
        m = parse_mapping(
            {} if d["per_size"] is True else d["per_size"],
            w,
            {"warmup_tokens_per_param", "warmup_max_fraction", "init_scale"},
        )
        ps = PerSizeSpec(
            parse_number(m.get("warmup_tokens_per_param", 1.0), f"{w}.warmup_tokens_per_param"),
            parse_number(m.get("warmup_max_fraction", 0.05), f"{w}.warmup_max_fraction"),
            None if m.get("init_scale") is None else parse_number(m["init_scale"], f"{w}.init_scale"),
        )
        if ps.warmup_max_fraction > 1:
            raise spec_error(w, f"warmup_max_fraction must be at most 1, got {ps.warmup_max_fraction:g}")
        kw["per_size"] = ps
    return kw
