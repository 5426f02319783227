"""Low-rank adapters (LoRA) on the GPT's kernels, as a parameter transform.

An adapted kernel W, seen as a matrix (inputs, outputs), becomes W + (alpha / rank) A B with
A (inputs, rank) drawn from N(0, 1/inputs) and B (rank, outputs) zero: at init the model is
the base model exactly, and only A and B (and a task head) train while W stays frozen. The
sum is formed once per step (:func:`merge`) and the GPT runs on the merged tree, so every
attention kernel and the KV-cache decoder serve an adapted model unchanged.

Targets (``lora.targets``): ``qkv`` (``attn/qkv_kernel``, d -> 3 h k), ``out``
(``attn/out_kernel``, h k -> d), ``fc`` and ``proj`` (the MLP's ``mlp/fc`` and ``mlp/proj``
kernels). Parameters are in the looped layer layout (``h_0 .. h_{n-1}``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from scaling.finetune_config import LoraConfig

PATHS = {
    "qkv": ("attn", "qkv_kernel"),
    "out": ("attn", "out_kernel"),
    "fc": ("mlp", "fc", "kernel"),
    "proj": ("mlp", "proj", "kernel"),
}
IN_DIMS = {"qkv": 1, "out": 2, "fc": 1, "proj": 1}  # leading kernel axes that are the inputs


def _get(tree: dict, path: tuple[str, ...]) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def _set(tree: dict, path: tuple[str, ...], value: Any) -> dict:
    """A copy of ``tree`` with ``value`` at ``path`` (the dicts along it copied, the rest shared)."""
    if len(path) == 1:
        return {**tree, path[0]: value}
    return {**tree, path[0]: _set(tree[path[0]], path[1:], value)}


def adapter_names(cfg: LoraConfig, n_layer: int) -> list[tuple[int, str]]:
    return [(i, t) for i in cfg.layer_list(n_layer) or () for t in cfg.target_list()]


def init_adapters(cfg: LoraConfig, params: dict, n_layer: int, key: jax.Array) -> dict:
    """``{"h_<i>/<target>": {"a": (inputs, rank), "b": (rank, outputs)}}`` for the adapted kernels."""
    out = {}
    for j, (i, t) in enumerate(adapter_names(cfg, n_layer)):
        w = _get(params[f"h_{i}"], PATHS[t])
        n_in = math.prod(w.shape[: IN_DIMS[t]])
        n_out = math.prod(w.shape[IN_DIMS[t] :])
        a = jax.random.normal(jax.random.fold_in(key, j), (n_in, cfg.rank), jnp.float32) / math.sqrt(n_in)
        out[f"h_{i}/{t}"] = {"a": a, "b": jnp.zeros((cfg.rank, n_out), jnp.float32)}
    return out


def merge(cfg: LoraConfig, params: dict, adapters: dict) -> dict:
    """The base parameters with each adapted kernel W replaced by W + (alpha / rank) A B."""
    scale = cfg.alpha / cfg.rank
    for name, ab in adapters.items():
        layer, t = name.split("/")
        path = (layer, *PATHS[t])
        w = _get(params, path)
        delta = (ab["a"] @ ab["b"]).reshape(w.shape) * scale
        params = _set(params, path, (w + delta).astype(w.dtype))
    return params


def count(tree: Any) -> int:
    return int(sum(x.size for x in jax.tree.leaves(tree)))
