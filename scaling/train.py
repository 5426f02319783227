"""Train state, sharded init, jitted train/eval steps and the training loop.

The state is built abstractly (``eval_shape``), its shardings come from the logical rule
table, and a jitted init with ``out_shardings`` materialises it already sharded. The
train step is compiled once ahead of time with explicit in/out shardings and donates the
state; XLA's cost analysis of the step is the ``flops_xla`` cross-check. The loop dispatches step
t before fetching step t-1's metrics, so the host never waits on the device.

What differs between runs of one shape (the schedule's length, the seed, the NaN-injection
step) is an argument of the compiled step, not a constant in it: runs of the same model,
optimizer, batch and mesh share one compiled init, train and eval step
(``Trainer.for_run``; a sweep keeps one Trainer per shape, ``Run(..., trainers=)``).

Each compiled program is built once, by whichever thread asks first: ``Trainer.compile_ahead``
queues them on a thread pool, where XLA compiles without holding the GIL, so a run's
evaluation and FLOP-count programs (and a sweep's next shapes) compile while it trains.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from scaling import config as config_lib
from scaling import flops as flops_lib
from scaling import io as run_io
from scaling import sharding as sh
from scaling.checkpoint import Checkpointer, CorruptCheckpoints, abstract_with_shardings
from scaling.config import Config, OptimConfig
from scaling.data import Batches, bits_per_byte, curriculum, load_tokens
from scaling.errors import UsageError
from scaling.model import GPT, check_attention, training_attention
from scaling.model import attention as attn_lib


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def lr_schedule(cfg: OptimConfig, total_steps):
    """Linear warmup to the peak over ``warmup_steps`` (nanoGPT's (s+1)/(w+1)), then cosine
    decay that reaches ``min_lr_ratio * lr`` exactly at the last step (s = total_steps-1).
    ``total_steps`` may be a traced integer (one compiled step serves every schedule length)."""
    total_steps = jnp.asarray(total_steps, jnp.int32)
    warmup = jnp.minimum(cfg.warmup_steps, jnp.maximum(total_steps - 1, 0))
    decay = jnp.maximum(total_steps - 1 - warmup, 1)
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        warm = peak * (s + 1) / (warmup + 1)
        frac = jnp.clip((s - warmup) / decay, 0.0, 1.0)
        cos = floor + 0.5 * (peak - floor) * (1 + jnp.cos(jnp.pi * frac))
        return jnp.where(s < warmup, warm, cos)

    return schedule


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices only: not on norms, biases or embeddings."""
    def keep(path, _):
        names = [getattr(k, "key", str(k)) for k in path]
        return names[-1] == "kernel"
    return jax.tree_util.tree_map_with_path(keep, params)


def scale_by_lr_schedule(cfg: OptimConfig) -> optax.GradientTransformationExtraArgs:
    """optax's ``scale_by_learning_rate(lr_schedule(cfg, total_steps))`` (the same state, a
    ``ScaleByScheduleState`` counting updates) with ``total_steps`` passed to ``update``."""

    def init(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, *, total_steps, **extra_args):
        del params, extra_args
        step_size = -lr_schedule(cfg, total_steps)(state.count)
        updates = jax.tree.map(lambda g: jnp.array(step_size, dtype=g.dtype) * g, updates)
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformationExtraArgs:
    """AdamW (optax.adamw's chain) after global-norm clipping; ``update`` takes ``total_steps=``."""
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip else []
    parts.append(optax.chain(optax.scale_by_adam(b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps),
                             optax.add_decayed_weights(cfg.weight_decay, decay_mask),
                             scale_by_lr_schedule(cfg)))
    return optax.chain(*parts)


def cross_entropy(model: GPT, params: Any, batch_bt: jax.Array, *, train: bool = False, rng=None) -> jax.Array:
    """Mean next-token cross-entropy (nats) of windows of seq_len + 1 tokens."""
    x_bt, y_bt = batch_bt[:, :-1], batch_bt[:, 1:]
    rngs = {"dropout": rng} if rng is not None else None
    logits_btv = model.apply({"params": params}, x_bt, train=train, rngs=rngs)
    return optax.softmax_cross_entropy_with_integer_labels(logits_btv, y_bt).mean()


def shape_fields(cfg: Config) -> tuple:
    """The settings a compiled step depends on (with the mesh): runs equal in them share it."""
    return (cfg.model, cfg.optim, cfg.train.batch_size, cfg.train.microbatches)


AUTO_MICROBATCH_TOKENS = 1024  # per device, on a CPU: 4 x 256-token rows measured best on 2 cores


def resolve_microbatches(cfg: Config, data_shards: int, backend: str) -> int:
    """Microbatches per step: ``train.microbatches``, or for 0 (auto) on a CPU the most that keep
    at least AUTO_MICROBATCH_TOKENS tokens (or the whole local batch) per device each, 1 elsewhere.

    At 256 x 6, batch 16 x 256 on 2 cores, 4 microbatches reached 65.2% MFU against 54.9% for
    one (``python -m benchmarks.throughput --shapes 256x6 [--microbatches 1]``), and with the C++
    attention kernel 75.6% against 64.6% (2: 72.2%, 8: 74.7%): the activations of a smaller
    microbatch stay in cache.
    """
    if cfg.train.microbatches or backend != "cpu":
        return cfg.train.microbatches or 1
    local = cfg.train.batch_size // data_shards
    rows = min(local, max(1, AUTO_MICROBATCH_TOKENS // cfg.model.seq_len))
    return max(m for m in range(1, local + 1) if local % m == 0 and local // m >= rows)


def steps_for(cfg: Config) -> int:
    per_step = cfg.train.batch_size * cfg.model.seq_len
    if cfg.train.tokens < per_step:
        raise UsageError(f"train.tokens ({cfg.train.tokens}) is fewer than one batch "
                         f"(train.batch_size * model.seq_len = {per_step})")
    return cfg.train.tokens // per_step


_switch = {"lock": threading.Lock(), "users": 0, "saved": 0.005}


@contextlib.contextmanager
def short_gil_switch(interval_s: float = 2e-4):
    """While a thread traces programs beside a training loop, make Python hand the GIL over
    every ``interval_s`` instead of every 5 ms (its default): otherwise the loop, which lets go
    of the GIL at each wait on the device, waits up to 5 ms to get it back, several times a
    step. ``python -m benchmarks.gil_switch`` on 2 CPU cores: a 4.5 ms step took 154 ms beside
    a tracing thread with the default interval, 8.4 ms with 0.2 ms."""
    with _switch["lock"]:
        if _switch["users"] == 0:
            _switch["saved"] = sys.getswitchinterval()
            sys.setswitchinterval(min(interval_s, _switch["saved"]))
        _switch["users"] += 1
    try:
        yield
    finally:
        with _switch["lock"]:
            _switch["users"] -= 1
            if _switch["users"] == 0:
                sys.setswitchinterval(_switch["saved"])


class Trainer:
    """The model, its mesh and shardings, and the compiled init/train/eval functions of one
    shape; the run's own values (schedule length, seed, NaN-injection step) are arguments."""

    def __init__(self, cfg: Config, mesh: jax.sharding.Mesh, total_steps: int):
        self.cfg, self.mesh, self.total_steps = cfg, mesh, total_steps
        self.key = self.program_key(cfg, mesh)
        self.model = GPT(cfg.model)
        self.tx = make_optimizer(cfg.optim)
        self.batch_sharding = sh.batch_sharding(mesh)
        self.replicated = sh.replicated(mesh)
        with sh.mesh_context(mesh):
            boxed = jax.eval_shape(self._init_params, jax.random.key(0))
        param_specs = nn.get_partition_spec(boxed)
        abstract_opt = jax.eval_shape(self.tx.init, nn.unbox(boxed))
        opt_specs = optax.tree_utils.tree_map_params(
            self.tx, lambda _, spec: spec, abstract_opt, param_specs,
            transform_non_params=lambda _: P(), is_leaf=lambda x: isinstance(x, P))
        specs = TrainState(step=P(), params=param_specs, opt_state=opt_specs)
        self.state_sharding = sh.logical_to_sharding(specs, mesh)
        abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=nn.unbox(boxed),
                              opt_state=abstract_opt)
        self.abstract_state = abstract_with_shardings(abstract, self.state_sharding)
        # name -> Future of a compiled program ("step", "init", "eval"), the step's lowering
        # ("lowered_step") or its XLA FLOP count ("xla_flops"), shared by for_run copies; _lock
        # guards the dict (the futures are filled outside it)
        self._compiled: dict[str, concurrent.futures.Future] = {}
        self._lock = threading.Lock()
        self.run_args = self._run_args()

    @staticmethod
    def program_key(cfg: Config, mesh: jax.sharding.Mesh) -> tuple:
        """What the compiled functions depend on: runs with equal keys share them."""
        return (*shape_fields(cfg), mesh)

    def for_run(self, cfg: Config, total_steps: int) -> "Trainer":
        """A Trainer for another run of the same shape, sharing this one's compiled functions
        (what was compiled for one is compiled for both)."""
        if self.program_key(cfg, self.mesh) != self.key:
            raise ValueError("for_run needs a run of the same model, optimizer, batch and mesh")
        t = copy.copy(self)
        t.cfg, t.total_steps = cfg, total_steps
        t.run_args = t._run_args()
        return t

    def _run_args(self) -> dict:
        """The run's values the compiled step takes as arguments (replicated scalars)."""
        key_data = np.asarray(jax.random.key_data(jax.random.key(self.cfg.train.seed)))
        host = {"key": key_data, "total_steps": np.int32(self.total_steps),
                "nan_step": np.int32(self.cfg.train.inject_nan_step)}
        return {k: jax.make_array_from_callback(v.shape, self.replicated, lambda idx, v=v: v[idx])
                for k, v in host.items()}

    def _init_params(self, rng):
        return self.model.init(rng, jnp.zeros((1, self.cfg.model.seq_len), jnp.int32))["params"]

    def _init_state(self, rng) -> TrainState:
        params = nn.unbox(self._init_params(rng))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params))

    def _program(self, name: str, build: Callable[[], Any], wait: bool = True) -> Any:
        """Program ``name``, built by the first thread that asks for it (the training loop or a
        ``compile_ahead`` worker); later requests wait for that build. With ``wait`` false
        (building ahead) it returns None, and a failed build is kept for whoever asks next."""
        fut = self._compiled.get(name)
        if fut is not None and fut.done():  # the training loop's case, once per step: no lock
            return fut.result() if wait else None
        with self._lock:
            fut = self._compiled.get(name)
            mine = fut is None
            if mine:
                fut = self._compiled[name] = concurrent.futures.Future()
        if mine:
            try:
                fut.set_result(build())
            except BaseException as e:  # the error reaches whoever asks for the program
                fut.set_exception(e)
        return fut.result() if wait else None

    def compile_all(self) -> None:
        """Build, in this thread, every program nobody has started yet, in the order a run
        needs them: train step, init, evaluation, then the XLA FLOP count."""
        with short_gil_switch():
            for name, build in (("step", self._build_step), ("init", self._build_init),
                                ("eval", self._build_eval), ("xla_flops", self._build_xla_flops)):
                self._program(name, build, wait=False)

    def compile_ahead(self, pool: concurrent.futures.Executor) -> concurrent.futures.Future:
        """``compile_all`` on ``pool``: XLA compiles without the GIL, so the programs build while
        this thread trains; asking for one still being built waits for it."""
        return pool.submit(self.compile_all)

    def _lower_init(self) -> Any:
        jitted = jax.jit(self._init_state, out_shardings=self.state_sharding)
        with sh.mesh_context(self.mesh):
            return jitted.lower(jax.random.key(0))

    @staticmethod
    def init_compiler_options() -> dict | None:
        """The init runs once per run: on a CPU, skip LLVM's optimisations (a third of its
        compile time; the values are the same random draws)."""
        return {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None

    def _build_init(self) -> Any:
        return self._lower_init().compile(compiler_options=self.init_compiler_options())

    def init_state(self) -> TrainState:
        """A fresh state from the run's seed (the init is compiled once per shape)."""
        return self._program("init", self._build_init)(jax.random.key(self.cfg.train.seed))

    @property
    def microbatches(self) -> int:
        """``train.microbatches``, with 0 (auto) resolved for this backend and mesh."""
        return resolve_microbatches(self.cfg, self.mesh.shape["data"] * self.mesh.shape["fsdp"],
                                    jax.default_backend())

    def _loss_and_grads(self, params, batch_bt, rng):
        m = self.microbatches
        grad_fn = jax.value_and_grad(lambda p, b, r: cross_entropy(self.model, p, b, train=True, rng=r))
        if m == 1:
            return grad_fn(params, batch_bt, rng)
        # microbatch i takes rows i, i + m, i + 2m, ...: every batch shard holds its share of each
        micro_mbt = jnp.swapaxes(batch_bt.reshape(-1, m, batch_bt.shape[-1]), 0, 1)

        def body(acc, i):
            loss, grads = grad_fn(params, micro_mbt[i], jax.random.fold_in(rng, i))
            return jax.tree.map(jnp.add, acc, (loss, grads)), None

        zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        (loss, grads), _ = jax.lax.scan(body, zero, jnp.arange(m))
        return jax.tree.map(lambda a: a / m, (loss, grads))

    def _train_step(self, state: TrainState, batch_bt: jax.Array, run: dict):
        # only shape-level settings (self.key) may be read from self.cfg here: ``run`` holds the rest
        rng = jax.random.fold_in(jax.random.wrap_key_data(run["key"]), state.step)
        loss, grads = self._loss_and_grads(state.params, batch_bt, rng)
        grad_norm = optax.tree.norm(grads)
        injected = state.step == run["nan_step"]
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & ~injected
        loss = jnp.where(injected, jnp.nan, loss)

        def update(params, opt_state):
            updates, opt_state = self.tx.update(grads, opt_state, params, total_steps=run["total_steps"])
            return optax.apply_updates(params, updates), opt_state
        # A non-finite step leaves parameters and optimizer state untouched. (A cond rather than a
        # select of new and old values: XLA then updates the donated buffers in place instead of
        # copying the old state for the select.)
        params, opt_state = jax.lax.cond(finite, update, lambda p, o: (p, o), state.params, state.opt_state)
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
        lr = lr_schedule(self.cfg.optim, run["total_steps"])(state.step)
        return new_state, {"loss": loss, "grad_norm": grad_norm, "lr": lr}

    @property
    def step_compiled(self) -> bool:
        """Whether the train step is compiled already (by this Trainer or one it shares with)."""
        fut = self._compiled.get("step")
        return fut is not None and fut.done()

    def _abstract_batch(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((self.cfg.train.batch_size, self.cfg.model.seq_len + 1), jnp.int32,
                                    sharding=self.batch_sharding)

    def _lower_step(self) -> Any:
        jitted = jax.jit(self._train_step, in_shardings=(self.state_sharding, self.batch_sharding, self.replicated),
                         out_shardings=(self.state_sharding, self.replicated), donate_argnums=0)
        batch = self._abstract_batch()
        run = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.replicated),
                           self.run_args)
        with sh.mesh_context(self.mesh):
            return jitted.lower(self.abstract_state, batch, run)

    def _build_step(self) -> Any:
        return self._program("lowered_step", self._lower_step).compile()

    def compile_step(self) -> Any:
        """The AOT-compiled train step (compiled once per shape)."""
        return self._program("step", self._build_step)

    def xla_flops_per_step(self) -> float:
        """FLOPs of one train step (all devices) by XLA's cost analysis: the flops_xla cross-check.

        Counted on the step as it would be written with ``jax.nn.dot_product_attention`` (full
        T x T scores, as Chinchilla counts them), lowered but not compiled: the blocked CPU
        attention skips the blocks above the diagonal and runs in loops whose bodies XLA's
        cost analysis counts once, so its own count would not be comparable (a second step
        is traced for it); the C++ kernel's custom calls count as nothing, so the count gets
        one layer's dot_product attention per layer added. A step of several microbatches is
        counted as one batch (XLA counts a loop's body once).
        """
        return self._program("xla_flops", self._build_xla_flops)

    def _build_xla_flops(self) -> float:
        kind, cfg = training_attention(self.cfg.model), self.cfg
        if kind == "blocked":
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, attention="dot_product"))
        if self.microbatches > 1:  # the scan over microbatches would be counted once: count one batch
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, microbatches=1))
        lowered = (self._program("lowered_step", self._lower_step) if cfg is self.cfg  # the step's own
                   else Trainer(cfg, self.mesh, self.total_steps)._lower_step())
        step = flops_lib.xla_flops(lowered)
        if kind == "cpu_kernel":  # XLA counts the kernel's custom calls as nothing: add what they replace
            step += self.cfg.model.n_layer * self._xla_attention_flops()
        return step

    def _xla_attention_flops(self) -> float:
        """XLA's count of one layer's ``jax.nn.dot_product_attention``, forward and backward,
        over the step's whole batch (a small program, lowered, not compiled)."""
        m = self.cfg.model
        x = jax.ShapeDtypeStruct((self.cfg.train.batch_size, m.seq_len, m.n_head, m.head_dim), jnp.dtype(m.dtype))
        fwd_bwd = jax.jit(lambda q, k, v, do: jax.vjp(attn_lib.dot_product_attention, q, k, v)[1](do))
        return flops_lib.xla_flops(fwd_bwd.lower(x, x, x, x))

    def train_step(self, state: TrainState, batch_bt: jax.Array):
        return self.compile_step()(state, batch_bt, self.run_args)

    def _lower_eval(self) -> Any:
        jitted = jax.jit(lambda params, b: cross_entropy(self.model, params, b),
                         in_shardings=(self.state_sharding.params, self.batch_sharding),
                         out_shardings=self.replicated)
        with sh.mesh_context(self.mesh):
            return jitted.lower(self.abstract_state.params, self._abstract_batch())

    def _build_eval(self) -> Any:
        return self._lower_eval().compile()

    def eval_step(self, params, batch_bt: jax.Array) -> jax.Array:
        """Mean cross-entropy of one batch (the evaluation is compiled once per shape)."""
        return self._program("eval", self._build_eval)(params, batch_bt)


