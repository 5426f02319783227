"""A model ready for inference: a trained run's latest checkpoint or a GPT-2 directory, with
its tokenizer, its parameters on one device (decoding and evaluation are not sharded)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

from scaling import tokenizer as tok
from scaling.config import ModelConfig
from scaling.data import load_tokens
from scaling.errors import UsageError
from scaling.inference import hf
from scaling.train.trained import load_run


@dataclass(frozen=True)
class InferenceModel:
    """A model ready to decode: its config, parameters and tokenizer (a tiktoken Encoding)."""

    cfg: ModelConfig
    params: Any
    encoding: Any
    source: str = ""

    @property
    def eot(self) -> int:
        return tok.eot_id(self.encoding)

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def decode(self, ids: Sequence[int]) -> str:
        n = self.encoding.n_vocab
        return self.encoding.decode([int(i) for i in ids if 0 <= int(i) < n and int(i) != self.eot])


def load_checkpoint(run_dir: str | Path) -> InferenceModel:
    """The latest checkpoint of a training run directory, with its tokenizer."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"checkpoint directory not found: {run_dir}")
    cfg, params = load_run(run_dir)
    name = cfg.data.tokenizer
    if name.startswith("bpe:"):  # the trained ranks are keyed by the corpus content
        enc = load_tokens(cfg.data).encoding
    else:
        enc = tok.get_tokenizer(name)
    params = jax.device_put(jax.device_get(params))
    return InferenceModel(cfg.model, params, enc, source=str(run_dir))


def load_gpt2(model_dir: str | Path) -> InferenceModel:
    """A Hugging Face GPT-2 directory (config.json and safetensors or PyTorch weights) with the
    gpt2 tokenizer, or the byte tokenizer where config.json's ``scaling_tokenizer`` says so."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UsageError(f"Hugging Face GPT-2 directory not found: {model_dir}")
    hf_config = hf.read_config(model_dir)
    enc = tok.get_tokenizer(hf.tokenizer_name(hf_config))
    cfg = hf.model_config(hf_config, enc.n_vocab)
    params = hf.convert(cfg, hf.read_weights(model_dir))
    hf.check_tree(cfg, params)
    return InferenceModel(cfg, jax.device_put(params), enc, source=str(model_dir))
