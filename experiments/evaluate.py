"""Loss, perplexity and bits per byte of a model on a text file.

    python -m experiments.evaluate (--checkpoint DIR | --hf-gpt2 DIR) --text FILE [--stride S] [--batch-size B]

The file is tokenized whole (end-of-text prepended, so its first token is scored too)
and scored over sliding windows of the model's context: every token is scored exactly
once, each (after the first window) with at least context - stride tokens before it.
Prints one JSON object: loss (mean nats per token), perplexity (exp(loss)),
bits_per_byte (total nats / ln 2 / the file's UTF-8 bytes), tokens, bytes, windows,
context, stride. The settings go to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import yaml

from experiments.model_source import add_model_source, load_model
from scaling import host_memory
from scaling.errors import ArgumentParser, UsageError, exit_on_usage_error, read_input_text


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m experiments.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_source(p)
    p.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text file to score")
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        metavar="S",
        help="tokens between window starts, in [1, context] (default: half the context)",
    )
    p.add_argument("--batch-size", type=int, default=8, metavar="B", help="windows per forward pass (default 8)")
    return p


@exit_on_usage_error
def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    host_memory.apply()  # before any computation: steps reuse freed host memory
    path = Path(args.text)
    text = read_input_text(path, "text file", errors="replace")
    if not text:
        raise UsageError(f"text file is empty: {path}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    from scaling import compile_cache, evaluation  # jax is imported only once the arguments are valid
    from scaling.tokenizer import token_byte_lengths

    compile_cache.enable()

    model = load_model(args)
    if args.stride is not None and not 1 <= args.stride <= model.cfg.seq_len:
        raise UsageError(f"--stride must be in [1, {model.cfg.seq_len}] (the model's context), got {args.stride}")
    evaluation.check_memory(model.cfg, args.batch_size, model.cfg.seq_len, "evaluating", "--batch-size")
    print(
        yaml.safe_dump(
            {
                "source": model.source,
                "model": dataclasses.asdict(model.cfg),
                "text": str(path),
                "stride": args.stride or max(model.cfg.seq_len // 2, 1),
            },
            sort_keys=False,
        ),
        file=sys.stderr,
    )
    result = evaluation.evaluate_tokens(
        model.cfg,
        model.params,
        model.encode(text),
        bos=model.eot,
        byte_lengths=token_byte_lengths(model.encoding),
        stride=args.stride,
        batch_size=args.batch_size,
    )
    out = result.to_dict()
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
