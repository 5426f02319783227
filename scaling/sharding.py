"""The device mesh and the one table mapping logical axis names to mesh axes.

Mesh axes: ``data`` (replicas over batch), ``fsdp`` (batch *and* parameters/optimizer
state split, ZeRO-3 style), ``model`` (Megatron tensor parallelism: QKV and the first MLP
matrix split by columns, the attention output and second MLP matrix by rows, heads and
the vocabulary split), ``stage`` (pipeline stages: the stacked layers of a scanned model split
into consecutive groups, :mod:`scaling.train.pipeline`). Layers only name logical axes; this
module alone names mesh axes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from scaling.config import MeshConfig, ModelConfig
from scaling.errors import UsageError

MESH_AXES = ("stage", "data", "fsdp", "model")
"""Outermost first: devices next to each other (one process's) share a stage where they can, so
a stage's collectives stay within a host and only the activations between stages cross hosts."""
BATCH_AXES = ("data", "fsdp")
STAGE_AXIS = "stage"
LAYERS_AXIS = "layers"
"""The logical axis of the stacked layers of a scanned model (split over the pipeline stages)."""

# logical axis name -> mesh axis (or axes, or None for replicated)
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("vocab", "model"),
    ("embed", "fsdp"),
    ("heads", "model"),
    ("mlp", "model"),
    ("head_dim", None),
    ("qkv", None),
    ("norm", None),
    ("position", None),
    (LAYERS_AXIS, STAGE_AXIS),
    # activations
    ("act_batch", BATCH_AXES),
    ("act_seq", None),
    ("act_embed", None),
    ("act_heads", "model"),
    ("act_mlp", "model"),
    ("act_vocab", "model"),
)


def mesh_shape(cfg: MeshConfig, n_devices: int) -> dict[str, int]:
    """Resolve a -1 axis and check the product equals the device count. ``stage`` is a key only
    where it is more than 1 (a run without a pipeline reports the mesh as before)."""
    sizes = {"data": cfg.data, "fsdp": cfg.fsdp, "model": cfg.model}
    known = math.prod(v for v in sizes.values() if v != -1) * cfg.stage
    for k, v in sizes.items():
        if v == -1:
            if n_devices % known:
                stage = {"stage": cfg.stage} if cfg.stage > 1 else {}
                raise UsageError(f"mesh {stage | sizes} does not divide the {n_devices} devices")
            sizes[k] = n_devices // known
    if math.prod(sizes.values()) * cfg.stage != n_devices:
        stage = f"stage={cfg.stage} " if cfg.stage > 1 else ""
        raise UsageError(
            f"mesh {stage}data={sizes['data']} fsdp={sizes['fsdp']} model={sizes['model']} "
            f"needs {math.prod(sizes.values()) * cfg.stage} devices, but {n_devices} are available"
        )
    return {"stage": cfg.stage, **sizes} if cfg.stage > 1 else sizes


@dataclasses.dataclass(frozen=True)
class PipelinePlan:
    """A pipeline resolved from ``mesh.*``: ``microbatches`` per batch (or per gradient-
    accumulation microbatch) flow through ``stages`` stages ``repeats`` times (1: GPipe; more:
    the circular schedule), each visit running ``n_layer / (stages * repeats)`` layers."""

    stages: int
    microbatches: int
    repeats: int


