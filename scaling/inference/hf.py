"""Read a Hugging Face GPT-2 checkpoint directory into the Flax GPT's parameters, offline.

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

The tokenizer is ``gpt2`` (tiktoken's r50k_base, read from the local cache), or the one
``config.json``'s ``scaling_tokenizer`` names (``gpt2`` or ``byte``: this project's exports,
:mod:`scaling.inference.export`); :func:`scaling.inference.load.load_gpt2` puts both together.
Weights may be float32, bfloat16 or float16 (the parameters are float32). The safetensors files
are read with a small reader of their documented layout (8-byte little-endian header size, a
JSON header, raw little-endian tensors); without safetensors weights, ``pytorch_model.bin`` (or
its shards) is read with PyTorch (``weights_only``: tensors only, no code), imported then.
Every missing or unreadable file, malformed header (a size past the file, non-JSON, offsets
outside the data, an unknown dtype), index entry outside the directory, unsupported option,
missing tensor or wrong shape is a :class:`~scaling.errors.UsageError` naming it.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from scaling.config import ModelConfig
from scaling.errors import UsageError, read_input_text
from scaling.model import GPT

_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of older checkpoints
TOKENIZERS = ("gpt2", "byte")  # the vocabularies config.json's scaling_tokenizer may name


def _bad(path: Path, why: str) -> UsageError:
    return UsageError(f"{path} is not a readable safetensors file: {why}")


def _uints(v: Any, n: int | None = None) -> bool:
    """A JSON list of non-negative integers (of length n when given)."""
    return (
        isinstance(v, list)
        and (n is None or len(v) == n)
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
    )


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of one ``.safetensors`` file as numpy arrays (memory-mapped). The header is
    checked before any tensor is read: its size fits the file, it is a JSON object, and every
    tensor has a known dtype, a shape of non-negative integers and offsets inside the data
    that match its size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _bad(path, f"{len(head)} bytes, shorter than the 8-byte header size")
            (n,) = struct.unpack("<Q", head)
            if n <= 0 or 8 + n > size:
                raise _bad(path, f"header size {n} out of range for a file of {size} bytes")
            raw = f.read(n)
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if size > 8 + n else np.zeros(0, np.uint8)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested past the stack
        raise _bad(path, "the header is not JSON") from None
    if not isinstance(header, dict):
        raise _bad(path, "the header is not a JSON object")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not (
            isinstance(info, dict)
            and isinstance(info.get("dtype"), str)
            and _uints(info.get("shape"))
            and _uints(info.get("data_offsets"), 2)
        ):
            raise _bad(
                path,
                f"tensor {str(name)[:40]!r} needs a dtype name, and a shape and two data_offsets "
                f"of non-negative integers",
            )
        dt, shape, (lo, hi) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        if dt == "BF16":
            np_dt = np.dtype(ml_dtypes.bfloat16)
        elif dt in _DTYPES:
            np_dt = np.dtype(_DTYPES[dt]).newbyteorder("<")
        else:
            raise UsageError(f"{path}: tensor {name} has unsupported dtype {dt[:20]!r}")
        count = math.prod(shape)
        if not lo <= hi <= len(data) or hi - lo != np_dt.itemsize * count:
            raise UsageError(
                f"{path} is truncated or corrupt (tensor {name}: bytes [{lo}, {hi}) of {len(data)}, "
                f"{count} x {np_dt.itemsize} expected)"
            )
        out[name] = np.frombuffer(data, dtype=np_dt, count=count, offset=lo).reshape(shape)
    return out


def read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise UsageError(f"not a Hugging Face GPT-2 directory (no config.json): {model_dir}")
    try:
        hf = json.loads(read_input_text(path, "config.json"))
    except (ValueError, RecursionError) as e:
        raise UsageError(f"{path} is not valid JSON: {str(e)[:80]}") from None
    if not isinstance(hf, dict):
        raise UsageError(f"{path} is not a JSON object")
    if hf.get("model_type") != "gpt2":
        raise UsageError(f"{path}: model_type is {hf.get('model_type')!r}, expected 'gpt2'")
    return hf


def _get(hf: dict, key: str, typ: type, default: Any = None) -> Any:
    """``hf[key]`` as ``typ`` (int: a JSON integer; float: a JSON number; bool), or ``default``
    when absent; UsageError naming the key otherwise."""
    v = hf.get(key, default)
    if v is None:
        if default is None:
            raise UsageError(f"config.json lacks {key}")
        return default
    ok = (
        isinstance(v, bool)
        if typ is bool
        else not isinstance(v, bool) and isinstance(v, int if typ is int else (int, float))
    )
    if not ok:
        raise UsageError(f"config.json: {key} must be {typ.__name__}, got {str(v)[:40]!r}")
    return typ(v)


def tokenizer_name(hf: dict) -> str:
    """The tokenizer of a GPT-2 ``config.json``: its ``scaling_tokenizer`` (written by this
    project's export), else ``gpt2``."""
    name = hf.get("scaling_tokenizer", "gpt2")
    if name not in TOKENIZERS:
        raise UsageError(f"config.json: scaling_tokenizer {str(name)[:40]!r} is not one of {', '.join(TOKENIZERS)}")
    return name


def model_config(hf: dict, n_vocab_tokenizer: int = 50257) -> ModelConfig:
    """The ModelConfig equivalent to a GPT-2 ``config.json`` (refusing options it lacks)."""
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        raise UsageError(
            f"config.json: activation_function {str(act)[:40]!r} is not supported (only the tanh GELU, gelu_new)"
        )
    for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if hf.get(flag):
            raise UsageError(f"config.json: {flag}=true is not supported")
    if hf.get("scale_attn_weights") is False:
        raise UsageError("config.json: scale_attn_weights=false is not supported")
    vocab = _get(hf, "vocab_size", int, 50257)
    if vocab < n_vocab_tokenizer:
        name = tokenizer_name(hf)
        raise UsageError(
            f"config.json: vocab_size {vocab} is smaller than the {name} tokenizer's {n_vocab_tokenizer} ids"
        )
    try:
        return ModelConfig(
            n_layer=_get(hf, "n_layer", int),
            n_head=_get(hf, "n_head", int),
            d_model=_get(hf, "n_embd", int),
            d_ff=_get(hf, "n_inner", int, 0),
            seq_len=_get(hf, "n_positions", int),
            vocab_size=vocab,
            vocab_multiple=1,
            position="learned",
            norm="layernorm",
            norm_eps=_get(hf, "layer_norm_epsilon", float, 1e-5),
            bias=True,
            tie_embeddings=_get(hf, "tie_word_embeddings", bool, True),
            mlp="gelu",
            dropout=0.0,
        )
    except UsageError as e:
        if str(e).startswith("config.json"):
            raise
        raise UsageError(f"config.json: {e}") from None


def _shard_path(model_dir: Path, index: Path, name: Any) -> Path:
    """A shard named by the index: a relative path inside the model directory (no absolute
    path, no '..'); a symbolic link inside it is followed, as in the Hugging Face cache."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise UsageError(f"{index} is not a valid weights index: weight_map value {str(name)[:40]!r}")
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or PureWindowsPath(name).drive:
        raise UsageError(f"{index} names a weight file outside {model_dir}: {name[:80]!r}")
    return model_dir / p


def read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch ``state_dict`` file as float32 numpy arrays (bfloat16 has no
    numpy dtype in PyTorch), read with ``weights_only=True``: tensors and containers only."""
    try:
        import torch  # optional: only PyTorch checkpoints need it
    except ImportError:
        raise UsageError(f"reading {path.name} needs PyTorch: pip install 'scaling[hf]'") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a PyTorch file, or objects weights_only refuses
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"{path} is not a readable PyTorch checkpoint: {first[:120]}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UsageError(f"{path} is not a PyTorch state_dict (a mapping of names to tensors)")
    return {str(k): v.detach().to(torch.float32).numpy() for k, v in sd.items()}


def _read_index(model_dir: Path, index: Path, read, what: str) -> dict[str, np.ndarray]:
    """The tensors of every shard an index (``*.index.json`` of ``what`` files) lists, each
    read with ``read``."""
    try:
        idx = json.loads(read_input_text(index, f"{what} index"))
    except (ValueError, RecursionError) as e:
        raise UsageError(f"{index} is not a valid {what} index: {str(e)[:80]}") from None
    weight_map = idx.get("weight_map") if isinstance(idx, dict) else None
    if not isinstance(weight_map, dict):
        raise UsageError(f"{index} is not a valid {what} index: no weight_map object")
    tensors = {}
    for path in sorted({_shard_path(model_dir, index, name) for name in weight_map.values()}):
        if not path.is_file():
            raise UsageError(f"{path} (listed in {index.name}) is missing")
        tensors.update(read(path))
    return tensors


def read_weights(model_dir: Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors, named without the ``transformer.`` prefix: from
    ``model.safetensors``, its shards, or else ``pytorch_model.bin`` or its shards."""
    st, st_index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    pt, pt_index = model_dir / "pytorch_model.bin", model_dir / "pytorch_model.bin.index.json"
    if st.is_file():
        tensors = read_safetensors(st)
    elif st_index.is_file():
        tensors = _read_index(model_dir, st_index, read_safetensors, "safetensors")
    elif pt.is_file():
        tensors = read_torch_bin(pt)
    elif pt_index.is_file():
        tensors = _read_index(model_dir, pt_index, read_torch_bin, "PyTorch")
    else:
        raise UsageError(f"no model.safetensors (or pytorch_model.bin) in {model_dir}")
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
                "fc": {
                    "kernel": get(f"{p}.mlp.c_fc.weight", (d, cfg.ff_dim)),
                    "bias": get(f"{p}.mlp.c_fc.bias", (cfg.ff_dim,)),
                },
                "proj": {
                    "kernel": get(f"{p}.mlp.c_proj.weight", (cfg.ff_dim, d)),
                    "bias": get(f"{p}.mlp.c_proj.bias", (d,)),
                },
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


def check_tree(cfg: ModelConfig, params: dict) -> None:
    """The converted tree has exactly the Flax model's parameters and shapes."""
    expected = jax.eval_shape(lambda: GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
    exp = {
        jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(nn.unbox(expected["params"]))
    }
    got = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(params)}
    if exp != got:
        diff = sorted(set(exp.items()) ^ set(got.items()))
        raise UsageError(f"converted GPT-2 weights do not fit the model: {diff[:3]}")
