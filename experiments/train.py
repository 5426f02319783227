"""Train one GPT: python -m experiments.train --out DIR [--config FILE] [--overwrite]
[--branch-from PARENT_RUN_DIR@STEP] [--keep-steps S1,S2,...] [--section.field VALUE ...]

Writes DIR/config.yaml, DIR/metrics.jsonl, DIR/summary.json and DIR/checkpoints/.
Rerunning the same command resumes from the latest checkpoint. A directory holding a run
of another config (model, data, optimizer or budget) is refused unless --overwrite (start
over) or --resume.allow_config_change true (resume with the new settings). One process at a
time trains in DIR: it holds DIR/.lock, which names it to any other.

Cooldown branches (optim.schedule wsd): --branch-from PARENT_RUN_DIR@STEP starts the run from
the parent's checkpoint at STEP, which must be at or before both runs' decay starts; the
parent's config must equal this one's but for train.tokens (the parent's directory is only
read). The branch trains its remaining steps; rerunning resumes from its own checkpoints.
--keep-steps saves checkpoints at those steps and keeps them (a parent's branch points).

Exit status: 0 the run completed; 2 bad input, or DIR unusable (in use by another process,
holding another config's run, no checkpoint restorable, or not writable: after a failed
write, rerun once it is writable to resume from the last checkpoint); 3 the run diverged
(a non-finite loss beyond --train.skip_nonfinite; summary.json says "diverged" and the last
good checkpoint is kept).
"""

from __future__ import annotations

import argparse
import json
import sys

from scaling import config_parse, host_memory
from scaling.errors import ArgumentParser, UsageError, check_out_dir, exit_on_usage_error

EXIT_DIVERGED = 3


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m experiments.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="run directory (created; reused to resume)")
    p.add_argument("--config", help="YAML file of config sections (overrides win over it)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in --out: first remove the config.yaml, metrics.jsonl, summary.json and "
        "checkpoints/ of the run there (other files stay)",
    )
    p.add_argument(
        "--branch-from",
        metavar="PARENT_RUN_DIR@STEP",
        help="start from another wsd run's checkpoint at STEP (a cooldown branch; not part of the config)",
    )
    p.add_argument(
        "--keep-steps", metavar="S1,S2,...", help="save a checkpoint at these steps and never prune it (branch points)"
    )
    config_parse.add_config_arguments(p)
    return p


def _keep_steps(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        steps = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"--keep-steps expects step numbers separated by commas, got {text!r}") from None
    return steps


@exit_on_usage_error
def main(argv: list[str] | None = None) -> dict:
    """Train; returns the summary (the status is in it: ``exit_status`` maps it to the exit code)."""
    args = parser().parse_args(argv)
    host_memory.apply()  # before any computation: steps reuse freed host memory
    check_out_dir(args.out, "--out")
    cfg = config_parse.resolve(args.config, config_parse.overrides_from_args(args))
    keep_steps = _keep_steps(args.keep_steps)
    from scaling import compile_cache  # jax is imported only after the config is valid
    from scaling.difficulty import MODEL_SCORING
    from scaling.train import Run, setup_distributed
    from scaling.train.branch import parse_branch_from

    compile_cache.enable()  # a rerun, a resume or another run of the same shape loads its programs

    branch_from = None if args.branch_from is None else parse_branch_from(args.branch_from)
    setup_distributed(cfg)
    run = Run(
        cfg,
        args.out,
        overwrite=args.overwrite,
        model_scoring=MODEL_SCORING,
        branch_from=branch_from,
        keep_steps=keep_steps,
    )
    if run.is_main:
        print(run.cfg.to_yaml(), file=sys.stderr)
    summary = run.run()
    if run.is_main:
        print(
            json.dumps(
                {
                    k: summary[k]
                    for k in (
                        "status",
                        "steps",
                        "tokens",
                        "n_params",
                        "final_train_loss",
                        "val_loss",
                        "val_bpb",
                        "wall_s",
                    )
                }
            )
        )
    return summary


def exit_status(summary: dict) -> int:
    return EXIT_DIVERGED if summary["status"] == "diverged" else 0


if __name__ == "__main__":
    sys.exit(exit_status(main()))
