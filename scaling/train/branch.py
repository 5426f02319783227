"""Cooldown branches (Hägele et al. 2024): a wsd run that starts from another run's checkpoint.

A warmup-stable-decay run's rates before its decay start are those of any longer run of the
same config (:func:`scaling.schedule.decay_start`), and a step's data and dropout
depend only on the seed and the step: so the state of a long run at step S, trained on with a
shorter ``train.tokens``, is bit for bit the shorter run trained from scratch, as long as S is
at or before the shorter run's decay start. The branch trains only its last steps.

A branch is named by ``PARENT_RUN_DIR@STEP``. Before any compute, :func:`check_parent` makes
sure that the parent's config equals the branch's but for ``train.tokens``, that the schedule
is wsd (and no curriculum, whose data order depends on the run's length), that STEP is at or
before both runs' decay starts, and that the parent has a checkpoint at STEP that verifies
against its manifest. The parent's directory is only read. Once the branch has checkpoints
of its own it resumes from them, never the parent again.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling import run_dir as run_dir_lib
from scaling.checkpoint import Checkpointer
from scaling.config import Config
from scaling.errors import UsageError
from scaling.schedule import decay_start


@dataclass(frozen=True)
class Branch:
    """Where a branch starts: the parent's run directory and the step of its checkpoint."""

    parent: Path
    step: int

    @property
    def name(self) -> str:
        """The parent's run directory name (results.csv's ``parent``)."""
        return self.parent.name

    def describe(self) -> str:
        return f"{self.parent}@{self.step}"


def parse_branch_from(text: str) -> Branch:
    """``PARENT_RUN_DIR@STEP`` -> Branch; UsageError on anything else."""
    m = re.fullmatch(r"(.+)@(\d+)", text.strip()) if isinstance(text, str) else None
    if not m or int(m.group(2)) < 1:
        raise UsageError(f"--branch-from expects PARENT_RUN_DIR@STEP with STEP >= 1, got {text!r}")
    return Branch(Path(m.group(1)), int(m.group(2)))


def _as_branch(cfg: Config, tokens: int) -> Config:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, tokens=tokens))


def check_schedule(cfg: Config, steps: int, branch: Branch) -> None:
    """What a branch needs of its own config: a wsd schedule without a curriculum, and a branch
    point at or before its decay start."""
    where = f"--branch-from {branch.describe()}"
    if cfg.optim.schedule != "wsd":
        raise UsageError(f"{where}: a branch needs optim.schedule wsd, got {cfg.optim.schedule}")
    if cfg.data.curriculum:
        raise UsageError(f"{where}: a branch cannot use a curriculum (its data order depends on the run's length)")
    own = decay_start(cfg.optim, steps)
    if branch.step > own:
        raise UsageError(f"{where}: step {branch.step} is after this run's decay start ({own} of {steps} steps)")


def check_parent(cfg: Config, steps: int, branch: Branch, out: Path, steps_of: Callable[[Config], int]) -> Config:
    """Everything :func:`restore` needs, checked before any compute (UsageError, one line):
    the parent's config (returned) equals ``cfg`` but for train.tokens, ``branch.step`` is at
    or before both runs' decay starts (``steps_of``: a config's number of steps), and the
    parent's checkpoint there verifies."""
    where = f"--branch-from {branch.describe()}"
    check_schedule(cfg, steps, branch)
    if not branch.parent.is_dir():
        raise UsageError(f"{where}: no run directory {branch.parent}")
    if branch.parent.resolve() == Path(out).resolve():
        raise UsageError(f"{where}: the parent is this run's own directory")
    try:
        parent = run_dir_lib.read_config(branch.parent)
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None
    if _as_branch(parent, cfg.train.tokens).identity_hash() != cfg.identity_hash():
        raise UsageError(
            f"{where}: the parent's config differs from this run's in more than train.tokens "
            f"({run_dir_lib.first_difference(parent, cfg, ignore=('train.tokens',))})"
        )
    parent_steps = steps_of(parent)
    theirs = decay_start(parent.optim, parent_steps)
    if branch.step > theirs:
        raise UsageError(
            f"{where}: step {branch.step} is after the parent's decay start ({theirs} of {parent_steps} steps)"
        )
    ckpt = Checkpointer(run_dir_lib.checkpoints_path(branch.parent), parent.checkpoint, read_only=True)
    try:
        if branch.step not in ckpt.steps():
            raise UsageError(
                f"{where}: the parent has no checkpoint at step {branch.step} (it has "
                f"{ckpt.steps() or 'none'}); train it with that step kept"
            )
        problem = ckpt.problem(branch.step)
        if problem is not None:
            raise UsageError(f"{where}: the parent's checkpoint {branch.step} is corrupt ({problem})")
        meta = ckpt.read_meta(branch.step) or {}
    finally:
        ckpt.close()
    if meta.get("config_hash") != parent.identity_hash():
        raise UsageError(f"{where}: the parent's checkpoint {branch.step} is of another config than its config.yaml")
    return parent


def restore(parent: Config, branch: Branch, abstract_state: Any) -> tuple[Any, dict]:
    """(state, meta) of the parent's checkpoint at the branch point, read without writing there."""
    ckpt = Checkpointer(run_dir_lib.checkpoints_path(branch.parent), parent.checkpoint, read_only=True)
    try:
        return ckpt.restore_step(branch.step, abstract_state)
    finally:
        ckpt.close()
