"""Fine-tune a trained model for instructions or classification, build the shipped tasks, or
score the bag-of-bytes baseline.

  python -m experiments.finetune (--from RUN_DIR | --hf-gpt2 DIR) --task instruct|classify
      --data FILE.jsonl --out DIR [--config FILE] [--overwrite] [--eval-only] [--section.field V ...]
  python -m experiments.finetune --from-sweep SWEEP_DIR --task classify --data FILE.jsonl --out DIR
  python -m experiments.finetune --make-task author|book|nextsentence --out FILE.jsonl [--corpus NAME]
  python -m experiments.finetune --baseline bag-of-bytes --data FILE.jsonl

A fine-tuning run writes DIR/config.yaml, DIR/metrics.jsonl, DIR/summary.json (held-out
test_loss and accuracy, macro_f1 or exact_match, answer_prefix) and DIR/checkpoints/;
rerunning the same command resumes from the latest checkpoint. --eval-only scores the model
as it is on an instruct task's held-out split (printed, nothing written). --from-sweep
fine-tunes every completed run of a sweep directory into DIR/<run_id>/ and writes
DIR/downstream.csv (the run's pretraining columns from results.csv and the fine-tuned
metrics): plot it with python -m analysis.downstream. Records are JSON lines: instruct
{"prompt", "response"}, classify {"text", "label"}, each with an optional "split"
(train | test). Exit status: 0 done; 2 bad input.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from scaling import compile_cache, host_memory
from scaling import finetune_config as fc
from scaling.config_parse import overrides_from_args
from scaling.errors import ArgumentParser, UsageError, check_out_dir, check_out_file, exit_on_usage_error
from scaling.finetune import examples as ex
from scaling.finetune import tasks
from scaling.io import atomic_write_text


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m experiments.finetune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from", dest="run", metavar="RUN_DIR", help="a training run directory (experiments.train --out)")
    src.add_argument(
        "--hf-gpt2", metavar="DIR", help="a Hugging Face GPT-2 directory (config.json + model.safetensors)"
    )
    src.add_argument("--from-sweep", metavar="SWEEP_DIR", help="fine-tune every completed run of a sweep directory")
    src.add_argument("--make-task", choices=tasks.TASKS, help="write a shipped task's JSONL to --out and stop")
    src.add_argument("--baseline", choices=("bag-of-bytes",), help="score a classify task's baseline and stop")
    p.add_argument("--task", choices=fc.TASK_KINDS, help="instruct or classify (sets task.kind)")
    p.add_argument("--data", metavar="FILE.jsonl", help="the task's records")
    p.add_argument("--out", help="run directory (created; reused to resume); --make-task: the JSONL file")
    p.add_argument("--config", help="YAML file of fine-tuning config sections (overrides win over it)")
    p.add_argument("--overwrite", action="store_true", help="start over in --out (removes its fine-tuning outputs)")
    p.add_argument("--eval-only", action="store_true", help="instruct: score the model without tuning")
    p.add_argument("--corpus", default="gutenberg", help="--make-task: the corpus (default: gutenberg)")
    p.add_argument("--run-ids", metavar="ID1,ID2,...", help="--from-sweep: only these runs (default: every one)")
    fc.add_arguments(p)
    return p


def resolve_config(args: argparse.Namespace) -> fc.FinetuneConfig:
    overrides = overrides_from_args(args)
    if args.task:
        overrides.setdefault("task", {})["kind"] = args.task
    return fc.resolve(args.config, overrides)


def _require(args: argparse.Namespace, *names: str) -> None:
    for n in names:
        if not getattr(args, n.replace("-", "_")):
            raise UsageError(f"--{n} is required here (see python -m experiments.finetune --help)")


def make_task(args: argparse.Namespace) -> dict:
    _require(args, "out")
    check_out_file(args.out, "--out")
    records = tasks.build_task(args.make_task, args.corpus)
    atomic_write_text(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    n_test = sum(r["split"] == "test" for r in records)
    return {"task": args.make_task, "kind": tasks.task_kind(args.make_task), "records": len(records), "test": n_test}


def load_source(run: str | None, hf_dir: str | None):
    """The model to fine-tune, in the looped layer layout (imports jax only now)."""
    from scaling.finetune.loop import Source  # noqa: PLC0415 (jax loads once the input is checked)
    from scaling.finetune.model import looped  # noqa: PLC0415
    from scaling.inference import load_checkpoint, load_gpt2  # noqa: PLC0415

    m = load_checkpoint(run) if run is not None else load_gpt2(hf_dir)
    cfg, params = looped(m.cfg, m.params)
    kind, path = ("run", run) if run is not None else ("hf-gpt2", hf_dir)
    return Source(cfg, params, m.encoding, f"{kind}:{Path(path).resolve()}")


def finetune_one(cfg, data, args, run: str | None, hf_dir: str | None, out: str) -> dict:
    from scaling.finetune.loop import Finetune  # noqa: PLC0415

    job = Finetune(cfg, load_source(run, hf_dir), data, args.data, out)
    if args.eval_only:
        return job.evaluate_untuned()
    return job.run(overwrite=args.overwrite)


def sweep_runs(sweep_dir: Path, run_ids: str | None = None) -> list[dict]:
    """The completed rows of a sweep's results.csv whose run directory holds a checkpoint (those
    named in ``run_ids`` only, when given: a name not among them is refused)."""
    results = sweep_dir / "results.csv"
    if not results.is_file():
        raise UsageError(f"--from-sweep: no results.csv in {sweep_dir}")
    with open(results, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("status") == "completed"]
    rows = [r for r in rows if (sweep_dir / "runs" / r["run_id"] / "checkpoints").is_dir()]
    if run_ids:
        wanted = [x.strip() for x in run_ids.split(",") if x.strip()]
        missing = sorted(set(wanted) - {r["run_id"] for r in rows})
        if missing:
            raise UsageError(f"--run-ids: {missing[0]} is not a completed run with checkpoints in {results}")
        rows = [r for r in rows if r["run_id"] in wanted]
    if not rows:
        raise UsageError(f"--from-sweep: {results} lists no completed run with checkpoints")
    return rows


DOWNSTREAM_METRICS = ("accuracy", "macro_f1", "exact_match", "answer_prefix", "test_loss", "wall_s")


def from_sweep(cfg, data, args) -> dict:
    sweep_dir = Path(args.from_sweep)
    rows = sweep_runs(sweep_dir, args.run_ids)
    out = Path(args.out)
    table = []
    for r in rows:
        summary = finetune_one(cfg, data, args, str(sweep_dir / "runs" / r["run_id"]), None, str(out / r["run_id"]))
        print(json.dumps({"run_id": r["run_id"], **{k: summary.get(k) for k in DOWNSTREAM_METRICS}}), file=sys.stderr)
        table.append({**r, **{f"ft_{k}": summary.get(k, "") for k in DOWNSTREAM_METRICS}})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    atomic_write_text(out / "downstream.csv", buf.getvalue())
    return {"runs": len(table), "csv": str(out / "downstream.csv")}


@exit_on_usage_error
def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    host_memory.apply()  # before any computation: steps reuse freed host memory
    if args.make_task:
        result = make_task(args)
        print(json.dumps(result))
        return result
    cfg = resolve_config(args)
    _require(args, "data")
    if args.eval_only and cfg.task.kind != "instruct":
        raise UsageError("--eval-only scores an instruct task (a classifier needs a trained head)")
    if args.baseline and cfg.task.kind != "classify":
        raise UsageError("--baseline bag-of-bytes scores a classify task (pass --task classify)")
    data = ex.read_records(args.data, cfg.task.kind, cfg.task.val_fraction)
    if args.baseline:
        from scaling.finetune.baseline import bag_of_bytes  # noqa: PLC0415 (scipy loads only here)

        result = bag_of_bytes(data)
        print(json.dumps(result))
        return result
    if not args.eval_only:
        _require(args, "out")
        check_out_dir(args.out, "--out")
    print(cfg.to_yaml(), file=sys.stderr)
    compile_cache.enable()
    if args.from_sweep:
        result = from_sweep(cfg, data, args)
    else:
        result = finetune_one(cfg, data, args, args.run, args.hf_gpt2, args.out)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
