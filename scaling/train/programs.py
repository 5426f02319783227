"""The compiled programs of one shape: init, train step, evaluation step, and the step's XLA
FLOP count.

The state is built abstractly (``eval_shape``), its shardings come from the logical rule
table, and a jitted init with ``out_shardings`` materialises it already sharded. The train
step is compiled ahead of time with explicit in/out shardings and donates the state; XLA's
cost analysis of the step is the ``flops_xla`` cross-check.

What differs between runs of one shape (the schedule's length, the seed, the debug NaN step)
is an argument of the compiled step (:class:`~scaling.train.step.RunArgs`), not a constant
in it: runs of the same model, optimizer, batch and mesh share one compiled init, train and
eval step (:meth:`ShapePrograms.for_run`; a sweep keeps one per shape).

Each program is built once, by whichever thread asks first: :meth:`ShapePrograms.compile_ahead`
queues them on a thread pool, where XLA compiles without holding the GIL, so a run's
evaluation and FLOP-count programs (and a sweep's next shapes) compile while it trains.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import dataclasses
import functools
import sys
import threading
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from scaling import flops as flops_lib
from scaling import sharding as sh
from scaling.checkpoint import abstract_with_shardings
from scaling.config import OBJECTIVE_FIELDS, Config
from scaling.data.objectives import Objective
from scaling.errors import UsageError
from scaling.model import GPT, dense_kind, training_attention
from scaling.model import attention as attn_lib
from scaling.train import step as step_lib
from scaling.train import xla_options
from scaling.train.optimizer import RUNTIME_FIELDS, make_optimizer
from scaling.train.pipeline import pipelined
from scaling.train.step import TrainState

AUTO_MICROBATCH_TOKENS = 1024
"""Tokens per device and microbatch that ``train.microbatches=0`` aims for on a CPU: a smaller
microbatch's activations stay in cache."""


EVAL_CHUNK = 32
"""Most validation batches one evaluation program call takes (:func:`eval_chunk`)."""


def eval_chunk(n_batches: int) -> int:
    """Validation batches per evaluation call: the largest divisor of ``n_batches`` up to
    EVAL_CHUNK, so that an evaluation is a few program calls rather than one per batch."""
    return max(k for k in range(1, min(n_batches, EVAL_CHUNK) + 1) if n_batches % k == 0)


def shape_fields(cfg: Config) -> tuple:
    """The settings a compiled step depends on (with the mesh): runs equal in them share it. The
    optimizer's peak lr and warmup are arguments of the step (``RUNTIME_FIELDS``), not in the key."""
    optim = tuple(
        (f.name, getattr(cfg.optim, f.name)) for f in dataclasses.fields(cfg.optim) if f.name not in RUNTIME_FIELDS
    )
    objective = tuple(getattr(cfg.train, f) for f in OBJECTIVE_FIELDS["causal"])  # train.objective and its settings
    return (cfg.model, optim, cfg.train.batch_size, cfg.train.microbatches, objective)