def pipeline_plan(mesh: MeshConfig, model: ModelConfig) -> PipelinePlan | None:
    """The pipeline of ``mesh.stage > 1`` (None without one); checked by :func:`check_mesh_fits`."""
    if mesh.stage == 1:
        return None
    repeats = 1
    if mesh.pipeline_schedule == "circular":
        repeats = mesh.pipeline_repeats or max(model.n_layer // mesh.stage, 1)
    return PipelinePlan(mesh.stage, mesh.pipeline_microbatches or mesh.stage, repeats)


def _pipeline_checks(mesh: MeshConfig, model: ModelConfig, rows: int, dp: int) -> list[tuple[bool, str]]:
    """The pipeline's requirements (``rows``: the batch rows of one gradient-accumulation step)."""
    plan = pipeline_plan(mesh, model)
    if plan is None:
        return []
    m, groups = plan.microbatches, plan.stages * plan.repeats
    circular = f" x mesh.pipeline_repeats ({plan.repeats})" if plan.repeats > 1 else ""
    return [
        (model.scan_layers, "mesh.stage > 1 needs model.scan_layers true (the stages split the stacked layers)"),
        (model.dropout == 0, "mesh.stage > 1 does not take model.dropout > 0"),
        (
            model.n_layer % groups == 0,
            f"model.n_layer ({model.n_layer}) is not divisible by mesh.stage ({plan.stages}){circular}",
        ),
        (
            plan.repeats == 1 or m >= plan.stages,
            f"the circular schedule needs mesh.pipeline_microbatches ({m}) >= mesh.stage ({plan.stages})",
        ),
        (
            rows % m == 0 and (rows // m) % dp == 0,
            f"batch rows per step {rows} (train.batch_size / train.microbatches) are not divisible by "
            f"mesh.pipeline_microbatches ({m}) times the data axes (mesh.data * mesh.fsdp = {dp})",
        ),
    ]


def check_mesh_fits(
    shape: dict[str, int], model: ModelConfig, batch_size: int, microbatches: int, mesh: MeshConfig | None = None
) -> None:
    """Every split axis must divide what it splits (and ``mesh``'s pipeline, where it has one,
    its layers and batch); a clear error otherwise."""
    tp, dp = shape["model"], shape["data"] * shape["fsdp"]
    checks = [
        (model.n_head % tp == 0, f"model.n_head ({model.n_head}) is not divisible by mesh.model ({tp})"),
        (model.ff_dim % tp == 0, f"MLP width d_ff ({model.ff_dim}) is not divisible by mesh.model ({tp})"),
        (
            model.padded_vocab % tp == 0,
            f"padded vocabulary ({model.padded_vocab}) is not divisible by mesh.model ({tp}); set model.vocab_multiple",
        ),
        (
            model.d_model % shape["fsdp"] == 0,
            f"model.d_model ({model.d_model}) is not divisible by mesh.fsdp ({shape['fsdp']})",
        ),
        (
            (batch_size // max(microbatches, 1)) % dp == 0,
            f"microbatch size {batch_size // max(microbatches, 1)} (train.batch_size / train.microbatches) is not "
            f"divisible by the data axes (mesh.data * mesh.fsdp = {dp})",
        ),
    ]
    if mesh is not None:
        checks += _pipeline_checks(mesh, model, batch_size // max(microbatches, 1), dp)
    for ok, msg in checks:
        if not ok:
            raise UsageError(msg)


def make_mesh(shape: dict[str, int]) -> jax.sharding.Mesh:
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(tuple(shape.get(a, 1) for a in MESH_AXES), MESH_AXES, axis_types=axis_types)


def logical_to_sharding(logical_specs: Any, mesh: jax.sharding.Mesh) -> Any:
    """Map a pytree of logical PartitionSpecs to NamedShardings through the rule table."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, LOGICAL_AXIS_RULES)


def _mesh_axes(name: str | None) -> tuple[str, ...]:
    """The mesh axes the rule table maps logical axis ``name`` to."""
    axes = None if name is None else dict(LOGICAL_AXIS_RULES).get(name)
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def logical_axis_size(name: str) -> int:
    """How many shards the logical axis ``name`` has under the current mesh (1 without one)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return 1
    return math.prod(mesh.shape[a] for a in _mesh_axes(name) if a in mesh.shape)


def shard_local(fn, in_names: tuple, out_names: tuple):
    """``fn`` applied to each device's shard of its arguments (``jax.shard_map``), the shards
    named by logical axes (one tuple per argument, one per output of the tuple ``fn`` returns)
    through the rule table; ``fn`` itself without a mesh of more than one device. For per-shard
    kernels (custom calls) that XLA cannot partition.

    A logical axis is split only where its mesh axes divide every dimension it names in the
    arguments; otherwise each device takes that dimension whole (a batch of one under a
    data-parallel mesh: every data shard computes it). XLA pads such uneven shardings for the
    operations it partitions itself; a per-shard kernel needs equal shards."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn

    def local(*args):
        whole = {
            n
            for names, a in zip(in_names, args)
            for n, size in zip(names, a.shape)
            if size % math.prod(mesh.shape[ax] for ax in _mesh_axes(n) if ax in mesh.shape)
        }

        def spec(names):
            return nn.logical_to_mesh_axes(tuple(None if n in whole else n for n in names), LOGICAL_AXIS_RULES)

        return jax.shard_map(
            fn,
            mesh=mesh,
            in_specs=tuple(map(spec, in_names)),
            out_specs=tuple(map(spec, out_names)),
            axis_names=frozenset(mesh.axis_names) - frozenset(mesh.manual_axes),  # within a pipeline stage: the others
            check_vma=False,
        )(*args)

    return local


def batch_sharding(mesh: jax.sharding.Mesh, stacked: bool = False) -> NamedSharding:
    """Rows over the batch axes; ``stacked``: of a stack of batches (k, batch, ...)."""
    return NamedSharding(mesh, P(None, BATCH_AXES) if stacked else P(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def mesh_context(mesh: jax.sharding.Mesh):
    """Context under which layers' logical constraints resolve against ``mesh``."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(nn.logical_axis_rules(LOGICAL_AXIS_RULES))
    return stack


def process_batch_rows(mesh: jax.sharding.Mesh, global_batch: int) -> tuple[int, int]:
    """The [lo, hi) rows of the global batch that this process's devices hold."""
    sharding = batch_sharding(mesh)
    idx = sharding.addressable_devices_indices_map((global_batch, 1))
    rows = sorted({(s[0].start or 0, s[0].stop or global_batch) for s in idx.values()})
    lo, hi = rows[0][0], rows[-1][1]
    if sum(b - a for a, b in rows) < hi - lo and len(rows) > 1:
        raise UsageError("this process's batch rows are not contiguous; reorder the mesh")
    return lo, hi


def make_global_batch(
    mesh: jax.sharding.Mesh, local: np.ndarray, global_batch: int, stacked: bool = False
) -> jax.Array | np.ndarray:
    """Assemble the global batch from this process's rows only (``stacked``: a stack of batches,
    (k, rows, ...), sharded as ``batch_sharding(mesh, stacked=True)``).

    On a mesh of one device the host array itself comes back: a compiled program whose input
    sharding is that device copies it in as it starts, for a small fraction of the host time
    that building a device array first takes (which is a share of a small model's step)."""
    axis = 1 if stacked else 0
    shape = local.shape[:axis] + (global_batch,) + local.shape[axis + 1 :]
    if mesh.size == 1 and local.shape == shape:
        return local
    return jax.make_array_from_process_local_data(batch_sharding(mesh, stacked), local, shape)


def bytes_per_device(tree: Any) -> dict[int, int]:
    """Bytes each device holds of the arrays in ``tree`` (from their actual shardings)."""
    out: dict[int, int] = {}
    for a in jax.tree.leaves(tree):
        for shard in a.addressable_shards:
            out[shard.device.id] = out.get(shard.device.id, 0) + shard.data.nbytes
    return out
