"""The model-source options shared by generate and evaluate: a training run or GPT-2 weights."""

from __future__ import annotations

import argparse

from scaling.errors import UsageError


def add_model_source(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--checkpoint", metavar="DIR", help="a training run directory (python -m experiments.train --out DIR)"
    )
    src.add_argument(
        "--hf-gpt2",
        metavar="DIR",
        help="a Hugging Face GPT-2 directory (config.json + model.safetensors or pytorch_model.bin; float32, "
        "bfloat16 or float16 weights), such as python -m experiments.export writes",
    )


def load_model(args: argparse.Namespace):
    """The model named by --checkpoint or --hf-gpt2 (imports jax only now)."""
    flag, path = ("--checkpoint", args.checkpoint) if args.checkpoint is not None else ("--hf-gpt2", args.hf_gpt2)
    if not str(path).strip():
        raise UsageError(f"{flag} must name a directory, got an empty path")
    from scaling.inference import load_checkpoint, load_gpt2

    return load_checkpoint(path) if args.checkpoint is not None else load_gpt2(path)
