"""The fine-tuning config: typed, frozen, checked up front (``python -m experiments.finetune``).

Sections: ``task`` (what is learned and how it is scored), ``lora`` (low-rank adapters, or
full fine-tuning at rank 0), ``train`` (the optimisation), ``checkpoint`` (the pretraining
run's :class:`~scaling.config.CheckpointConfig`). A config is built from defaults, then a YAML
file of sections, then ``--section.field VALUE`` overrides; every value is parsed to its
field's type and checked before anything is computed (:class:`~scaling.errors.UsageError`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from scaling.config import SEED_MAX, CheckpointConfig
from scaling.config_parse import resolve_file
from scaling.errors import UsageError, did_you_mean
from scaling.fields import check_fields, field_type, parse_value, ranged, show

_f = ranged

TASK_KINDS = ("instruct", "classify")
POOLINGS = ("last", "mean")
INITS = ("pretrained", "scratch")
LORA_TARGETS = ("qkv", "out", "fc", "proj")
DEFAULT_TEMPLATE = "{prompt}\n### Answer:\n"


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise UsageError(msg)


@dataclass(frozen=True)
class TaskConfig:
    """What is learned and how it is scored."""

    kind: str = _f("instruct", "instruct (prompt/response pairs) | classify (text/label records)")
    template: str = _f(
        DEFAULT_TEMPLATE, "instruct: the text before a response; {prompt} is replaced by the record's prompt"
    )
    pooling: str = _f("last", "classify: the hidden state the head reads: last (the last token's) | mean")
    pack: bool = _f(True, "instruct: pack several examples into one training row (never split an example)")
    max_new_tokens: int = _f(48, "instruct: tokens generated per held-out prompt for exact match", ge=1)
    eval_examples: int = _f(
        512, "held-out examples scored at each evaluation (a fixed choice when there are more)", ge=1
    )
    val_fraction: float = _f(
        0.2, "records without a 'split' field: the share held out (a fixed, seed-independent choice)", gt=0, lt=1
    )

    def __post_init__(self) -> None:
        check_fields(self, "task")
        _check(self.kind in TASK_KINDS, f"task.kind must be one of {', '.join(TASK_KINDS)}, got {self.kind!r}")
        _check(self.pooling in POOLINGS, f"task.pooling must be last or mean, got {self.pooling!r}")
        _check(
            self.template.count("{prompt}") == 1,
            f"task.template must hold {{prompt}} exactly once, got {show(self.template)}",
        )


@dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters W + (alpha / rank) A B on chosen kernels; rank 0 trains every parameter."""

    rank: int = _f(0, "adapter rank; 0 means full fine-tuning (every parameter trains)", ge=0)
    alpha: float = _f(16.0, "adapter scale numerator: the update is (alpha / rank) A B", gt=0)
    targets: str = _f("qkv,out", f"kernels that get adapters, comma-separated from {', '.join(LORA_TARGETS)}")
    layers: str = _f("all", "blocks that get adapters: all, or block indices separated by commas (0-based)")

    def __post_init__(self) -> None:
        check_fields(self, "lora")
        self.target_list()
        self.layer_list(None)

    def target_list(self) -> tuple[str, ...]:
        names = tuple(t.strip() for t in self.targets.split(",") if t.strip())
        bad = [t for t in names if t not in LORA_TARGETS]
        _check(
            bool(names) and not bad,
            f"lora.targets must name kernels from {', '.join(LORA_TARGETS)}, got {self.targets!r}",
        )
        return names

    def layer_list(self, n_layer: int | None) -> tuple[int, ...] | None:
        """The adapted blocks (None: all); with ``n_layer``, indices past the model are refused."""
        if self.layers.strip() == "all":
            return None if n_layer is None else tuple(range(n_layer))
        try:
            idx = tuple(sorted({int(x) for x in self.layers.split(",")}))
        except ValueError:
            raise UsageError(f"lora.layers must be 'all' or block indices like 0,2, got {self.layers!r}") from None
        _check(min(idx) >= 0, f"lora.layers must be >= 0, got {self.layers!r}")
        if n_layer is not None:
            _check(max(idx) < n_layer, f"lora.layers names block {max(idx)}, the model has {n_layer} blocks")
        return idx


