"""Write a model of this project as a Hugging Face GPT-2 checkpoint directory.

The directory holds ``config.json`` and ``model.safetensors`` in the layout
``GPT2LMHeadModel.save_pretrained`` writes (tensor names with the ``transformer.`` prefix,
``Conv1D`` weights as (in, out); the mapping is the inverse of :mod:`scaling.inference.hf`'s),
so ``transformers.GPT2LMHeadModel.from_pretrained(DIR)`` and :func:`scaling.inference.load_gpt2`
both read it. Beside them go the vocabulary's tokenizer files (:mod:`scaling.inference.hf_tokenizer`),
which ``transformers.AutoTokenizer.from_pretrained(DIR)`` reads into the project's tokenizer.
Nothing here needs PyTorch, transformers or the safetensors package: the files are written by
small writers of the documented layouts.

Only what GPT-2 can express is exported (:func:`unsupported` names the first setting it
cannot): learned positions, LayerNorm, biases, the tanh-GELU MLP, the causal objective, and
the ``gpt2`` or ``byte`` vocabulary. The head may be tied or not (``tie_word_embeddings``).
``model.dtype`` is the training compute dtype only: the parameters are float32 and are written
as ``float32`` (exact), ``bfloat16`` or ``float16``. The padding rows of the embedding table
(``model.vocab_multiple``) are dropped: ``vocab_size`` is the model's ``model.vocab_size``.

``config.json`` carries GPT-2's fields (``vocab_size, n_positions, n_embd, n_layer, n_head,
n_inner, layer_norm_epsilon, activation_function=gelu_new, tie_word_embeddings``), the
end-of-text id as ``bos_token_id`` and ``eos_token_id`` (the tokenizer's last id: 50256 for
gpt2, 256 for byte) and ``scaling_tokenizer`` (``gpt2`` or ``byte``), which names the
vocabulary of the ids for :func:`scaling.inference.load_gpt2` (transformers keeps it as an
attribute of the config). A ``byte`` checkpoint's ids are the UTF-8 bytes of the text, end-of-text 256.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np

from scaling import run_dir as run_dir_lib
from scaling import tokenizer as tok
from scaling.config import Config, ModelConfig
from scaling.errors import UsageError
from scaling.inference import hf_tokenizer
from scaling.io import atomic_write_bytes, atomic_write_text
from scaling.model.gpt import unstack_layers
from scaling.train.trained import load_run

__all__ = [
    "DTYPES",
    "FILES",
    "TOKENIZERS",
    "unsupported",
    "check_exportable",
    "gpt2_config",
    "gpt2_tensors",
    "write",
    "export_run",
]

FILES = ("config.json", "model.safetensors", *hf_tokenizer.FILES)
"""What an export writes (a directory holding only these may be exported into again)."""
TOKENIZERS = ("gpt2", "byte")
DTYPES = {"float32": ("F32", np.float32), "bfloat16": ("BF16", ml_dtypes.bfloat16), "float16": ("F16", np.float16)}
"""Weight dtypes of an export: name -> (safetensors dtype, numpy dtype)."""


def unsupported(cfg: Config) -> list[str]:
    """What ``cfg`` sets that a GPT-2 checkpoint cannot express, each naming its field (empty
    when the run is exportable)."""
    m, name = cfg.model, cfg.data.tokenizer
    objective = getattr(cfg.train, "objective", "causal")  # a config without the field trains the causal one
    checks = (
        (m.position == "learned", f"model.position={m.position} (GPT-2 has learned absolute positions only)"),
        (m.norm == "layernorm", f"model.norm={m.norm} (GPT-2 has LayerNorm only)"),
        (m.bias, "model.bias=false (GPT-2 has biases in every linear layer and LayerNorm)"),
        (m.mlp == "gelu", f"model.mlp={m.mlp} (GPT-2's MLP is the tanh-GELU one)"),
        (objective == "causal", f"train.objective={objective} (GPT-2 is a causal language model)"),
        (name in TOKENIZERS, f"data.tokenizer={name} (a GPT-2 export carries the gpt2 or byte vocabulary only)"),
        (
            name not in TOKENIZERS or m.vocab_size >= tok.vocab_size(name),
            f"model.vocab_size={m.vocab_size} (fewer ids than the {name} tokenizer's)",
        ),
    )
    return [why for ok, why in checks if not ok]


def check_exportable(cfg: Config) -> None:
    """UsageError naming every setting GPT-2 cannot express (before any weights are read)."""
    why = unsupported(cfg)
    if why:
        raise UsageError(f"cannot export as GPT-2: {'; '.join(why)}")


def gpt2_config(cfg: Config, dtype: str = "float32") -> dict[str, Any]:
    """The ``config.json`` of ``cfg``'s model as a GPT-2 checkpoint with ``dtype`` weights."""
    check_exportable(cfg)
    m = cfg.model
    eot = tok.vocab_size(cfg.data.tokenizer) - 1
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": m.vocab_size,
        "n_positions": m.seq_len,
        "n_embd": m.d_model,
        "n_layer": m.n_layer,
        "n_head": m.n_head,
        "n_inner": m.ff_dim,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": m.norm_eps,
        "tie_word_embeddings": m.tie_embeddings,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "embd_pdrop": m.dropout,
        "resid_pdrop": m.dropout,
        "attn_pdrop": 0.0,
        "initializer_range": m.init_std,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "dtype": dtype,
        "torch_dtype": dtype,  # the name transformers before 4.56 reads
        "use_cache": True,
        "scaling_tokenizer": cfg.data.tokenizer,
    }