def resolve_microbatches(cfg: Config, data_shards: int, backend: str) -> int:
    """Microbatches per step: ``train.microbatches``, or for 0 (auto) on a CPU the most that keep
    at least AUTO_MICROBATCH_TOKENS tokens (or the whole local batch) per device each, 1 elsewhere
    and with a pipeline (``mesh.stage > 1``), which splits the batch into microbatches itself."""
    if cfg.train.microbatches or backend != "cpu" or cfg.mesh.stage > 1:
        return cfg.train.microbatches or 1
    local = cfg.train.batch_size // data_shards
    rows = min(local, max(1, AUTO_MICROBATCH_TOKENS // cfg.model.seq_len))
    return max(m for m in range(1, local + 1) if local % m == 0 and local // m >= rows)


_switch = {"lock": threading.Lock(), "users": 0, "saved": 0.005}


@contextlib.contextmanager
def short_gil_switch(interval_s: float = 2e-4):
    """While a thread traces programs beside a training loop, make Python hand the GIL over
    every ``interval_s`` instead of every 5 ms (its default): otherwise the loop, which lets go
    of the GIL at each wait on the device, waits up to 5 ms to get it back, several times a
    step (``python -m benchmarks.gil_switch`` measures it)."""
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


class ShapePrograms:
    """The model, its mesh and shardings, and the compiled init/train/eval programs of one
    shape; the run's own values (schedule length, seed, NaN-injection step) are arguments."""

    def __init__(self, cfg: Config, mesh: jax.sharding.Mesh, total_steps: int):
        self.cfg, self.mesh, self.total_steps = cfg, mesh, total_steps
        self.key = self.program_key(cfg, mesh)
        self.model = GPT(cfg.model)
        self.objective = Objective.of(cfg)
        self.pipeline = sh.pipeline_plan(cfg.mesh, cfg.model)
        if self.pipeline is not None and cfg.train.objective != "causal":
            raise UsageError(f"mesh.stage > 1 trains train.objective causal only, got {cfg.train.objective!r}")
        self.tx = make_optimizer(cfg.optim)
        self.batch_sharding = sh.batch_sharding(mesh)
        self.replicated = sh.replicated(mesh)
        with sh.mesh_context(mesh):
            boxed = jax.eval_shape(self._init_params, jax.random.key(0))
        param_specs = nn.get_partition_spec(boxed)
        abstract_opt = jax.eval_shape(self.tx.init, nn.unbox(boxed))
        opt_specs = optax.tree_utils.tree_map_params(
            self.tx,
            lambda _, spec: spec,
            abstract_opt,
            param_specs,
            transform_non_params=lambda _: P(),
            is_leaf=lambda x: isinstance(x, P),
        )
        specs = TrainState(step=P(), params=param_specs, opt_state=opt_specs)
        self.state_sharding = sh.logical_to_sharding(specs, mesh)
        abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=nn.unbox(boxed), opt_state=abstract_opt)
        self.abstract_state = abstract_with_shardings(abstract, self.state_sharding)
        # name -> Future of a compiled program ("step", "init", "eval"), the step's lowering
        # ("lowered_step") or its XLA FLOP count ("xla_flops"), shared by for_run copies; _lock
        # guards the dict (the futures are filled outside it)
        self._compiled: dict[str, concurrent.futures.Future] = {}
        self._lock = threading.Lock()
        self.run_args = self._run_args()
        self.compiler_options = xla_options.program_options()  # the dot library (checked here, before compute)

    @staticmethod
    def program_key(cfg: Config, mesh: jax.sharding.Mesh) -> tuple:
        """What the compiled functions depend on: runs with equal keys share them."""
        return (*shape_fields(cfg), mesh, sh.pipeline_plan(cfg.mesh, cfg.model))

    def for_run(self, cfg: Config, total_steps: int) -> ShapePrograms:
        """The programs for another run of the same shape, sharing these compiled functions
        (what was compiled for one is compiled for both)."""
        if self.program_key(cfg, self.mesh) != self.key:
            raise ValueError("for_run needs a run of the same model, optimizer, batch and mesh")
        t = copy.copy(self)
        t.cfg, t.total_steps = cfg, total_steps
        t.run_args = t._run_args()
        return t

    def _run_args(self) -> step_lib.RunArgs:
        """The run's values the compiled step takes as arguments (replicated scalars)."""
        key_data = np.asarray(jax.random.key_data(jax.random.key(self.cfg.train.seed)))
        host = {
            "key": key_data,
            "total_steps": np.int32(self.total_steps),
            "lr": np.float32(self.cfg.optim.lr),
            "warmup_steps": np.int32(self.cfg.optim.warmup_steps),
            "nan_step": np.int32(self.cfg.debug.inject_nan_step),
        }
        return {
            k: jax.make_array_from_callback(v.shape, self.replicated, lambda idx, v=v: v[idx]) for k, v in host.items()
        }

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
            for name, build in (
                ("step", self._build_step),
                ("init", self._build_init),
                (self._eval_name(self.eval_k), functools.partial(self._build_eval, self.eval_k)),
                ("xla_flops", self._build_xla_flops),
            ):
                self._program(name, build, wait=False)

    def compile_ahead(self, pool: concurrent.futures.Executor) -> concurrent.futures.Future:
        """``compile_all`` on ``pool``: XLA compiles without the GIL, so the programs build while
        this thread trains; asking for one still being built waits for it."""
        return pool.submit(self.compile_all)

    # ------------------------------------------------------------------------- init

    def _lower_init(self) -> Any:
        jitted = jax.jit(self._init_state, out_shardings=self.state_sharding)
        with sh.mesh_context(self.mesh):
            return jitted.lower(jax.random.key(0))

    @staticmethod
    def init_compiler_options() -> dict | None:
        """The init runs once per run: on a CPU, skip LLVM's optimisations (a large share of its
        compile time; the values are the same random draws)."""
        return {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None

    def _build_init(self) -> Any:
        return self._lower_init().compile(compiler_options=self.init_compiler_options())

    def init_state(self) -> TrainState:
        """A fresh state from the run's seed (the init is compiled once per shape)."""
        return self._program("init", self._build_init)(jax.random.key(self.cfg.train.seed))

    # ------------------------------------------------------------------------- train step

    @property
    def microbatches(self) -> int:
        """``train.microbatches``, with 0 (auto) resolved for this backend and mesh."""
        return resolve_microbatches(self.cfg, self.mesh.shape["data"] * self.mesh.shape["fsdp"], jax.default_backend())

    @property
    def step_compiled(self) -> bool:
        """Whether the train step is compiled already (by these programs or ones they share with)."""
        fut = self._compiled.get("step")
        return fut is not None and fut.done()

    def _abstract_batch(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(
            (self.cfg.train.batch_size, self.cfg.model.seq_len + 1), jnp.int32, sharding=self.batch_sharding
        )

    def _lower_step(self) -> Any:
        # bound here: only shape-level settings (self.key), never the run's own values
        model = pipelined(self.model, self.pipeline)  # the step's blocks through the pipeline, if any
        step = functools.partial(
            step_lib.train_step, model, self.tx, self.cfg.optim, self.microbatches, objective=self.objective
        )
        jitted = jax.jit(
            step,
            in_shardings=(self.state_sharding, self.batch_sharding, self.replicated),
            out_shardings=(self.state_sharding, self.replicated),
            donate_argnums=0,
        )
        run = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.replicated), self.run_args)
        with sh.mesh_context(self.mesh):
            return jitted.lower(self.abstract_state, self._abstract_batch(), run)

    def _build_step(self) -> Any:
        return self._program("lowered_step", self._lower_step).compile(compiler_options=self.compiler_options)

    def compile_step(self) -> Any:
        """The AOT-compiled train step (compiled once per shape)."""
        return self._program("step", self._build_step)

    def train_step(self, state: TrainState, batch_bt: jax.Array):
        return self.compile_step()(state, batch_bt, self.run_args)

    # ------------------------------------------------------------------------- XLA's FLOP count

    def xla_flops_per_step(self) -> float:
        """FLOPs of one train step (all devices) by XLA's cost analysis: the flops_xla cross-check.

        Counted on the step as it would be written with ``jax.nn.dot_product_attention`` (full
        T x T scores, as Chinchilla counts them), lowered but not compiled: the blocked CPU
        attention skips the blocks above the diagonal and runs in loops whose bodies XLA's
        cost analysis counts once, so its own count would not be comparable (a second step
        is traced for it); the C++ kernel's custom calls count as nothing, so the count gets
        one layer's dot_product attention per layer added. OpenBLAS's dense products
        (``model.dense``) count as nothing too: the count is of the step with XLA's dots. A step
        of several microbatches is counted as one batch (XLA counts a loop's body once), and
        scanned layers as the loop.
        """
        return self._program("xla_flops", self._build_xla_flops)

    def _build_xla_flops(self) -> float:
        kind, cfg = training_attention(self.cfg.model), self.cfg
        if kind in ("blocked", "cudnn"):  # cuDNN's custom call would count as nothing
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, attention="dot_product"))
        if dense_kind(cfg.model, self.mesh.size) == "blas":  # OpenBLAS's custom calls would count as nothing
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dense="xla"))
        if cfg.model.scan_layers:  # the scan over layers would be counted once: count the loop
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scan_layers=False))
        if self.microbatches > 1:  # the scan over microbatches would be counted once: count one batch
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, microbatches=1))
        lowered = (
            self._program("lowered_step", self._lower_step)
            if cfg is self.cfg  # the step's own
            else ShapePrograms(cfg, self.mesh, self.total_steps)._lower_step()
        )
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

    # ------------------------------------------------------------------------- evaluation

    @property
    def eval_k(self) -> int:
        """Validation batches per evaluation call of this run: ``eval_chunk(train.eval_batches)``."""
        return eval_chunk(self.cfg.train.eval_batches)

    @staticmethod
    def _eval_name(k: int) -> str:
        return f"eval{k}"

    def _lower_eval(self, k: int) -> Any:
        jitted = jax.jit(
            functools.partial(step_lib.eval_losses, self.model, objective=self.objective),
            in_shardings=(self.state_sharding.params, sh.batch_sharding(self.mesh, stacked=True)),
            out_shardings=self.replicated,
        )
        b = self._abstract_batch()
        batches = jax.ShapeDtypeStruct((k, *b.shape), b.dtype, sharding=sh.batch_sharding(self.mesh, stacked=True))
        with sh.mesh_context(self.mesh):
            return jitted.lower(self.abstract_state.params, batches)

    def _build_eval(self, k: int) -> Any:
        return self._lower_eval(k).compile(compiler_options=self.compiler_options)

    def eval_losses(self, params, batches_kbt) -> jax.Array:
        """The (k,) mean cross-entropies of a stack of k batches (compiled once per shape and k;
        the run's evaluation calls it with k = ``eval_chunk(train.eval_batches)``)."""
        k = batches_kbt.shape[0]
        return self._program(self._eval_name(k), functools.partial(self._build_eval, k))(params, batches_kbt)

    def mean_eval_loss(self, params, local_nbt: np.ndarray) -> float:
        """Mean cross-entropy over n batches, given this process's rows of each (n, rows,
        seq_len + 1), ``eval_chunk(n)`` batches per program call."""
        n, k = len(local_nbt), eval_chunk(len(local_nbt))
        losses = [
            self.eval_losses(
                params, sh.make_global_batch(self.mesh, local_nbt[i : i + k], self.cfg.train.batch_size, stacked=True)
            )
            for i in range(0, n, k)
        ]
        return float(np.mean(np.concatenate(jax.device_get(losses))))

    def eval_step(self, params, batch_bt) -> jax.Array:
        """Mean cross-entropy of one batch."""
        return self.eval_losses(params, batch_bt[None])[0]


Trainer = ShapePrograms
"""The former name of :class:`ShapePrograms`."""