def setup_distributed(cfg: Config) -> None:
    """Join a multi-process run (``--dist.*`` or JAX's environment variables)."""
    if jax.distributed.is_initialized():
        return
    if cfg.dist.num_processes > 1 or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        if not cfg.dist.coordinator and not os.environ.get("JAX_COORDINATOR_ADDRESS"):
            raise UsageError("dist.num_processes > 1 needs --dist.coordinator HOST:PORT")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        kwargs = {}
        if cfg.dist.coordinator:
            kwargs = dict(coordinator_address=cfg.dist.coordinator, num_processes=cfg.dist.num_processes,
                          process_id=cfg.dist.process_id)
        jax.distributed.initialize(**kwargs)


class Run:
    """One training run into ``out``: plans and checks everything before any compute.

    The run owns its directory: process 0 holds ``out/.lock`` from construction until ``run``
    (or ``close``) ends, so a second process on the same directory stops with one line naming
    the holder. A directory holding another config's run (by ``config.yaml`` or checkpoint
    metadata) is refused unless ``overwrite`` (start over: the old config, metrics, summary
    and checkpoints are removed first) or ``resume.allow_config_change``. ``config.yaml`` is
    written only once the state is known (restored or freshly initialised), so a failed resume
    leaves the directory as it was. A write that fails (read-only directory, full disk) ends the
    run with one line; the last committed checkpoint stays, and rerunning resumes from it.

    ``trainers`` (a dict the caller keeps, keyed by ``Trainer.program_key``) lets runs of the
    same shape share compiled functions: a sweep passes the same dict to all its runs.
    ``model_scoring`` computes a curriculum's scores of kind ``model`` (a reference model lives
    above this layer: ``scaling.difficulty.MODEL_SCORING``); without it such a config is refused.
    """

    OUTPUTS = ("summary.json", "checkpoints", "metrics.jsonl", "config.yaml")
    """What a run writes into its directory (and ``overwrite`` removes, in this order)."""

    def __init__(self, cfg: Config, out: Path, trainers: dict | None = None, *, overwrite: bool = False,
                 model_scoring: curriculum.ModelScoring | None = None):
        self.out = Path(out)
        self.trainers = trainers
        self.splits = load_tokens(cfg.data)
        if cfg.model.vocab_size == 0:
            cfg = _with_vocab(cfg, self.splits.n_vocab)
        elif cfg.model.vocab_size < self.splits.n_vocab:
            raise UsageError(f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the tokenizer's "
                             f"{self.splits.n_vocab} ids")
        self.cfg = cfg
        self.steps = steps_for(cfg)
        shape = sh.mesh_shape(cfg.mesh, jax.device_count())
        sh.check_mesh_fits(shape, cfg.model, cfg.train.batch_size, cfg.train.microbatches)
        check_attention(cfg.model)
        self.mesh_shape = shape
        self.mesh = sh.make_mesh(shape)
        self.batches = Batches(self.splits, cfg.model.seq_len, cfg.train.batch_size, cfg.train.seed,
                               sampler=_curriculum_sampler(cfg, self.splits, self.steps, model_scoring))
        self.rows = sh.process_batch_rows(self.mesh, cfg.train.batch_size)
        self.is_main = jax.process_index() == 0
        self._held = contextlib.ExitStack()  # the directory's lock (process 0), released by close()
        self._write_failed = False  # a write failed (and was reported)
        self._ckpt_broken = False  # ... inside orbax: its writer threads may wait on each other for minutes
        self._closed = False
        try:
            if self.is_main:
                with self._writing("lock"):
                    self._held.enter_context(run_io.hold_directory(self.out))
            if overwrite:
                self._start_over()
            else:
                self._check_directory()
            with self._writing("open the checkpoints of", checkpointer=True):
                self.ckpt = Checkpointer(self.out / "checkpoints", cfg.checkpoint)
            self._check_resumable()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Run":
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
            if not hasattr(self, "ckpt") or self._ckpt_broken:
                return
            if not self._write_failed:
                with self._writing("finish a checkpoint of", checkpointer=True):
                    self.ckpt.close()
                return
            try:
                self.ckpt.close()
            except (OSError, ValueError) as e:
                if not _is_write_error(e):
                    raise
        finally:
            self._held.close()

    @contextlib.contextmanager
    def _writing(self, what: str = "write the outputs of", checkpointer: bool = False):
        """Turn an OSError of writing into the run directory into one line (a UsageError);
        ``checkpointer``: the write is orbax's."""
        try:
            yield
        except (OSError, ValueError) as e:
            if not _is_write_error(e):
                raise
            self._write_failed = True
            self._ckpt_broken |= checkpointer
            raise UsageError(f"cannot {what} the run in {self.out}: {str(e).splitlines()[0]}; rerun once it is "
                             f"writable to resume from the last checkpoint") from None

    def _check_directory(self) -> None:
        """Refuse a directory that holds another config's run (by its config.yaml), or outputs
        without a config.yaml (whose run cannot be told)."""
        stored = self.out / "config.yaml"
        if not stored.is_file():
            found = [n for n in ("metrics.jsonl", "summary.json") if (self.out / n).exists()]
            if found:
                raise UsageError(f"{self.out} holds {' and '.join(found)} but no config.yaml (not a run of this "
                                 f"config); use another --out, or --overwrite to start over")
            return
        try:
            old = config_lib.from_dict(config_lib.load_yaml(stored))
        except UsageError as e:
            raise UsageError(f"{stored} is not a readable run config ({e}); use another --out, or --overwrite "
                             f"to start over") from None
        if old.identity_hash() != self.cfg.identity_hash() and not self.cfg.resume.allow_config_change:
            raise UsageError(f"{self.out} holds a run of a different config (model, data, optimizer or budget "
                             f"changed); use another --out, --overwrite to start over, or "
                             f"--resume.allow_config_change true")

    def _start_over(self) -> None:
        """Remove the run's own outputs (by name: anything else in the directory stays). The
        config goes last, so an interrupted start-over is still refused as another config."""
        if self.is_main:
            with self._writing("start over"):
                for name in self.OUTPUTS:
                    p = self.out / name
                    if p.is_dir() and not p.is_symlink():
                        aside = self.out / f".{name}.removing-{os.getpid()}"
                        os.replace(p, aside)  # gone at once for readers; deleted below
                        shutil.rmtree(aside)
                    else:
                        p.unlink(missing_ok=True)
        if jax.process_count() > 1:  # the others list checkpoints only once they are gone
            multihost_utils.sync_global_devices("scaling.train.start_over")

    def _check_resumable(self) -> None:
        """Before any compute: refuse when the latest checkpoint's metadata names another config."""
        steps = self.ckpt.steps()
        if not steps or self.cfg.resume.allow_config_change:
            return
        meta = self.ckpt.read_meta(steps[-1])
        if meta:
            self._check_identity(meta, steps[-1])

    def _check_identity(self, meta: dict, step: int) -> None:
        if self.cfg.resume.allow_config_change or meta.get("config_hash") == self.cfg.identity_hash():
            return
        raise UsageError(f"{self.out} holds checkpoints of a different config (model, data, optimizer or budget "
                         f"changed; checkpoint {step}); use another --out, --overwrite to start over, or "
                         f"--resume.allow_config_change true")

    def _write_config(self) -> None:
        if self.is_main:
            with self._writing():
                run_io.atomic_write_text(self.out / "config.yaml", self.cfg.to_yaml())

    def _restore_or_init(self, trainer: Trainer) -> TrainState:
        """The latest restorable state (and its recent losses and earlier wall time), or a fresh
        one; a restored checkpoint of another config is refused."""
        self._recent: collections.deque[float] = collections.deque(maxlen=10)
        self._prior_wall_s, self._init_s = 0.0, 0.0
        try:
            restored = self.ckpt.restore_latest(trainer.abstract_state)
        except CorruptCheckpoints:
            if not self.cfg.resume.restart_if_corrupt:
                raise
            print(f"warning: starting {self.out} from scratch (no restorable checkpoint)", file=sys.stderr)
            restored = None
        if restored is None:
            t0 = time.time()
            state = trainer.init_state()
            self._init_s = time.time() - t0
            return state
        state, meta, step = restored
        self._check_identity(meta, step)
        self._recent.extend(meta.get("recent_losses", []))
        self._prior_wall_s = float(meta.get("wall_s", 0.0))
        return state

    def trainer(self) -> Trainer:
        """This run's Trainer: sharing the compiled functions of an earlier run of its shape
        in ``trainers``, or a new one (remembered there)."""
        if self.trainers is None:
            return Trainer(self.cfg, self.mesh, self.steps)
        key = Trainer.program_key(self.cfg, self.mesh)
        shared = self.trainers.get(key)
        if shared is None:  # (setdefault: a compile-ahead thread may be adding one meanwhile)
            shared = self.trainers.setdefault(key, Trainer(self.cfg, self.mesh, self.steps))
        return shared.for_run(self.cfg, self.steps)

    def run(self) -> dict:
        """Train (or resume) to the end, evaluate, write summary.json; returns the summary. The
        directory is released at the end (``close``)."""
        t0 = time.time()
        with _quiet_write_errors(self):
            try:
                trainer = self.trainer()
                # the programs not yet compiled (by an earlier run of the shape or a sweep's
                # compile-ahead pool) build on a thread of their own: the train step while this
                # thread initialises, evaluation and the FLOP count while it trains
                ahead = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="compile")
                try:
                    trainer.compile_ahead(ahead)
                    return self._train(trainer, t0)
                finally:
                    ahead.shutdown(wait=False, cancel_futures=True)
            finally:
                self.close()

    def _save(self, step: int, state: TrainState, meta: dict) -> None:
        with self._writing("save a checkpoint of"):
            # a directory that cannot take the save stops here, before orbax's writer threads
            # meet it (they would log tracebacks, and then wait minutes for each other)
            run_io.probe_writable(self.ckpt.directory)
        with self._writing("save a checkpoint of", checkpointer=True):
            self.ckpt.save(step, state, meta)

    def _train(self, trainer: Trainer, t0: float) -> dict:
        cfg = self.cfg
        self._compile_shared = trainer.step_compiled
        state = self._restore_or_init(trainer)
        start = int(jax.device_get(state.step))
        self._write_config()
        metrics_path = self.out / "metrics.jsonl"
        if self.is_main:
            with self._writing():
                _truncate_metrics(metrics_path, start)
        compile_t0 = time.time()
        trainer.compile_step()
        # the time this run waited for its init and train step to compile (~0 when compiled ahead)
        compile_s = self._init_s + time.time() - compile_t0
        fpt = flops_lib.all_flops_per_token(cfg.model)
        logger = MetricsLogger(metrics_path, self.is_main, fpt, cfg.train.batch_size * cfg.model.seq_len,
                               cfg.train.log_every)
        bar = tqdm(total=self.steps, initial=start, disable=not (cfg.train.progress and self.is_main),
                   unit="step", dynamic_ncols=True, desc=self.out.name, file=sys.stderr, leave=False,
                   mininterval=1.0)
        self._bad, status, val, pending = 0, "completed", None, None
        lo, hi = self.rows
        step = start
        while step < self.steps:
            batch = sh.make_global_batch(self.mesh, self.batches.train_batch(step, lo, hi), cfg.train.batch_size)
            state, metrics = trainer.train_step(state, batch)  # dispatch step t ...
            step += 1
            if pending is not None and self._handle(pending, logger, bar):  # ... then fetch step t-1
                status = "diverged"
                break
            pending = (step, metrics)
            final = step == self.steps
            eval_due = step % cfg.train.eval_every == 0 or final
            ckpt_due = self.ckpt.due(step, final, steps_left=self.steps - step)
            if eval_due or ckpt_due:
                diverged, pending = self._handle(pending, logger, bar), None
                if diverged:
                    status = "diverged"
                    break
                if eval_due:
                    val = self.evaluate(trainer, state.params)
                    logger.add_val(step, val)
                with self._writing():
                    logger.flush()
                if ckpt_due:
                    self._save(step, state, {"config_hash": cfg.identity_hash(),
                                             "val_loss": None if val is None else val[0],
                                             "recent_losses": list(self._recent),
                                             "wall_s": self._prior_wall_s + time.time() - t0})
        with self._writing():
            logger.flush()
        with self._writing("save a checkpoint of", checkpointer=True):
            self.ckpt.wait()
        bar.close()
        if val is None and status == "completed":
            val = self.evaluate(trainer, state.params)
        xla_step = trainer.xla_flops_per_step()  # counted by the compile-ahead thread meanwhile
        wall_s = self._prior_wall_s + time.time() - t0  # earlier processes' time up to their last checkpoint
        summary = self._summary(state, status, val, fpt, xla_step, compile_s, wall_s, logger)
        if self.is_main:
            with self._writing():
                run_io.atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=1))
        return summary

    def _handle(self, pending, logger: "MetricsLogger", bar) -> bool:
        """Log one step's fetched metrics; True when the run has diverged."""
        step, metrics = pending
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        bar.update(step - bar.n)
        if math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]):
            logger.log(step, m, force=step == self.steps)
            self._recent.append(m["loss"])
            bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{logger.tokens_per_s:.0f}", refresh=False)
            return False
        self._bad += 1
        logger.log(step, m, force=True)
        if self._bad > self.cfg.train.skip_nonfinite:
            print(f"error: run diverged at step {step}: non-finite loss; the last good checkpoint is kept",
                  file=sys.stderr)
            return True
        print(f"warning: non-finite loss at step {step}: update skipped ({self._bad} of "
              f"{self.cfg.train.skip_nonfinite} allowed)", file=sys.stderr)
        return False

    def evaluate(self, trainer: Trainer, params) -> tuple[float, float]:
        """(mean validation loss in nats per token, bits per byte) on the fixed batches."""
        n, (lo, hi) = self.cfg.train.eval_batches, self.rows
        losses = [trainer.eval_step(params, sh.make_global_batch(self.mesh, b, self.cfg.train.batch_size))
                  for b in self.batches.val_batches(n, lo, hi)]
        loss = float(np.mean(jax.device_get(losses)))
        n_tokens = n * self.cfg.train.batch_size * self.cfg.model.seq_len
        return loss, bits_per_byte(loss, n_tokens, self.batches.val_target_bytes(n))

    def _summary(self, state, status, val, fpt, xla_step, compile_s, wall_s, logger) -> dict:
        cfg = self.cfg
        counts = flops_lib.param_counts(cfg.model)
        tokens = self.steps * cfg.train.batch_size * cfg.model.seq_len
        param_bytes = sh.bytes_per_device(state.params)
        state_bytes = sh.bytes_per_device((state.params, state.opt_state))
        tail = list(self._recent)
        return {
            "n_params": counts["n_params"], "n_params_nonembed": counts["n_params_nonembed"],
            "tokens": tokens, "steps": self.steps, "steps_done": int(jax.device_get(state.step)),
            "flops_6nd": fpt["6nd"] * tokens, "flops_kaplan": fpt["kaplan"] * tokens,
            "flops_chinchilla": fpt["chinchilla"] * tokens, "flops_xla": xla_step * self.steps,
            "final_train_loss": float(np.mean(tail)) if tail else None,
            "val_loss": None if val is None else val[0], "val_bpb": None if val is None else val[1],
            "status": status, "wall_s": wall_s, "compile_s": compile_s, "compile_shared": self._compile_shared,
            "tokens_per_s": logger.mean_tokens_per_s, "epochs": self.batches.epochs(tokens),
            "n_layer": cfg.model.n_layer, "d_model": cfg.model.d_model, "n_head": cfg.model.n_head,
            "seq_len": cfg.model.seq_len, "batch_size": cfg.train.batch_size, "vocab_size": cfg.model.vocab_size,
            "tokenizer": cfg.data.tokenizer, "mesh": self.mesh_shape, "n_devices": jax.device_count(),
            "n_processes": jax.process_count(),
            "param_bytes_per_device": max(param_bytes.values()),
            "state_bytes_per_device": max(state_bytes.values()),
        }


