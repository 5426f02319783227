"""One training run: plan and check, restore or initialise, train, evaluate, summarise.

The loop dispatches step t before fetching step t-1's metrics, so the host never waits on
the device. Evaluation runs every ``train.eval_every`` steps and at the end, checkpoints are
saved as ``checkpoint.*`` says, and a non-finite loss beyond ``train.skip_nonfinite`` ends the
run as diverged, keeping the last good checkpoint.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from scaling import flops as flops_lib
from scaling import run_dir as run_dir_lib
from scaling import sharding as sh
from scaling.checkpoint import Checkpointer, CorruptCheckpoints
from scaling.config import Config
from scaling.data import Batches, TokenSplits, curriculum, load_tokens
from scaling.data.curriculum_scores import ModelScoring
from scaling.errors import UsageError
from scaling.evaluation import val_bits_per_byte
from scaling.model import build_cpu_kernels, check_attention, check_dense
from scaling.run_dir import RunDirectory
from scaling.train import branch as branch_lib
from scaling.train import trackers as trackers_lib
from scaling.train.branch import Branch
from scaling.train.metrics import MetricsLogger, truncate_metrics
from scaling.train.programs import ShapePrograms
from scaling.train.progress import Progress
from scaling.train.step import TrainState
from scaling.train.summary import run_summary


def steps_for(cfg: Config) -> int:
    """Optimizer steps of a run: ``train.tokens`` in whole batches."""
    per_step = cfg.train.batch_size * cfg.model.seq_len
    if cfg.train.tokens < per_step:
        raise UsageError(
            f"train.tokens ({cfg.train.tokens}) is fewer than one batch (train.batch_size * model.seq_len = {per_step})"
        )
    return cfg.train.tokens // per_step


def _with_vocab(cfg: Config, n_vocab: int) -> Config:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=n_vocab))


class Run:
    """One training run into ``out``: plans and checks everything before any compute.

    The run owns its directory (:class:`~scaling.run_dir.RunDirectory`): process 0 holds
    ``out/.lock`` from construction until ``run`` (or ``close``) ends. A directory holding
    another config's run is refused unless ``overwrite`` (start over: the old config,
    metrics, summary and checkpoints are removed first) or ``resume.allow_config_change``.
    ``config.yaml`` is written only once the state is known (restored or freshly
    initialised), so a failed resume leaves the directory as it was. A write that fails ends
    the run with one line; the last committed checkpoint stays, and rerunning resumes from it.

    ``trainers`` (a dict the caller keeps, keyed by ``ShapePrograms.program_key``) lets runs of
    the same shape share compiled programs: a sweep passes the same dict to all its runs.

    ``branch_from`` (a :class:`~scaling.train.branch.Branch` or ``(parent_dir, step)``) starts
    the run, when it has no checkpoint of its own, from the parent run's checkpoint at that
    step: a wsd cooldown branch (checked before any compute, :mod:`scaling.train.branch`).
    ``keep_steps``: steps at which this run saves a checkpoint that is never pruned (its
    branches' starting points). ``sweep``: the sweep the run belongs to (its trackers group
    the run under it, :mod:`scaling.train.trackers`). ``splits``: ``load_tokens(cfg.data)``
    when the caller has it (a sweep reads and hashes the corpus once for all its runs).
    """

    OUTPUTS = run_dir_lib.OUTPUTS

    def __init__(
        self,
        cfg: Config,
        out: Path,
        trainers: dict | None = None,
        *,
        overwrite: bool = False,
        model_scoring: ModelScoring | None = None,
        branch_from: Branch | tuple[str | Path, int] | None = None,
        keep_steps: tuple[int, ...] = (),
        sweep: trackers_lib.SweepGroup | None = None,
        splits: TokenSplits | None = None,
    ):
        trackers_lib.check_available(cfg.log)
        self.out, self.sweep = Path(out), sweep
        if branch_from is not None and not isinstance(branch_from, Branch):
            branch_from = Branch(Path(branch_from[0]), int(branch_from[1]))
        self.branch: Branch | None = branch_from
        self._parent_cfg: Config | None = None
        self.trainers = trainers
        self.splits = load_tokens(cfg.data) if splits is None else splits
        if cfg.model.vocab_size == 0:
            cfg = _with_vocab(cfg, self.splits.n_vocab)
        elif cfg.model.vocab_size < self.splits.n_vocab:
            raise UsageError(
                f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the tokenizer's {self.splits.n_vocab} ids"
            )
        self.cfg = cfg
        self.steps = steps_for(cfg)
        self.keep_steps = tuple(sorted({int(s) for s in keep_steps}))
        if any(not 1 <= s <= self.steps for s in self.keep_steps):
            raise UsageError(f"keep_steps {list(self.keep_steps)} must lie in [1, {self.steps}] (the run's steps)")
        if self.branch is not None:
            branch_lib.check_schedule(cfg, self.steps, self.branch)
        shape = sh.mesh_shape(cfg.mesh, jax.device_count())
        sh.check_mesh_fits(shape, cfg.model, cfg.train.batch_size, cfg.train.microbatches, cfg.mesh)
        n_devices = math.prod(shape.values())
        build_cpu_kernels(cfg.model, n_devices)
        check_attention(cfg.model)
        check_dense(cfg.model, n_devices)
        self.mesh_shape = shape
        self.mesh = sh.make_mesh(shape)
        sampler = (
            curriculum.make_sampler(cfg, self.splits, self.steps, model_scoring=model_scoring)
            if cfg.data.curriculum
            else None
        )
        self.batches = Batches(self.splits, cfg.model.seq_len, cfg.train.batch_size, cfg.train.seed, sampler=sampler)
        self.rows = sh.process_batch_rows(self.mesh, cfg.train.batch_size)
        self.is_main = jax.process_index() == 0
        self.dir = RunDirectory(self.out, cfg, is_main=self.is_main)
        self._closed = False
        try:
            self.dir.hold()
            if overwrite:
                self.dir.start_over()
                if jax.process_count() > 1:  # the others list checkpoints only once they are gone
                    multihost_utils.sync_global_devices("scaling.train.start_over")
            else:
                self.dir.check_config()
            with self.dir.writing("open the checkpoints of", checkpointer=True):
                self.ckpt = Checkpointer(
                    run_dir_lib.checkpoints_path(self.out), cfg.checkpoint, keep_steps=self.keep_steps
                )
            self._check_resumable()
            if self.branch is not None and not self.ckpt.steps():
                self._parent_cfg = self._check_parent()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Finish the checkpoint save in flight and release the directory (idempotent). After a
        write failed inside orbax, its checkpointer is abandoned instead (its writer threads
        would wait minutes for each other); after a write failed elsewhere, the save in flight
        is waited for (so that no writer thread outlives the run) and whatever it meets in
        the same directory is not reported again."""
        if self._closed:
            return
        self._closed = True
        try:
            if not hasattr(self, "ckpt") or self.dir.checkpointer_broken:
                return
            if not self.dir.write_failed:
                with self.dir.writing("finish a checkpoint of", checkpointer=True):
                    self.ckpt.close()
                return
            try:
                self.ckpt.close()
            except (OSError, ValueError) as e:
                if not run_dir_lib.is_write_error(e):
                    raise
        finally:
            self.dir.release()

    def _check_resumable(self) -> None:
        """Before any compute: refuse when the latest checkpoint's metadata names another config."""
        steps = self.ckpt.steps()
        if not steps or self.cfg.resume.allow_config_change:
            return
        meta = self.ckpt.read_meta(steps[-1])
        if meta:
            self.dir.check_identity(meta, steps[-1])

    def _check_parent(self) -> Config:
        return branch_lib.check_parent(self.cfg, self.steps, self.branch, self.out, steps_for)

    def _restore_or_init(self, programs: ShapePrograms) -> TrainState:
        """The latest restorable state (and its recent losses and earlier wall time), or for a
        branch without checkpoints of its own its parent's state at the branch point, or a
        fresh one; a restored checkpoint of another config is refused."""
        self._recent: collections.deque[float] = collections.deque(maxlen=10)
        self._prior_wall_s, self._init_s, self._resume_meta = 0.0, 0.0, {}
        self._branched = self.branch  # where the run started from, also when it resumes
        try:
            restored = self.ckpt.restore_latest(programs.abstract_state)
        except CorruptCheckpoints:
            if not self.cfg.resume.restart_if_corrupt:
                raise
            print(f"warning: starting {self.out} from scratch (no restorable checkpoint)", file=sys.stderr)
            restored = None
        if restored is None and self.branch is not None:
            parent = self._parent_cfg or self._check_parent()
            state, meta = branch_lib.restore(parent, self.branch, programs.abstract_state)
            self._recent.extend(meta.get("recent_losses", []))  # those of a run from scratch at this step
            return state
        if restored is None:
            t0 = time.time()
            state = programs.init_state()
            self._init_s = time.time() - t0
            return state
        state, meta, step = restored
        self.dir.check_identity(meta, step)
        self._resume_meta = meta
        self._recent.extend(meta.get("recent_losses", []))
        self._prior_wall_s = float(meta.get("wall_s", 0.0))
        if meta.get("parent") is not None:
            self._branched = Branch(Path(meta["parent"]), int(meta["stable_steps"]))
        return state

    def trainer(self) -> ShapePrograms:
        """This run's programs: sharing the compiled programs of an earlier run of its shape in
        ``trainers``, or new ones (remembered there)."""
        if self.trainers is None:
            return ShapePrograms(self.cfg, self.mesh, self.steps)
        key = ShapePrograms.program_key(self.cfg, self.mesh)
        shared = self.trainers.get(key)
        if shared is None:  # (setdefault: a compile-ahead thread may be adding one meanwhile)
            shared = self.trainers.setdefault(key, ShapePrograms(self.cfg, self.mesh, self.steps))
        return shared.for_run(self.cfg, self.steps)

    def run(self) -> dict:
        """Train (or resume) to the end, evaluate, write summary.json; returns the summary. The
        directory is released at the end (``close``)."""
        t0 = time.time()
        with self.dir.quiet_write_errors():
            try:
                programs = self.trainer()
                # the programs not yet compiled (by an earlier run of the shape or a sweep's
                # compile-ahead pool) build on a thread of their own: the train step while this
                # thread initialises, evaluation and the FLOP count while it trains
                ahead = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="compile")
                try:
                    programs.compile_ahead(ahead)
                    return self._train(programs, t0)
                finally:
                    ahead.shutdown(wait=False, cancel_futures=True)
            finally:
                self.close()

    def _save(self, step: int, state: TrainState, meta: dict) -> None:
        self.dir.probe_checkpoints(self.ckpt.directory)
        with self.dir.writing("save a checkpoint of", checkpointer=True):
            self.ckpt.save(step, state, meta)

    def _train(self, programs: ShapePrograms, t0: float) -> dict:
        cfg = self.cfg
        show = Progress.of_run(self.steps, self.out.name, cfg.train.progress and self.is_main, self.sweep is not None)
        self._compile_shared = programs.step_compiled
        if not self._compile_shared:
            show.compiling(cfg.model)
        state = self._restore_or_init(programs)
        start = int(jax.device_get(state.step))
        self.dir.write_config()
        metrics_path = self.out / run_dir_lib.METRICS
        if self.is_main:
            with self.dir.writing():
                truncate_metrics(metrics_path, start)
        compile_t0 = time.time()
        programs.compile_step()
        # the time this run waited for its init and train step to compile (~0 when compiled ahead)
        compile_s = self._init_s + time.time() - compile_t0
        if not self._compile_shared:
            show.compiled(compile_s)
        # process 0 tracks; a resumed W&B run continues under the id its checkpoint kept
        meta = self._resume_meta if self.is_main else None
        with show, trackers_lib.tracking(cfg, self.out, start, sweep=self.sweep, resume_meta=meta) as trackers:
            summary = self._loop(programs, state, start, show, trackers, t0, compile_s)
            trackers_lib.finish(trackers, summary)
        return summary

    def _loop(self, programs, state, start, show: Progress, trackers: list, t0: float, compile_s: float) -> dict:
        cfg, tokens_per_step = self.cfg, self.cfg.train.batch_size * self.cfg.model.seq_len
        fpt = flops_lib.all_flops_per_token(cfg.model)
        logger = MetricsLogger(
            self.out / run_dir_lib.METRICS, self.is_main, fpt, tokens_per_step, cfg.train.log_every, tuple(trackers)
        )
        show.begin(start)
        self._bad, status, val, pending = 0, "completed", None, None
        lo, hi = self.rows
        step = start
        while step < self.steps:
            batch = sh.make_global_batch(self.mesh, self.batches.train_batch(step, lo, hi), cfg.train.batch_size)
            state, metrics = programs.train_step(state, batch)  # dispatch step t ...
            step += 1
            if pending is not None and self._handle(pending, logger, show):  # ... then fetch step t-1
                status = "diverged"
                break
            pending = (step, metrics)
            final = step == self.steps
            eval_due = step % cfg.train.eval_every == 0 or final
            ckpt_due = self.ckpt.due(step, final, steps_left=self.steps - step)
            if eval_due or ckpt_due:
                diverged, pending = self._handle(pending, logger, show), None
                if diverged:
                    status = "diverged"
                    break
                if eval_due:
                    val = self.evaluate(programs, state.params)
                    logger.add_val(step, val)
                    recent = self._recent[-1] if self._recent else None
                    show.evaluated(step, recent, val[0], logger.mean_tokens_per_s, tokens_per_step)
                with self.dir.writing():
                    logger.flush()
                if ckpt_due:
                    self._save(
                        step,
                        state,
                        {
                            "config_hash": cfg.identity_hash(),
                            "val_loss": None if val is None else val[0],
                            "recent_losses": list(self._recent),
                            "wall_s": self._prior_wall_s + time.time() - t0,
                            **self._branch_meta(),
                            **trackers_lib.tracker_meta(trackers),
                        },
                    )
        with self.dir.writing():
            logger.flush()
        with self.dir.writing("save a checkpoint of", checkpointer=True):
            self.ckpt.wait()
        if val is None and status == "completed":
            val = self.evaluate(programs, state.params)
        xla_step = programs.xla_flops_per_step()  # counted by the compile-ahead thread meanwhile
        wall_s = self._prior_wall_s + time.time() - t0  # earlier processes' time up to their last checkpoint
        summary = run_summary(
            cfg,
            self.steps,
            state,
            status=status,
            val=val,
            flops_per_token=fpt,
            xla_flops_per_step=xla_step,
            compile_s=compile_s,
            compile_shared=self._compile_shared,
            wall_s=wall_s,
            tokens_per_s=logger.mean_tokens_per_s,
            recent_losses=list(self._recent),
            branched=self._branched,
            batches=self.batches,
            mesh_shape=self.mesh_shape,
        )
        self.dir.write_summary(json.dumps(summary, indent=1))
        return summary

    def _branch_meta(self) -> dict:
        """The branch point in a checkpoint's meta and the summary (parent: its run directory)."""
        b = self._branched
        return {"parent": None if b is None else str(b.parent), "stable_steps": None if b is None else b.step}

    def _handle(self, pending, logger: MetricsLogger, show: Progress) -> bool:
        """Log one step's fetched metrics; True when the run has diverged."""
        step, metrics = pending
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        show.update(step, m["loss"], logger.tokens_per_s)
        if math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]):
            logger.log(step, m, force=step == self.steps)
            self._recent.append(m["loss"])
            return False
        self._bad += 1
        logger.log(step, m, force=True)
        if self._bad > self.cfg.train.skip_nonfinite:
            print(
                f"error: run diverged at step {step}: non-finite loss; the last good checkpoint is kept",
                file=sys.stderr,
            )
            return True
        print(
            f"warning: non-finite loss at step {step}: update skipped ({self._bad} of "
            f"{self.cfg.train.skip_nonfinite} allowed)",
            file=sys.stderr,
        )
        return False

    def evaluate(self, programs: ShapePrograms, params) -> tuple[float, float]:
        """(mean validation loss in nats per token, bits per byte) on the fixed batches."""
        n, (lo, hi) = self.cfg.train.eval_batches, self.rows
        loss = programs.mean_eval_loss(params, np.stack(list(self.batches.val_batches(n, lo, hi))))
        return loss, val_bits_per_byte(self.cfg, self.batches, n, loss)
