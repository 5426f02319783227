"""Typed, frozen configs, validated up front.

Every field carries its documentation in ``metadata["help"]``; ``--help`` of every entry
point prints it. A config is built from defaults, then a YAML file (sections as
mappings), then dotted overrides (:mod:`scaling.config_parse`), and is checked by each
dataclass's ``__post_init__`` (types and ranges declared per field, :mod:`scaling.fields`;
then the relations between fields): bad values raise :class:`scaling.errors.UsageError`
before anything is computed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from scaling.curriculum_config import check_config as check_curriculum
from scaling.errors import UsageError
from scaling.fields import check_fields, ranged

CPU_KERNEL_HEAD_DIMS = (16, 32, 64, 128)  # the head sizes scaling/model/kernels/causal_attention_cpu.cc is built for
CUDNN_HEAD_DIMS = tuple(range(8, 129, 8))  # the head sizes of cuDNN's fused attention
OBJECTIVES = ("causal", "mlm", "prefix_denoise")
# per objective, the train.* fields it does not read: out of the hash, so causal runs hash as before them
OBJECTIVE_FIELDS = {
    "causal": ("objective", "mask_rate", "corrupt_rate", "mean_span"),
    "mlm": ("corrupt_rate", "mean_span"),
    "prefix_denoise": ("mask_rate",),
}
SEED_MAX = 2**32 - 1  # jax.random.key keeps only a seed's low 32 bits (without x64); numpy refuses negative seeds

_f = ranged  # the short name keeps the many field declarations below readable


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise UsageError(msg)


def _one_of(value: str, name: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, f"{name} must be {', '.join(choices[:-1])} or {choices[-1]}, got {value!r}")


def _check_fields(obj: Any) -> None:
    check_fields(obj, type(obj).__name__.removesuffix("Config").lower())


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only GPT. The defaults are GPT-2's choices (learned positions, biases,
    LayerNorm eps 1e-5, tanh-GELU, tied head)."""

    n_layer: int = _f(4, "number of transformer blocks", ge=1)
    n_head: int = _f(4, "attention heads per block; d_model must be divisible by it", ge=1)
    d_model: int = _f(128, "residual stream width", ge=1)
    d_ff: int = _f(
        0, "hidden width of the MLP; 0 means 4*d_model (gelu) or 8/3*d_model rounded up to 64 (swiglu)", ge=0
    )
    seq_len: int = _f(128, "context length in tokens (n_ctx)", ge=1)
    vocab_size: int = _f(0, "tokens the model can emit; 0 takes the tokenizer's n_vocab", ge=0)
    vocab_multiple: int = _f(
        64, "pad the embedding table to a multiple of this (padded ids are masked out of the logits)", ge=1
    )
    position: str = _f("learned", "position encoding: learned | rotary")
    rope_theta: float = _f(10000.0, "rotary base frequency (position=rotary)", gt=0)
    norm: str = _f("layernorm", "layernorm | rmsnorm")
    norm_eps: float = _f(1e-5, "epsilon of the normalisation layers", gt=0)
    bias: bool = _f(True, "biases in linear layers and LayerNorm")
    tie_embeddings: bool = _f(True, "output head shares the token embedding matrix")
    mlp: str = _f("gelu", "MLP type: gelu (tanh approximation, GPT-2) | swiglu")
    dropout: float = _f(0.0, "dropout rate on the embeddings and the residual branches", ge=0, lt=1)
    dtype: str = _f("float32", "compute dtype: float32 | bfloat16 (parameters stay float32)")
    attention: str = _f(
        "auto",
        "training attention: auto (CPU: cpu_kernel where it builds, else blocked beyond 64 tokens; "
        "NVIDIA GPU and bfloat16: cudnn where it compiles; else dot_product) | cpu_kernel (C++ via "
        "XLA's FFI; float32, head size 16/32/64/128) | blocked (XLA, cache-sized blocks) | dot_product "
        "(jax.nn.dot_product_attention, XLA's) | cudnn (its cuDNN kernel; bfloat16, head size 8k <= 128)",
    )
    dense: str = _f(
        "auto",
        "the dense products: auto (blas on a CPU for float32 on one device where it builds, else xla) | blas | xla",
    )
    init_std: float = _f(0.02, "std of the normal init; residual projections get init_std/sqrt(2*n_layer)", gt=0)
    scan_layers: bool = _f(
        False,
        "run the blocks under nn.scan (one block compiled whatever the depth, parameters stacked on "
        "a leading layers axis; a checkpoint holds one layout) instead of a Python loop (h_0 .. "
        "h_{n-1}); off by default: at a sweep's depths it slows every step (docs/performance.md)",
    )
    remat: bool = _f(False, "recompute each block's activations in the backward pass: less memory, more compute")

    def __post_init__(self) -> None:
        _check_fields(self)
        _check(
            self.d_model % self.n_head == 0,
            f"model.d_model ({self.d_model}) must be divisible by model.n_head ({self.n_head})",
        )
        _one_of(self.position, "model.position", ("learned", "rotary"))
        _one_of(self.norm, "model.norm", ("layernorm", "rmsnorm"))
        _one_of(self.mlp, "model.mlp", ("gelu", "swiglu"))
        _one_of(self.dtype, "model.dtype", ("float32", "bfloat16"))
        _one_of(self.attention, "model.attention", ("auto", "cpu_kernel", "blocked", "dot_product", "cudnn"))
        _one_of(self.dense, "model.dense", ("auto", "blas", "xla"))
        _check(
            self.attention != "cudnn" or (self.dtype == "bfloat16" and self.head_dim in CUDNN_HEAD_DIMS),
            f"model.attention=cudnn needs model.dtype bfloat16 and a head size that is a multiple of 8 up to 128, "
            f"got {self.dtype} and {self.head_dim}",
        )
        _check(
            self.attention != "cpu_kernel" or (self.dtype == "float32" and self.head_dim in CPU_KERNEL_HEAD_DIMS),
            f"model.attention=cpu_kernel needs model.dtype float32 and a head size (d_model / n_head) in "
            f"{CPU_KERNEL_HEAD_DIMS}, got {self.dtype} and {self.head_dim}",
        )
        _check(self.dense != "blas" or self.dtype == "float32", f"model.dense=blas needs float32, got {self.dtype}")
        _check(
            self.position == "learned" or (self.d_model // self.n_head) % 2 == 0,
            "rotary positions need an even head size (d_model / n_head)",
        )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def ff_dim(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.mlp == "gelu":
            return 4 * self.d_model
        return -(-(8 * self.d_model // 3) // 64) * 64

    @property
    def padded_vocab(self) -> int:
        m = self.vocab_multiple
        return -(-self.vocab_size // m) * m


@dataclass(frozen=True)
class DataConfig:
    """Where tokens come from and how they are split."""

    corpus: str = _f(
        "tinyshakespeare",
        "a text, .jsonl or .parquet file, a directory of them (recursive), a glob, hf:NAME[:CONFIG][@SPLIT], "
        "or a named corpus (tinyshakespeare, gutenberg: under SCALING_DATA_DIR, else embedded in the package)",
    )
    tokenizer: str = _f("byte", "byte | gpt2 | bpe:<vocab size> (trained on the training split)")
    val_fraction: float = _f(
        0.1,
        "share held out for validation: of documents, or of tokens (the tail) for a one-document corpus",
        gt=0,
        lt=1,
    )
    hf_text_field: str = _f("text", "record field holding the text (hf:, .jsonl and .parquet corpora)")
    curriculum: str = _f("", "curriculum pacing: '' (none) | linear | root | step | exp | anti-<pacing>")
    curriculum_score: str = _f(
        "length", "difficulty score: [seq:|doc:]length | rarity | model:<run dir> (doc: scores whole documents)"
    )
    curriculum_horizon: float = _f(0.5, "fraction of the run after which competence reaches 1", gt=0, le=1)
    curriculum_c0: float = _f(0.1, "initial competence c0", gt=0, le=1)

    def __post_init__(self) -> None:
        _check_fields(self)
        _check(bool(self.corpus), "data.corpus must not be empty")
        check_curriculum(self)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup, then cosine or warmup-stable-decay to min_lr_ratio*lr at the end."""

    lr: float = _f(1e-3, "peak learning rate", gt=0)
    min_lr_ratio: float = _f(0.1, "final learning rate as a fraction of the peak", ge=0, le=1)
    warmup_steps: int = _f(100, "linear warmup steps (capped at the run's steps)", ge=0)
    weight_decay: float = _f(0.1, "decoupled weight decay on matrices (not on norms, biases or embeddings)", ge=0)
    beta1: float = _f(0.9, "Adam beta1", ge=0, lt=1)
    beta2: float = _f(0.95, "Adam beta2", ge=0, lt=1)
    eps: float = _f(1e-8, "Adam epsilon", gt=0)
    grad_clip: float = _f(1.0, "clip the global gradient norm to this; 0 disables", ge=0)
    schedule: str = _f("cosine", "cosine | wsd (warmup-stable-decay: the peak until the last decay_fraction)")
    decay_fraction: float = _f(0.2, "schedule=wsd: the share of the steps (rounded) that decays at the end", gt=0, le=1)
    decay_shape: str = _f("1-sqrt", "schedule=wsd: linear | 1-sqrt (lr falls as 1 - sqrt of the decay's progress)")

    def __post_init__(self) -> None:
        _check_fields(self)
        _one_of(self.schedule, "optim.schedule", ("cosine", "wsd"))
        _one_of(self.decay_shape, "optim.decay_shape", ("linear", "1-sqrt"))


@dataclass(frozen=True)
class TrainConfig:
    """The token budget and the loop."""

    tokens: int = _f(2_000_000, "training tokens D; decides the number of steps (tokens // (batch_size*seq_len))", ge=1)
    batch_size: int = _f(32, "global batch size in sequences", ge=1)
    microbatches: int = _f(
        0,
        "gradient accumulation: split each batch into this many microbatches (0: auto, "
        "about 1024 tokens per device each on a CPU, where smaller activations stay in "
        "cache; 1 elsewhere)",
        ge=0,
    )
    seed: int = _f(0, "seed of the initialisation, the data order and dropout (0 to 2**32-1)", ge=0, le=SEED_MAX)
    eval_every: int = _f(250, "evaluate on the validation batches every this many steps (and at the end)", ge=1)
    eval_batches: int = _f(16, "fixed validation batches per evaluation", ge=1)
    log_every: int = _f(10, "write a metrics.jsonl line every this many steps", ge=1)
    skip_nonfinite: int = _f(
        0, "skip up to this many steps with a non-finite loss before calling the run diverged", ge=0
    )
    progress: bool = _f(
        True, "show on stderr the platform, each compile waited for, a line per evaluation and a progress bar"
    )
    objective: str = _f(
        "causal",
        "pretraining objective (docs/objectives.md): causal (next-token prediction) | mlm (masked "
        "LM: bidirectional attention, train.mask_rate of the tokens masked 80/10/10 as in BERT, "
        "loss on them) | prefix_denoise (span corruption, decoder-only: a bidirectional prefix "
        "holding the text with spans replaced by sentinels, then the spans predicted causally)",
    )
    mask_rate: float = _f(0.15, "objective=mlm: share of the tokens chosen for prediction", gt=0, lt=1)
    corrupt_rate: float = _f(0.15, "objective=prefix_denoise: share of the text's tokens in corrupt spans", gt=0, lt=1)
    mean_span: float = _f(3.0, "objective=prefix_denoise: mean length of a corrupted span in tokens", ge=1)

    def __post_init__(self) -> None:
        _check_fields(self)
        _check(
            self.microbatches == 0 or self.batch_size % self.microbatches == 0,
            f"train.batch_size ({self.batch_size}) must be divisible by train.microbatches ({self.microbatches})",
        )
        _one_of(self.objective, "train.objective", OBJECTIVES)


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh axes; one of them may be -1 to take the remaining devices."""

    data: int = _f(-1, "data-parallel axis size", ge=-1)
    fsdp: int = _f(1, "fully-sharded data-parallel axis size (parameters and optimizer state split)", ge=-1)
    model: int = _f(1, "tensor-parallel axis size (heads, MLP hidden and vocab split)", ge=-1)
    stage: int = _f(
        1,
        "pipeline stages: the stacked layers (model.scan_layers) split over this axis, in order (docs/pipeline.md)",
        ge=1,
    )
    pipeline_microbatches: int = _f(
        0, "mesh.stage > 1: microbatches each batch flows through the stages in (0: mesh.stage)", ge=0
    )
    pipeline_schedule: str = _f(
        "gpipe",
        "mesh.stage > 1: gpipe (each stage holds n_layer/stage consecutive layers) | circular (each microbatch "
        "goes round the stages mesh.pipeline_repeats times, a smaller group of layers per visit)",
    )
    pipeline_repeats: int = _f(0, "pipeline_schedule=circular: rounds per microbatch (0: n_layer / stage)", ge=0)

    def __post_init__(self) -> None:
        _check_fields(self)
        sizes = (self.data, self.fsdp, self.model)
        _check(all(s == -1 or s >= 1 for s in sizes), f"mesh axes must be >= 1 or -1, got {sizes}")
        _check(sizes.count(-1) <= 1, "at most one mesh axis may be -1")
        _one_of(self.pipeline_schedule, "mesh.pipeline_schedule", ("gpipe", "circular"))
        _check(
            self.pipeline_schedule == "circular" or self.pipeline_repeats <= 1,
            "mesh.pipeline_repeats > 1 needs mesh.pipeline_schedule circular",
        )


@dataclass(frozen=True)
class DistConfig:
    """Multi-process (multi-host) setup; also read from JAX's usual environment variables."""

    coordinator: str = _f("", "HOST:PORT of process 0; empty means a single process (or the environment's)")
    num_processes: int = _f(1, "number of processes", ge=1)
    process_id: int = _f(0, "this process's index", ge=0)

    def __post_init__(self) -> None:
        _check_fields(self)
        _check(0 <= self.process_id < self.num_processes, "dist.process_id must be in [0, dist.num_processes)")


@dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints under OUT/checkpoints."""

    every_steps: int = _f(500, "save every this many steps (0: only by time and at the end)", ge=0)
    every_seconds: float = _f(0.0, "also save when this many seconds passed since the last save (0: off)", ge=0)
    keep: int = _f(2, "keep the last this many checkpoints", ge=1)
    keep_best: bool = _f(False, "also keep the checkpoint with the best validation loss")
    async_save: bool = _f(
        True,
        "save in a background thread, overlapping training (a run waits for its last "
        "save before it reports completion)",
    )

    def __post_init__(self) -> None:
        _check_fields(self)


@dataclass(frozen=True)
class ResumeConfig:
    """How a rerun treats existing checkpoints."""

    allow_config_change: bool = _f(False, "resume even if model/optimizer/data settings changed")
    restart_if_corrupt: bool = _f(False, "start from scratch when no checkpoint can be restored")

    def __post_init__(self) -> None:
        _check_fields(self)


@dataclass(frozen=True)
class DebugConfig:
    """Fault injection for tests: not part of a run's identity, not listed by --help."""

    inject_nan_step: int = _f(-1, "report a NaN loss at this step and skip its update (-1: never)", ge=-1)

    def __post_init__(self) -> None:
        _check_fields(self)


@dataclass(frozen=True)
class LogConfig:
    """Experiment trackers beside metrics.jsonl: TensorBoard event files and Weights & Biases
    (pip install 'scaling[tracking]'). Not part of a run's identity: changing them never
    stops a run from resuming."""

    tensorboard: bool = _f(
        False,
        "write TensorBoard event files: OUT/tensorboard for one run, SWEEP_OUT/tensorboard/<run_id> "
        "for a sweep's runs (with log.dir: DIR/tensorboard/<name>)",
    )
    wandb: bool = _f(False, "log to Weights & Biases (project, group, name and mode below)")
    project: str = _f("scaling", "W&B project")
    entity: str = _f("", "W&B entity (user or team); '' is the account's default")
    group: str = _f("", "W&B group of the run; '' is the sweep's name for a sweep's runs, none for one run")
    name: str = _f("", "the run's name in the trackers; '' is the run directory's name (a sweep's run id)")
    tags: str = _f("", "W&B tags, separated by commas")
    mode: str = _f(
        "",
        "W&B mode: online | offline (files only; upload later with wandb sync) | disabled; '' is "
        "wandb's own default (WANDB_MODE, else online)",
    )
    dir: str = _f("", "directory of the trackers' files; '' is the run directory (a sweep's runs: the sweep directory)")

    def __post_init__(self) -> None:
        _check_fields(self)
        ok = ("", "online", "offline", "disabled")
        _check(self.mode in ok, f"log.mode must be online, offline or disabled, got {self.mode!r}")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def identity_hash(self) -> str:
        """Hash of what a checkpoint depends on (model, optimizer, data, budget, seed)."""
        d = {k: v for k, v in self.to_dict().items() if k in RESUME_IDENTITY_SECTIONS}
        for key in RESUME_SAFE_FIELDS:
            sec, name = key.split(".")
            d.get(sec, {}).pop(name, None)
        if self.optim.schedule == "cosine":  # the wsd fields change nothing (and older runs hash as before)
            d["optim"] = {k: v for k, v in d["optim"].items() if k not in ("schedule", "decay_fraction", "decay_shape")}
        if not self.model.scan_layers:  # likewise the looped layout, the default
            d["model"].pop("scan_layers", None)
        for name in OBJECTIVE_FIELDS[self.train.objective]:  # fields the objective does not read
            d["train"].pop(name, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# Sections whose change makes an existing checkpoint a different run; within them, fields
# that are safe to change on resume.
RESUME_IDENTITY_SECTIONS = ("model", "data", "optim", "train")
RESUME_SAFE_FIELDS = (
    "model.attention",
    "model.dense",
    "model.remat",
    "train.eval_every",
    "train.eval_batches",
    "train.log_every",
    "train.progress",
    "train.skip_nonfinite",
)
