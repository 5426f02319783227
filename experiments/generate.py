"""Generate text from a trained run or a Hugging Face GPT-2 checkpoint.

    python -m experiments.generate (--checkpoint DIR | --hf-gpt2 DIR) --prompt TEXT [--prompt TEXT ...]
        [--max-new-tokens K] [--greedy | --temperature T --top-k K --top-p P | --beam W [--length-penalty A]]
        [--seed S] [--no-cache] [--json]

Prompts are decoded together as one batch: the prompt is prefilled into a KV cache in one
call, then one token per step in a compiled loop, until the end-of-text token or
--max-new-tokens. Without --temperature/--top-k/--top-p/--beam decoding is greedy.
--no-cache recomputes the whole prefix at every step (the reference; same output).
With learned positions (GPT-2), a prompt plus --max-new-tokens longer than the model's
context is refused, and so is a request whose buffers would take more than half of the
device's memory (scaling.evaluation.check_memory). Prints each prompt and its continuation (with --json: one JSON
object per prompt: prompt, completion, new token ids, n_new, stopped at end-of-text,
and for beam search the log-probability and score); the settings and the speed go to
stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time

import yaml

from experiments.model_source import add_model_source, load_model
from scaling import host_memory
from scaling.config import SEED_MAX
from scaling.errors import ArgumentParser, UsageError, exit_on_usage_error


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m experiments.generate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_source(p)
    p.add_argument(
        "--prompt",
        action="append",
        required=True,
        metavar="TEXT",
        help="prompt text; repeat for a batch of prompts (an empty prompt starts from end-of-text)",
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=64, metavar="K", help="tokens to generate at most (default 64)"
    )
    p.add_argument("--greedy", action="store_true", help="argmax decoding (the default)")
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        metavar="T",
        help="sample from softmax(logits / T) (default 1.0 when sampling; 0 means greedy)",
    )
    p.add_argument(
        "--top-k", type=int, default=None, metavar="K", help="sample among the K most likely tokens (0: off)"
    )
    p.add_argument(
        "--top-p",
        type=float,
        default=None,
        metavar="P",
        help="sample within the nucleus: the fewest most likely tokens holding probability P (1: off)",
    )
    p.add_argument("--beam", type=int, default=None, metavar="W", help="beam search with W beams per prompt")
    p.add_argument(
        "--length-penalty",
        type=float,
        default=1.0,
        metavar="A",
        help="beam score = log-probability / n_new ** A (default 1.0; 0 ranks by log-probability)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole prefix every step (reference)")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    return p


def _strategy(args):
    from scaling.inference import GREEDY, Sampling

    sampling_given = any(v is not None for v in (args.temperature, args.top_k, args.top_p))
    if args.beam is not None and (sampling_given or args.greedy):
        raise UsageError("--beam cannot be combined with --greedy, --temperature, --top-k or --top-p")
    if args.greedy and sampling_given:
        raise UsageError("--greedy cannot be combined with --temperature, --top-k or --top-p")
    if args.beam is not None:
        if args.beam < 1:
            raise UsageError(f"--beam must be >= 1, got {args.beam}")
        if not (math.isfinite(args.length_penalty) and args.length_penalty >= 0):
            raise UsageError(f"--length-penalty must be a finite number >= 0, got {args.length_penalty}")
        return None
    if not sampling_given:
        return GREEDY
    return Sampling(
        temperature=1.0 if args.temperature is None else args.temperature,
        top_k=args.top_k or 0,
        top_p=1.0 if args.top_p is None else args.top_p,
    )


@exit_on_usage_error
def main(argv: list[str] | None = None) -> list[dict]:
    args = parser().parse_args(argv)
    host_memory.apply()  # before any computation: steps reuse freed host memory
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not 0 <= args.seed <= SEED_MAX:
        raise UsageError(f"--seed must be in [0, {SEED_MAX}], got {args.seed}")
    sampling = _strategy(args)
    from scaling import compile_cache  # jax is imported only once the arguments are valid
    from scaling import inference as gen

    compile_cache.enable()

    model = load_model(args)
    if args.top_k is not None and args.top_k > model.cfg.vocab_size:
        raise UsageError(f"--top-k {args.top_k} exceeds the vocabulary ({model.cfg.vocab_size})")
    prompts = [model.encode(text) or [model.eot] for text in args.prompt]
    # refuse a request past the context or beyond memory before any compute
    gen.plan_buffer(model.cfg, max(map(len, prompts)), args.max_new_tokens, len(prompts) * (args.beam or 1))
    settings = {
        "source": model.source,
        "model": dataclasses.asdict(model.cfg),
        "max_new_tokens": args.max_new_tokens,
        "strategy": (
            f"beam(width={args.beam}, length_penalty={args.length_penalty})"
            if sampling is None
            else "greedy"
            if sampling.is_greedy
            else str(sampling)
        ),
        "seed": args.seed,
        "cache": not args.no_cache,
    }
    print(yaml.safe_dump(settings, sort_keys=False), file=sys.stderr)

    t0 = time.perf_counter()
    if sampling is None:
        out = gen.beam_search(
            model.cfg,
            model.params,
            prompts,
            args.max_new_tokens,
            width=args.beam,
            length_penalty=args.length_penalty,
            eot=model.eot,
            use_cache=not args.no_cache,
        )
    else:
        out = gen.generate(
            model.cfg,
            model.params,
            prompts,
            args.max_new_tokens,
            sampling=sampling,
            seed=args.seed,
            eot=model.eot,
            use_cache=not args.no_cache,
        )
    wall = time.perf_counter() - t0
    records = []
    for i, text in enumerate(args.prompt):
        new = out.new_tokens(i)
        rec = {
            "prompt": text,
            "completion": model.decode(new),
            "tokens": new,
            "n_new": len(new),
            "stopped_at_eot": bool(new and new[-1] == model.eot),
        }
        if sampling is None:
            rec.update(logprob=float(out.logprob[i]), score=float(out.score[i]))
        records.append(rec)
        if args.json:
            print(json.dumps(rec))
        else:
            print(text + rec["completion"])
            if sampling is None:
                print(f"[log-probability {rec['logprob']:.4f}, score {rec['score']:.4f}]")
    n_new = sum(r["n_new"] for r in records)
    print(
        f"generated {n_new} tokens in {wall:.2f} s including compilation "
        f"({n_new / max(wall, 1e-9):.1f} tokens/s, cache {'off' if args.no_cache else 'on'})",
        file=sys.stderr,
    )
    return records


if __name__ == "__main__":
    main()