class MetricsLogger:
    """metrics.jsonl lines (process 0 only), buffered and appended."""

    def __init__(self, path: Path, enabled: bool, fpt: dict, tokens_per_step: int, every: int):
        self.path, self.enabled, self.fpt, self.tps, self.every = path, enabled, fpt, tokens_per_step, every
        self.lines: list[dict] = []
        self._t, self._step = time.time(), None
        self.tokens_per_s = 0.0
        self._tok_total, self._time_total = 0, 0.0

    def _rate(self, step: int) -> None:
        now = time.time()
        if self._step is not None and step > self._step:
            dt = now - self._t
            self.tokens_per_s = (step - self._step) * self.tps / max(dt, 1e-9)
            self._tok_total += (step - self._step) * self.tps
            self._time_total += dt
        self._t, self._step = now, step

    @property
    def mean_tokens_per_s(self) -> float:
        return self._tok_total / self._time_total if self._time_total else self.tokens_per_s

    def log(self, step: int, m: dict, force: bool = False) -> None:
        self._rate(step)
        if not (force or step % self.every == 0):
            return
        tokens = step * self.tps
        self.lines.append({"step": step, "tokens": tokens, "flops": self.fpt["6nd"] * tokens,
                           "flops_chinchilla": self.fpt["chinchilla"] * tokens, "loss": m["loss"],
                           "lr": m["lr"], "grad_norm": m["grad_norm"], "tokens_per_s": self.tokens_per_s})

    def add_val(self, step: int, val: tuple[float, float]) -> None:
        if self.lines and self.lines[-1]["step"] == step:
            self.lines[-1].update(val_loss=val[0], val_bpb=val[1])
        else:
            tokens = step * self.tps
            self.lines.append({"step": step, "tokens": tokens, "flops": self.fpt["6nd"] * tokens,
                               "flops_chinchilla": self.fpt["chinchilla"] * tokens,
                               "val_loss": val[0], "val_bpb": val[1]})

    def flush(self) -> None:
        """Append the buffered lines (an OSError leaves them buffered; a torn last line is
        dropped when the run resumes)."""
        if self.enabled and self.lines:
            with open(self.path, "a") as f:
                for line in self.lines:
                    f.write(json.dumps(line) + "\n")
            self.lines = []


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after the checkpoint being resumed (they will be logged again)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and _line_step(ln) <= step]
    run_io.atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn last line from a kill: drop it