def gpt2_tensors(m: ModelConfig, params: Any) -> dict[str, np.ndarray]:
    """GPT-2's tensors (float32, ``save_pretrained``'s names) from the Flax GPT's parameters
    (either layer layout; the embedding's padding rows dropped)."""
    p = jax.tree.map(lambda a: np.asarray(jax.device_get(a), dtype=np.float32), dict(params))
    if m.scan_layers:
        p = unstack_layers(p, m.n_layer)
    V, d = m.vocab_size, m.d_model
    out = {"transformer.wte.weight": p["wte"]["embedding"][:V], "transformer.wpe.weight": p["wpe"]}

    def ln(prefix: str, tree: dict) -> None:
        out[f"{prefix}.weight"], out[f"{prefix}.bias"] = tree["scale"], tree["bias"]

    for i in range(m.n_layer):
        h, pre = p[f"h_{i}"], f"transformer.h.{i}"
        ln(f"{pre}.ln_1", h["ln_1"])
        ln(f"{pre}.ln_2", h["ln_2"])
        a = h["attn"]
        out[f"{pre}.attn.c_attn.weight"] = a["qkv_kernel"].reshape(d, 3 * d)
        out[f"{pre}.attn.c_attn.bias"] = a["qkv_bias"].reshape(3 * d)
        out[f"{pre}.attn.c_proj.weight"] = a["out_kernel"].reshape(d, d)
        out[f"{pre}.attn.c_proj.bias"] = a["out_bias"]
        for name, hf_name in (("fc", "c_fc"), ("proj", "c_proj")):
            out[f"{pre}.mlp.{hf_name}.weight"] = h["mlp"][name]["kernel"]
            out[f"{pre}.mlp.{hf_name}.bias"] = h["mlp"][name]["bias"]
    ln("transformer.ln_f", p["ln_f"])
    if not m.tie_embeddings:
        out["lm_head.weight"] = p["lm_head"]["kernel"][:, :V].T
    return out


def safetensors_bytes(tensors: dict[str, np.ndarray], dtype: str = "float32") -> bytes:
    """A ``.safetensors`` file of ``tensors`` cast to ``dtype``: the 8-byte little-endian header
    size, the JSON header (padded with spaces to a multiple of 8 bytes, ``{"format": "pt"}`` as
    its metadata, which transformers requires), then the raw little-endian tensors in order."""
    st_dtype, np_dtype = DTYPES[dtype]
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        blob = np.ascontiguousarray(tensors[name], dtype=np.dtype(np_dtype).newbyteorder("<")).tobytes()
        shape = list(tensors[name].shape)
        header[name] = {"dtype": st_dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def check_out(out: Path) -> None:
    """``out`` is absent, empty or a previous export (holding only :data:`FILES`): anything else
    is refused, so that no other weights beside the new ones confuse a loader."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    others = sorted(p.name for p in out.iterdir() if p.name not in FILES)
    if others:
        listed = ", ".join(others[:3])
        raise UsageError(f"--out {out} holds files other than an export's ({listed}); give a new directory")


def write(
    out: str | Path, cfg: Config, params: Any, *, dtype: str = "float32", tokenizer: dict[str, str] | None = None
) -> dict[str, Any]:
    """Write ``cfg``'s model with ``params`` as a GPT-2 checkpoint into ``out``, with its
    tokenizer files (``tokenizer``: :func:`hf_tokenizer.tokenizer_files`'s, made here when not
    given); returns the config.json written. A previous export there is replaced: its config.json
    goes first and the new one comes last, so an interrupted export leaves no directory that
    loads mismatched files."""
    out = Path(out)
    check_dtype(dtype)
    hf_config = gpt2_config(cfg, dtype)
    check_out(out)
    if tokenizer is None:
        tokenizer = hf_tokenizer.tokenizer_files(cfg.data.tokenizer, cfg.model.seq_len)
    data = safetensors_bytes(gpt2_tensors(cfg.model, params), dtype)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").unlink(missing_ok=True)
    atomic_write_bytes(out / "model.safetensors", data)
    for name in hf_tokenizer.FILES:
        atomic_write_text(out / name, tokenizer[name])
    atomic_write_text(out / "config.json", json.dumps(hf_config, indent=2) + "\n")
    return hf_config


def export_run(run_dir: str | Path, out: str | Path, *, dtype: str = "float32") -> dict[str, Any]:
    """Export the latest checkpoint of a training run directory into ``out``; returns the
    config.json written. Everything is checked (the run's config can be expressed, ``dtype``,
    ``out``, the tokenizer's ranks can be read) before the checkpoint is read."""
    run_dir, out = Path(run_dir), Path(out)
    check_dtype(dtype)
    if not run_dir.is_dir():
        raise UsageError(f"run directory not found: {run_dir}")
    cfg = run_dir_lib.read_config(run_dir)
    check_exportable(cfg)
    check_out(out)
    tokenizer = hf_tokenizer.tokenizer_files(cfg.data.tokenizer, cfg.model.seq_len)
    cfg, params = load_run(run_dir)
    return write(out, cfg, params, dtype=dtype, tokenizer=tokenizer)


def exported_files(out: str | Path) -> dict[str, int]:
    """The files of an export with their sizes in bytes."""
    return {name: os.path.getsize(Path(out) / name) for name in FILES}
