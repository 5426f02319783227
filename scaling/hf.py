"""Load a Hugging Face GPT-2 checkpoint directory into the Flax GPT, offline.

A directory written by ``GPT2LMHeadModel.save_pretrained`` holds ``config.json`` and
``model.safetensors`` (or shards listed in ``model.safetensors.index.json``). Tensor
names may carry the ``transformer.`` prefix (``save_pretrained``) or not (the original
OpenAI-converted files). GPT-2's ``Conv1D`` stores weights as (in, out), y = x @ W + b:

    wte.weight (V, d)           -> wte/embedding (padded to cfg.padded_vocab rows)
    wpe.weight (n_ctx, d)       -> wpe
    h.i.ln_{1,2}.{weight,bias}  -> h_i/ln_{1,2}/{scale,bias}
    h.i.attn.c_attn (d, 3d)     -> h_i/attn/qkv_kernel (d, 3, H, hd), qkv_bias (3, H, hd)
    h.i.attn.c_proj (d, d)      -> h_i/attn/out_kernel (H, hd, d), out_bias
    h.i.mlp.c_fc, mlp.c_proj    -> h_i/mlp/fc, h_i/mlp/proj {kernel, bias}
    ln_f                        -> ln_f
    lm_head.weight (V, d)       -> lm_head/kernel (d, V) when embeddings are not tied

The tokenizer is ``gpt2`` (tiktoken's r50k_base, read from the local cache). The
safetensors files are read with a small reader of their documented layout (8-byte
little-endian header size, a JSON header, raw little-endian tensors), so nothing beyond
numpy is needed. Every missing file, unsupported option, missing tensor or wrong shape
is a :class:`~scaling.errors.UsageError` naming it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from scaling.config import ModelConfig
from scaling.errors import UsageError

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
           "U8": np.uint8, "BOOL": np.bool_}
_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older checkpoints


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of one ``.safetensors`` file as numpy arrays (memory-mapped)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or 8 + n > size:
                raise ValueError("header size out of range")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        raise UsageError(f"{path} is not a readable safetensors file: {e}") from None
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if size > 8 + n else np.zeros(0, np.uint8)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt, shape, (lo, hi) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        if dt == "BF16":
            import ml_dtypes
            np_dt = np.dtype(ml_dtypes.bfloat16)
        elif dt in _DTYPES:
            np_dt = np.dtype(_DTYPES[dt]).newbyteorder("<")
        else:
            raise UsageError(f"{path}: tensor {name} has unsupported dtype {dt}")
        if hi > len(data) or hi - lo != np_dt.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise UsageError(f"{path} is truncated or corrupt (tensor {name})")
        out[name] = np.frombuffer(data, dtype=np_dt, count=int(np.prod(shape, dtype=np.int64)),
                                  offset=lo).reshape(shape)
    return out


def read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise UsageError(f"not a Hugging Face GPT-2 directory (no config.json): {model_dir}")
    try:
        hf = json.loads(path.read_text())
    except ValueError as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from None
    if hf.get("model_type") != "gpt2":
        raise UsageError(f"{path}: model_type is {hf.get('model_type')!r}, expected 'gpt2'")
    return hf


def model_config(hf: dict, n_vocab_tokenizer: int = 50257) -> ModelConfig:
    """The ModelConfig equivalent to a GPT-2 ``config.json`` (refusing options it lacks)."""
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        raise UsageError(f"config.json: activation_function {act!r} is not supported (only the tanh GELU, gelu_new)")
    for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if hf.get(flag):
            raise UsageError(f"config.json: {flag}=true is not supported")
    if hf.get("scale_attn_weights") is False:
        raise UsageError("config.json: scale_attn_weights=false is not supported")
    vocab = int(hf.get("vocab_size", 50257))
    if vocab < n_vocab_tokenizer:
        raise UsageError(f"config.json: vocab_size {vocab} is smaller than the gpt2 tokenizer's "
                         f"{n_vocab_tokenizer} ids")
    try:
        return ModelConfig(n_layer=int(hf["n_layer"]), n_head=int(hf["n_head"]), d_model=int(hf["n_embd"]),
                           d_ff=int(hf.get("n_inner") or 0), seq_len=int(hf["n_positions"]), vocab_size=vocab,
                           vocab_multiple=1, position="learned", norm="layernorm",
                           norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), bias=True,
                           tie_embeddings=bool(hf.get("tie_word_embeddings", True)), mlp="gelu", dropout=0.0)
    except KeyError as e:
        raise UsageError(f"config.json lacks {e.args[0]}") from None


def read_weights(model_dir: Path) -> dict[str, np.ndarray]:
    single, index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if single.is_file():
        tensors = read_safetensors(single)
    elif index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as e:
            raise UsageError(f"{index} is not a valid safetensors index: {e}") from None
        tensors = {}
        for name in files:
            if not (model_dir / name).is_file():
                raise UsageError(f"{model_dir / name} (listed in {index.name}) is missing")
            tensors.update(read_safetensors(model_dir / name))
    else:
        raise UsageError(f"no model.safetensors in {model_dir} (only safetensors weights are read)")
    return {k.removeprefix("transformer."): v for k, v in tensors.items() if not k.endswith(_BUFFERS)}


def convert(cfg: ModelConfig, w: dict[str, np.ndarray]) -> dict[str, Any]:
    """The Flax parameter tree (float32 numpy arrays) from GPT-2 tensors named without prefix."""
    d, H, hd = cfg.d_model, cfg.n_head, cfg.head_dim

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in w:
            raise UsageError(f"model.safetensors lacks tensor {name!r}")
        a = w[name]
        if tuple(a.shape) != shape:
            raise UsageError(f"model.safetensors: {name} has shape {tuple(a.shape)}, config.json implies {shape}")
        return np.asarray(a, dtype=np.float32)

    wte = get("wte.weight", (cfg.vocab_size, d))
    if cfg.padded_vocab > cfg.vocab_size:
        wte = np.concatenate([wte, np.zeros((cfg.padded_vocab - cfg.vocab_size, d), np.float32)])
    params: dict[str, Any] = {"wte": {"embedding": wte}, "wpe": get("wpe.weight", (cfg.seq_len, d))}
    ln = lambda p: {"scale": get(f"{p}.weight", (d,)), "bias": get(f"{p}.bias", (d,))}  # noqa: E731
    for i in range(cfg.n_layer):
        p = f"h.{i}"
        params[f"h_{i}"] = {
            "ln_1": ln(f"{p}.ln_1"),
            "ln_2": ln(f"{p}.ln_2"),
            "attn": {
                "qkv_kernel": get(f"{p}.attn.c_attn.weight", (d, 3 * d)).reshape(d, 3, H, hd),
                "qkv_bias": get(f"{p}.attn.c_attn.bias", (3 * d,)).reshape(3, H, hd),
                "out_kernel": get(f"{p}.attn.c_proj.weight", (d, d)).reshape(H, hd, d),
                "out_bias": get(f"{p}.attn.c_proj.bias", (d,)),
            },
            "mlp": {
                "fc": {"kernel": get(f"{p}.mlp.c_fc.weight", (d, cfg.ff_dim)),
                       "bias": get(f"{p}.mlp.c_fc.bias", (cfg.ff_dim,))},
                "proj": {"kernel": get(f"{p}.mlp.c_proj.weight", (cfg.ff_dim, d)),
                         "bias": get(f"{p}.mlp.c_proj.bias", (d,))},
            },
        }
    params["ln_f"] = ln("ln_f")
    if not cfg.tie_embeddings:
        if "lm_head.weight" not in w:
            raise UsageError("model.safetensors lacks lm_head.weight (config.json says the head is not tied)")
        head = get("lm_head.weight", (cfg.vocab_size, d)).T
        if cfg.padded_vocab > cfg.vocab_size:
            head = np.concatenate([head, np.zeros((d, cfg.padded_vocab - cfg.vocab_size), np.float32)], axis=1)
        params["lm_head"] = {"kernel": head}
    return params


def _check_tree(cfg: ModelConfig, params: dict) -> None:
    """The converted tree has exactly the Flax model's parameters and shapes."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from scaling.model import GPT

    expected = jax.eval_shape(lambda: GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
    exp = {jax.tree_util.keystr(k): v.shape
           for k, v in jax.tree_util.tree_leaves_with_path(nn.unbox(expected["params"]))}
    got = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(params)}
    if exp != got:
        diff = sorted(set(exp.items()) ^ set(got.items()))
        raise UsageError(f"converted GPT-2 weights do not fit the model: {diff[:3]}")


def load_gpt2(model_dir: str | Path):
    """An :class:`scaling.generate.InferenceModel` from a Hugging Face GPT-2 directory."""
    from scaling.generate import InferenceModel
    from scaling.tokenizer import get_tokenizer

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UsageError(f"Hugging Face GPT-2 directory not found: {model_dir}")
    hf = read_config(model_dir)
    enc = get_tokenizer("gpt2")
    cfg = model_config(hf, enc.n_vocab)
    params = convert(cfg, read_weights(model_dir))
    _check_tree(cfg, params)
    import jax
    return InferenceModel(cfg, jax.device_put(params), enc, source=str(model_dir))
