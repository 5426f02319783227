"""A decoder-only GPT in Flax Linen, with logical axis names on every parameter.

Parameter logical axes (mapped to mesh axes by the one rule table in ``scaling.sharding``):
``vocab`` (embedding rows / logits), ``embed`` (residual width), ``heads`` (attention
heads), ``head_dim``, ``qkv`` (the stacked q/k/v index), ``mlp`` (MLP hidden), ``norm``
(normalisation scales), ``position`` (learned positions), ``layers`` (the stacked layer axis of
``model.scan_layers``). Activations are constrained at
block boundaries with ``act_batch``, ``act_seq``, ``act_embed``.

``GPT.__call__(tokens_bt)`` returns float32 logits (padded vocabulary ids masked to a
large negative value). Attention is causal; with ``prefix_b`` (int32 per sequence, the
non-causal objectives of ``train.objective``) the first ``prefix_b[b]`` positions of sequence
b see each other (:func:`scaling.model.attention.prefix_mask`). With ``cache`` (from
:func:`init_cache`) and ``cache_index`` it attends over the cache too and returns
``(logits, new_cache)``: prefill writes the whole prompt, decoding then writes one position
per call.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from scaling.config import CUDNN_HEAD_DIMS, ModelConfig
from scaling.errors import UsageError
from scaling.model import attention as attn_lib
from scaling.model import cpu_attention, cpu_dense
from scaling.model.attention import NEG_INF
from scaling.sharding import LAYERS_AXIS, logical_axis_size

Cache = list[tuple[jax.Array, jax.Array]]  # per layer: (k_bThd, v_bThd), T = max length


def _init(std: float, names: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), names)


def _zeros(names: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _ones(names: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


def constrain_residual(x_btd: jax.Array) -> jax.Array:
    return nn.with_logical_constraint(x_btd, ("act_batch", "act_seq", "act_embed"))


def _norm(cfg: ModelConfig, name: str) -> nn.Module:
    if cfg.norm == "layernorm":
        return nn.LayerNorm(
            epsilon=cfg.norm_eps,
            use_bias=cfg.bias,
            dtype=jnp.float32,
            scale_init=_ones(("norm",)),
            bias_init=_zeros(("norm",)),
            name=name,
        )
    return nn.RMSNorm(epsilon=cfg.norm_eps, dtype=jnp.float32, scale_init=_ones(("norm",)), name=name)


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotate channel pairs (i, i + hd/2) by position * theta^(-2i/hd) (GPT-NeoX layout).

    ``positions`` broadcasts against ``x.shape[:-1]`` (``positions_bt[:, :, None]`` for ``x_bthd``).
    """
    hd = x.shape[-1]
    inv_freq = theta ** (-jnp.arange(0, hd // 2, dtype=jnp.float32) * 2.0 / hd)
    ang = positions[..., None].astype(jnp.float32) * inv_freq
    cos, sin = jnp.cos(ang), jnp.sin(ang)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def training_attention(cfg: ModelConfig) -> str:
    """``model.attention`` resolved. auto on a CPU: the C++ kernel where it takes this head size
    and dtype and builds; else blocked for sequences longer than one block (for one block it is
    plain attention in a loop). dot_product on other backends (``jax.nn.dot_product_attention``,
    with its default implementation, XLA's, also on a GPU)."""
    if cfg.attention != "auto":
        return cfg.attention
    if jax.default_backend() == "gpu" and cfg.dtype == "bfloat16" and cfg.head_dim in CUDNN_HEAD_DIMS:
        reason = attn_lib.cudnn_unavailable()
        if reason is None:
            return "cudnn"
        _note_fallback(f"cuDNN's fused attention is unavailable ({reason})")
    if jax.default_backend() != "cpu":
        return "dot_product"
    if cpu_attention.supports(cfg.head_dim, cfg.dtype):
        reason = cpu_attention.unavailable()
        if reason is None:
            return "cpu_kernel"
        _note_fallback(f"the CPU attention kernel is unavailable ({reason})")
    return "blocked" if cfg.seq_len > attn_lib.ATTN_BLOCK else "dot_product"


@functools.cache
def _note_fallback(reason: str) -> None:
    print(f"note: {reason}; using XLA's attention", file=sys.stderr)


def attention_kernel(kind: str):
    """The causal self-attention of fresh (b, t, h, d) sequences behind a resolved
    ``model.attention`` (the blocked kernel takes one sequence per batch shard at a time)."""
    return {
        "cpu_kernel": cpu_attention.causal_attention,
        "blocked": lambda q, k, v: attn_lib.blocked_causal_attention(q, k, v, chunk=logical_axis_size("act_batch")),
        "dot_product": attn_lib.dot_product_attention,
        "cudnn": attn_lib.cudnn_attention,
    }[kind]


def prefix_attention_kernel(kind: str):
    """The prefix-masked self-attention ``(q, k, v, prefix_b)`` behind a resolved
    ``model.attention``: the C++ kernel, or XLA's masked attention for the other settings."""
    return cpu_attention.prefix_attention if kind == "cpu_kernel" else attn_lib.prefix_attention


def build_cpu_kernels(cfg: ModelConfig, n_devices: int) -> None:
    """Build (or load from the kernel cache) the C++ libraries a model of ``cfg`` on a mesh of
    ``n_devices`` may use on a CPU, both at once: on a fresh cache each is a compiler run of
    seconds that the run's first compile would otherwise wait for one after the other."""
    if jax.default_backend() != "cpu":
        return
    wanted = []
    if cfg.attention in ("auto", "cpu_kernel") and cpu_attention.supports(cfg.head_dim, cfg.dtype):
        wanted.append(cpu_attention.unavailable)
    if cpu_dense.may_use(cfg, n_devices):
        wanted.append(cpu_dense.unavailable)
    if len(wanted) < 2:
        return  # (one library, or none: built where it is first needed)
    with concurrent.futures.ThreadPoolExecutor(len(wanted), thread_name_prefix="kernel-build") as pool:
        for f in [pool.submit(w) for w in wanted]:
            f.result()


def check_attention(cfg: ModelConfig) -> None:
    """Refuse ``model.attention=cpu_kernel`` or ``cudnn`` where it cannot run, before any compute."""
    if cfg.attention == "cudnn" and (reason := attn_lib.cudnn_unavailable()) is not None:
        raise UsageError(f"model.attention=cudnn is unavailable: {reason}")
    if cfg.attention != "cpu_kernel":
        return
    if jax.default_backend() != "cpu":
        raise UsageError(f"model.attention=cpu_kernel runs on a CPU backend only, not {jax.default_backend()}")
    reason = cpu_attention.unavailable()
    if reason is not None:
        raise UsageError(f"model.attention=cpu_kernel is unavailable: {reason}")


def _blas(module: nn.Module, cfg: ModelConfig) -> bool:
    """Whether ``module`` computes its dense products with OpenBLAS (the init traces XLA's)."""
    return not module.is_initializing() and cpu_dense.dense_kind(cfg) == "blas"


class Attention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_btd, positions_bt, *, train: bool, cache=None, cache_index=None, prefix_b=None):
        cfg = self.cfg
        dt = jnp.dtype(cfg.dtype)
        w_d3hk = self.param(
            "qkv_kernel",
            _init(cfg.init_std, ("embed", "qkv", "heads", "head_dim")),
            (cfg.d_model, 3, cfg.n_head, cfg.head_dim),
        ).astype(dt)
        b_3hk = (
            self.param("qkv_bias", _zeros(("qkv", "heads", "head_dim")), (3, cfg.n_head, cfg.head_dim)).astype(dt)
            if cfg.bias
            else None
        )
        # q, k and v: three (b, t, h, d) dots of the one stacked kernel (one stacked dot sliced
        # afterwards would make the backward pass stitch dq, dk, dv back together).
        blas = _blas(self, cfg)

        def product(spec: str, x, w, axes: int):  # einsum contracting x's last axes with w's first
            return cpu_dense.dense(x, w, axes) if blas else jnp.einsum(spec, x, w)

        q, k, v = (
            product("btd,dhk->bthk", x_btd.astype(dt), w_d3hk[:, i], 1) + (0 if b_3hk is None else b_3hk[i])
            for i in range(3)
        )
        if cfg.position == "rotary":
            positions = positions_bt[:, :, None]
            q, k = rotary(q, positions, cfg.rope_theta), rotary(k, positions, cfg.rope_theta)
        names = ("act_batch", "act_seq", "act_heads", None)
        q, k, v = (nn.with_logical_constraint(a, names) for a in (q, k, v))
        new_cache = None
        if cache is None:
            # The parameters do not depend on which kernel computes attention, and the init's
            # forward pass (on a dummy batch of one) is traced only to create them: it takes XLA's
            # attention, so the init neither needs the C++ kernel nor splits that batch over a mesh.
            kind = "dot_product" if self.is_initializing() else training_attention(cfg)
            if prefix_b is None:
                y = attention_kernel(kind)(q, k, v)
            else:
                y = prefix_attention_kernel(kind)(q, k, v, prefix_b)
        else:
            ck, cv = cache
            k_bshd = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, cache_index, 0, 0))
            v_bshd = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, cache_index, 0, 0))
            new_cache = (k_bshd, v_bshd)
            y = attn_lib.causal_attention(q, k_bshd, v_bshd, positions_bt)
        w_hkd = self.param(
            "out_kernel",
            _init(cfg.init_std / math.sqrt(2 * cfg.n_layer), ("heads", "head_dim", "embed")),
            (cfg.n_head, cfg.head_dim, cfg.d_model),
        )
        y_btd = product("bthk,hkd->btd", y.astype(dt), w_hkd.astype(dt), 2)
        if cfg.bias:
            y_btd = y_btd + self.param("out_bias", _zeros(("embed",)), (cfg.d_model,)).astype(dt)
        y_btd = nn.Dropout(cfg.dropout)(y_btd, deterministic=not train)
        return y_btd, new_cache


class MLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_btd, *, train: bool):
        cfg = self.cfg
        dt = jnp.dtype(cfg.dtype)
        dot_general = cpu_dense.dot_general if _blas(self, cfg) else None

        def dense(features, names, std, name):
            return nn.Dense(
                features,
                use_bias=cfg.bias,
                dtype=dt,
                kernel_init=_init(std, names),
                bias_init=_zeros(names[-1:]),
                dot_general=dot_general,
                name=name,
            )

        if cfg.mlp == "gelu":
            h_btf = jax.nn.gelu(dense(cfg.ff_dim, ("embed", "mlp"), cfg.init_std, "fc")(x_btd), approximate=True)
        else:
            gate_btf = dense(cfg.ff_dim, ("embed", "mlp"), cfg.init_std, "gate")(x_btd)
            up_btf = dense(cfg.ff_dim, ("embed", "mlp"), cfg.init_std, "fc")(x_btd)
            h_btf = jax.nn.silu(gate_btf) * up_btf
        h_btf = nn.with_logical_constraint(h_btf, ("act_batch", "act_seq", "act_mlp"))
        y_btd = dense(cfg.d_model, ("mlp", "embed"), cfg.init_std / math.sqrt(2 * cfg.n_layer), "proj")(h_btf)
        return nn.Dropout(cfg.dropout)(y_btd, deterministic=not train)