@dataclass(frozen=True)
class FinetuneTrainConfig:
    """The optimisation: AdamW with linear warmup and cosine decay to zero."""

    steps: int = _f(300, "optimizer steps", ge=1)
    batch_size: int = _f(16, "rows (instruct) or examples (classify) per step", ge=1)
    seq_len: int = _f(0, "tokens per row; 0 takes the model's context length", ge=0)
    lr: float = _f(1e-3, "peak learning rate", gt=0)
    head_lr: float = _f(0.0, "classify: the head's peak learning rate; 0 uses train.lr", ge=0)
    warmup_steps: int = _f(20, "linear warmup steps (capped at train.steps)", ge=0)
    weight_decay: float = _f(0.0, "decoupled weight decay on matrices", ge=0)
    grad_clip: float = _f(1.0, "clip the global gradient norm to this; 0 disables", ge=0)
    seed: int = _f(0, "seed of the head and adapter init and of the example order", ge=0, le=SEED_MAX)
    init: str = _f("pretrained", "pretrained (start from the given model) | scratch (same shape, fresh random weights)")
    freeze_model: bool = _f(False, "classify: train the head alone on the frozen model (a linear probe)")
    eval_every: int = _f(100, "evaluate on the held-out split every this many steps (and at the end)", ge=1)
    log_every: int = _f(10, "write a metrics.jsonl line every this many steps", ge=1)

    def __post_init__(self) -> None:
        check_fields(self, "train")
        _check(self.init in INITS, f"train.init must be pretrained or scratch, got {self.init!r}")


@dataclass(frozen=True)
class FinetuneConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every_steps=100))

    def __post_init__(self) -> None:
        if self.train.freeze_model:
            _check(
                self.task.kind == "classify",
                "train.freeze_model trains a classifier's head: it needs task.kind classify",
            )
            _check(self.lora.rank == 0, "train.freeze_model trains the head alone: set lora.rank 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def identity_hash(self) -> str:
        """Hash of what a fine-tuning checkpoint depends on (task, adapters, optimisation)."""
        d = {k: v for k, v in self.to_dict().items() if k != "checkpoint"}
        for k in ("eval_every", "log_every"):
            d["train"].pop(k)
        if not self.train.freeze_model:  # configs from before the field hash as they did
            d["train"].pop("freeze_model")
        d["task"].pop("eval_examples")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


SECTIONS = {"task": TaskConfig, "lora": LoraConfig, "train": FinetuneTrainConfig, "checkpoint": CheckpointConfig}


def parse_sections(d: Any) -> dict[str, dict[str, Any]]:
    """Nested mappings with every value parsed to its field's type; UsageError on unknown names."""
    if not isinstance(d, dict):
        raise UsageError(f"a fine-tuning config must be a mapping of sections, got {show(d)}")
    out: dict[str, dict[str, Any]] = {}
    for sec, given in d.items():
        if sec not in SECTIONS:
            raise UsageError(f"unknown fine-tuning config section {sec!r} (sections: {', '.join(SECTIONS)})")
        if given is None:
            continue
        if not isinstance(given, dict):
            raise UsageError(f"config section {sec} must be a mapping of fields, got {show(given)}")
        cls = SECTIONS[sec]
        known = {g.name for g in dataclasses.fields(cls)}
        for k, v in given.items():
            if k not in known:
                raise UsageError(f"unknown config field {sec}.{k}{did_you_mean(k, known)}")
            out.setdefault(sec, {})[k] = parse_value(v, field_type(cls, k), f"{sec}.{k}")
    return out


def from_dict(d: Any) -> FinetuneConfig:
    parsed = parse_sections(d)
    base = FinetuneConfig()
    return FinetuneConfig(**{sec: dataclasses.replace(getattr(base, sec), **parsed.get(sec, {})) for sec in SECTIONS})


def resolve(config_file: str | None, overrides: dict) -> FinetuneConfig:
    """The config of a YAML file (checked on its own) with the overrides on top."""
    return resolve_file(config_file, overrides, parse_sections, from_dict)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One documented ``--section.field`` option per field."""
    defaults = FinetuneConfig()
    for sec, cls in SECTIONS.items():
        group = parser.add_argument_group(sec, (cls.__doc__ or "").strip().splitlines()[0])
        for g in dataclasses.fields(cls):
            group.add_argument(
                f"--{sec}.{g.name}",
                dest=f"{sec}.{g.name}",
                default=None,
                metavar=field_type(cls, g.name).__name__.upper(),
                help=f"{g.metadata.get('help', '')} (default: {getattr(getattr(defaults, sec), g.name)!r})",
            )