# tensorstore (orbax's array writer) reports a failed file operation as a ValueError naming an
# OS error code or the local file it could not read or write
_TENSORSTORE_FILE_ERROR = re.compile(r"\[os_error_code='?\d+'?\]|local file \"")


def _is_write_error(e: BaseException | None) -> bool:
    """An OSError, or tensorstore's report of a failed file operation: what writing into an
    unwritable or full directory raises, in Python or inside orbax."""
    return isinstance(e, OSError) or (isinstance(e, ValueError) and bool(_TENSORSTORE_FILE_ERROR.search(str(e))))


class _QuietWriteErrors(logging.Filter):
    """Drops orbax's log records (with tracebacks) of a write error in its writer threads, and
    after ``run`` met one, of any error: the run reports the failure itself in one line (the
    error reaches it at its next save or wait)."""

    def __init__(self, run: "Run"):
        super().__init__()
        self.run = run

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not (self.run._write_failed or _is_write_error(exc))


@contextlib.contextmanager
def _quiet_write_errors(run: "Run"):
    log, quiet = logging.getLogger("absl"), _QuietWriteErrors(run)
    log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)


def _with_vocab(cfg: Config, n_vocab: int) -> Config:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=n_vocab))


def _curriculum_sampler(cfg: Config, splits, steps: int, model_scoring: curriculum.ModelScoring | None):
    if not cfg.data.curriculum:
        return None
    return curriculum.make_sampler(cfg, splits, steps, model_scoring=model_scoring)


def load_run(run_dir: str | Path) -> tuple[Config, Any]:
    """(config, parameters) of the latest restorable checkpoint of a training run directory.

    Parameters come back replicated on the current devices, ready for inference.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UsageError(f"not a training run directory (no config.yaml): {run_dir}")
    cfg = config_lib.from_dict(config_lib.load_yaml(run_dir / "config.yaml"))
    mesh = sh.make_mesh(sh.mesh_shape(config_lib.MeshConfig(), jax.device_count()))
    trainer = Trainer(cfg, mesh, steps_for(cfg))
    ckpt = Checkpointer(run_dir / "checkpoints", cfg.checkpoint, read_only=True)
    try:
        restored = ckpt.restore_latest(trainer.abstract_state)
    finally:
        ckpt.close()
    if restored is None:
        raise UsageError(f"no checkpoint under {run_dir / 'checkpoints'}")
    return cfg, restored[0].params