class Block(nn.Module):
    """One transformer block: ``(x_btd, layer_cache) -> (x_btd, new_layer_cache)`` (the caches
    ``None`` without a KV cache), in the carry-first form ``nn.scan`` takes."""

    cfg: ModelConfig
    train: bool = False

    @nn.compact
    def __call__(self, x_btd, cache, positions_bt, cache_index, prefix_b=None):
        h_btd = _norm(self.cfg, "ln_1")(x_btd)
        a_btd, new_cache = Attention(self.cfg, name="attn")(
            h_btd, positions_bt, train=self.train, cache=cache, cache_index=cache_index, prefix_b=prefix_b
        )
        x_btd = x_btd + a_btd
        x_btd = x_btd + MLP(self.cfg, name="mlp")(_norm(self.cfg, "ln_2")(x_btd), train=self.train)
        return constrain_residual(x_btd), new_cache


def _layers(
    cfg: ModelConfig, train: bool, x_btd, cache: Cache | None, positions_bt, cache_index, prefix_b, layers_fn=None
):
    """The ``n_layer`` blocks: ``h_0 .. h_{n-1}`` in a Python loop, or with ``model.scan_layers``
    one block ``h`` under ``nn.scan`` whose parameters carry a leading ``layers`` axis (the KV
    cache is stacked into that axis for the scan and handed back per layer); ``layers_fn``
    (``GPT.layers_fn``) applies those stacked parameters instead of the scan."""
    # model.remat: a training forward keeps each block's input only; the backward recomputes the rest
    block = nn.remat(Block, prevent_cse=not cfg.scan_layers) if cfg.remat and train and cache is None else Block
    if not cfg.scan_layers:
        new_cache: Cache = []
        for i in range(cfg.n_layer):
            x_btd, layer_cache = block(cfg, train, name=f"h_{i}")(
                x_btd, None if cache is None else cache[i], positions_bt, cache_index, prefix_b
            )
            new_cache.append(layer_cache)
        return x_btd, new_cache
    scanned = nn.scan(
        block,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
        length=cfg.n_layer,
        metadata_params={nn.PARTITION_NAME: LAYERS_AXIS},
    )
    blocks = scanned(cfg, train, name="h")
    if layers_fn is not None and cache is None:
        return layers_fn(blocks.variables["params"], x_btd, positions_bt), []
    stacked = None if cache is None else jax.tree.map(lambda *a: jnp.stack(a), *cache)
    x_btd, stacked = blocks(x_btd, stacked, positions_bt, cache_index, prefix_b)
    if cache is None:
        return x_btd, []
    return x_btd, [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(cfg.n_layer)]


