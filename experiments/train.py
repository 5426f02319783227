"""Train one GPT: python -m experiments.train --out DIR [--config FILE] [--section.field VALUE ...]

Writes DIR/config.yaml, DIR/metrics.jsonl, DIR/summary.json and DIR/checkpoints/.
Rerunning the same command resumes from the latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys

from scaling import config as config_lib
from scaling.errors import ArgumentParser, check_out_dir, exit_on_usage_error


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m experiments.train", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run directory (created; reused to resume)")
    p.add_argument("--config", help="YAML file of config sections (overrides win over it)")
    config_lib.add_config_arguments(p)
    return p


@exit_on_usage_error
def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    check_out_dir(args.out, "--out")
    cfg = config_lib.resolve(args.config, config_lib.overrides_from_args(args))
    from scaling.train import Run, setup_distributed  # jax is imported only after the config is valid

    setup_distributed(cfg)
    run = Run(cfg, args.out)
    if run.is_main:
        print(run.cfg.to_yaml(), file=sys.stderr)
    summary = run.run()
    if run.is_main:
        print(json.dumps({k: summary[k] for k in ("status", "steps", "tokens", "n_params", "final_train_loss",
                                                  "val_loss", "val_bpb", "wall_s")}))
    return summary


if __name__ == "__main__":
    main()
