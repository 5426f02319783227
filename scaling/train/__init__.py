"""Training: the optimizer, the step, microbatching, the compiled programs of a shape, the run.

    optimizer    AdamW with warmup and cosine or warmup-stable-decay schedules, the weight-decay mask
    step         the train and evaluation steps as free functions, the train state
    microbatch   gradient accumulation over microbatches
    programs     ShapePrograms: the compiled init, train and eval programs of one shape
    xla_options  the compile options of those programs (the dot library on a CPU)
    loop         Run: plan, restore or initialise, train, evaluate; steps_for
    summary      the summary.json record of a finished run
    trained      load_run: a trained run's config and parameters from its checkpoints
    metrics      metrics.jsonl lines
    trackers     TensorBoard and Weights & Biases beside metrics.jsonl (the log section)
    progress     what a run shows on stderr: platform, compiles, a line per evaluation, the bar
    distributed  joining a multi-process run

The names below are importable from ``scaling.train``; new code imports from the modules.
"""

from scaling.evaluation import cross_entropy
from scaling.train.distributed import setup_distributed
from scaling.train.loop import Run, steps_for
from scaling.train.metrics import MetricsLogger, truncate_metrics
from scaling.train.microbatch import loss_and_grads
from scaling.train.optimizer import decay_mask, lr_schedule, make_optimizer, scale_by_lr_schedule
from scaling.train.programs import (
    AUTO_MICROBATCH_TOKENS,
    ShapePrograms,
    Trainer,
    resolve_microbatches,
    shape_fields,
    short_gil_switch,
)
from scaling.train.step import RunArgs, TrainState, eval_step, train_step
from scaling.train.trained import load_run

__all__ = [
    "AUTO_MICROBATCH_TOKENS",
    "MetricsLogger",
    "Run",
    "RunArgs",
    "ShapePrograms",
    "TrainState",
    "Trainer",
    "cross_entropy",
    "decay_mask",
    "eval_step",
    "load_run",
    "loss_and_grads",
    "lr_schedule",
    "make_optimizer",
    "resolve_microbatches",
    "scale_by_lr_schedule",
    "setup_distributed",
    "shape_fields",
    "short_gil_switch",
    "steps_for",
    "train_step",
    "truncate_metrics",
]