def stack_layers(params: dict, n_layer: int) -> dict:
    """A parameter tree of the looped layout (``h_0 .. h_{n-1}``) in the scanned layout (``h``,
    each leaf stacked on a leading layer axis); the other entries unchanged."""
    layers = [params[f"h_{i}"] for i in range(n_layer)]
    out = {k: v for k, v in params.items() if not (k.startswith("h_") and k[2:].isdigit())}
    out["h"] = jax.tree.map(lambda *a: jnp.stack(a), *layers)
    return out


def unstack_layers(params: dict, n_layer: int) -> dict:
    """The inverse of :func:`stack_layers`."""
    out = {k: v for k, v in params.items() if k != "h"}
    for i in range(n_layer):
        out[f"h_{i}"] = jax.tree.map(lambda a, i=i: a[i], params["h"])
    return out


class GPT(nn.Module):
    cfg: ModelConfig
    layers_fn: Any = None
    """With ``model.scan_layers``: ``layers_fn(stacked_block_params, x_btd, positions_bt) -> x_btd``
    runs the blocks in place of ``nn.scan`` (the train step's pipeline, scaling.train.pipeline);
    not at init, nor with a KV cache."""

    @nn.compact
    def __call__(
        self,
        tokens_bt: jax.Array,
        *,
        train: bool = False,
        cache: Cache | None = None,
        cache_index: jax.Array | int | None = None,
        prefix_b: jax.Array | None = None,
    ):
        cfg = self.cfg
        b, t = tokens_bt.shape
        start = 0 if cache is None else cache_index
        positions_bt = jnp.broadcast_to(start + jnp.arange(t), (b, t))
        wte = nn.Embed(
            cfg.padded_vocab, cfg.d_model, embedding_init=_init(cfg.init_std, ("vocab", "embed")), name="wte"
        )
        x_btd = wte(tokens_bt).astype(jnp.float32)
        if cfg.position == "learned":
            wpe = self.param("wpe", _init(cfg.init_std, ("position", "embed")), (cfg.seq_len, cfg.d_model), jnp.float32)
            x_btd = x_btd + jax.lax.dynamic_slice_in_dim(wpe, start, t)[None]  # positions start..start+t-1
        x_btd = nn.Dropout(cfg.dropout)(x_btd, deterministic=not train)
        x_btd = constrain_residual(x_btd)
        layers_fn = None if self.is_initializing() else self.layers_fn
        x_btd, new_cache = _layers(cfg, train, x_btd, cache, positions_bt, cache_index, prefix_b, layers_fn)
        x_btd = _norm(cfg, "ln_f")(x_btd)
        blas = _blas(self, cfg)
        if cfg.tie_embeddings and blas:
            logits_btv = cpu_dense.dense_t(x_btd.astype(jnp.float32), wte.embedding)
        elif cfg.tie_embeddings:
            logits_btv = wte.attend(x_btd.astype(jnp.dtype(cfg.dtype)))
        else:
            logits_btv = nn.Dense(
                cfg.padded_vocab,
                use_bias=False,
                dtype=jnp.dtype(cfg.dtype),
                kernel_init=_init(cfg.init_std, ("embed", "vocab")),
                dot_general=cpu_dense.dot_general if blas else None,
                name="lm_head",
            )(x_btd)
        logits_btv = logits_btv.astype(jnp.float32)
        if cfg.padded_vocab != cfg.vocab_size:
            logits_btv = jnp.where(jnp.arange(cfg.padded_vocab) < cfg.vocab_size, logits_btv, NEG_INF)
        if cache is None:
            return logits_btv
        return logits_btv, new_cache


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = jnp.float32) -> Cache:
    shape = (batch, max_len, cfg.n_head, cfg.head_dim)
    return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.n_layer)]
