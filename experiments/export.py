"""Export a training run as a Hugging Face GPT-2 checkpoint (config.json, model.safetensors, tokenizer).

    python -m experiments.export --run RUN_DIR --out DIR [--dtype float32|bfloat16|float16]

The run's latest checkpoint is written so that ``transformers.GPT2LMHeadModel.from_pretrained(DIR)``
(and ``python -m experiments.generate --hf-gpt2 DIR``) loads it, with the tokenizer files
(vocab.json, merges.txt, tokenizer.json, tokenizer_config.json) from which
``transformers.AutoTokenizer.from_pretrained(DIR)`` encodes text to the ids the run trained on
(a gpt2 run needs r50k_base in TIKTOKEN_CACHE_DIR, as its training did). Only what GPT-2 can express
is exported: learned positions, LayerNorm, biases, the tanh-GELU MLP, the causal objective and
the gpt2 or byte tokenizer; any other setting is refused with one line naming it (exit 2),
before the checkpoint is read. DIR must be new, empty or a previous export. config.json's
``scaling_tokenizer`` names the vocabulary of the ids (byte: UTF-8 bytes, end-of-text 256).
The config.json written goes to stderr; one JSON line to stdout: run, out, dtype, tokenizer,
vocab_size and the files' sizes in bytes.
"""

from __future__ import annotations

import argparse
import json
import sys

from scaling.errors import ArgumentParser, UsageError, check_out_dir, exit_on_usage_error


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m experiments.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a training run directory (experiments.train --out)")
    p.add_argument("--out", required=True, metavar="DIR", help="the GPT-2 checkpoint directory to write")
    p.add_argument(
        "--dtype",
        default="float32",
        metavar="DTYPE",
        help="dtype of the written weights: float32 (the default: exact, the parameters are float32), "
        "bfloat16 or float16",
    )
    return p


@exit_on_usage_error
def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    if not args.run.strip():
        raise UsageError("--run must name a directory, got an empty path")
    out = check_out_dir(args.out)
    from scaling.inference import export  # jax is imported only once the arguments are valid

    hf_config = export.export_run(args.run, out, dtype=args.dtype)
    print(json.dumps(hf_config, indent=2), file=sys.stderr)
    summary = {
        "run": args.run,
        "out": str(out),
        "dtype": args.dtype,
        "tokenizer": hf_config["scaling_tokenizer"],
        "vocab_size": hf_config["vocab_size"],
        "files": export.exported_files(out),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
