"""The real training CLI against nanoGPT's PyTorch step, in alternating subprocesses.

    python -m benchmarks.cli_vs_torch [--preset 256x6|nanogpt-cpu] [--steps 30] [--rounds 3] [--cpus N]
                                      [--dots auto,xla,eigen] [--torch-malloc system,retain]

Each round runs ``python -m experiments.train`` (a fresh run directory, byte vocabulary,
tinyshakespeare, no evaluation until the end, one checkpoint at the end) and then a PyTorch
process that trains nanoGPT's step (``benchmarks.torch_nanogpt``) for the same number of
steps; the two alternate, so that each pair sees the same machine. The CLI's tokens/s is the
one it reports in ``summary.json`` (its training loop's tokens over the loop's time, without
compile, evaluation or checkpoint); its wall tokens/s (the tokens over the whole process,
imports and compile included) is recorded too. The ratio is the median over rounds of the
per-round ratio. The first CLI round fills the compilation cache (``SCALING_CACHE_DIR``) and
is run but not counted. With ``--dots`` the CLI runs once per listed choice of its dense
products in each round: ``auto`` (no flag: what a user gets; OpenBLAS through the FFI on a CPU
where it builds, :mod:`scaling.model.cpu_dense`), ``blas`` (``--model.dense blas``), or XLA's
dots (``--model.dense xla``) by the library ``SCALING_CPU_DOTS`` names
(:mod:`scaling.train.xla_options`: xla, eigen or onednn).

The CLI runs under the host allocator policy it sets itself (:mod:`scaling.host_memory`; set
``SCALING_HOST_MALLOC`` to change it). nanoGPT's step runs once a round per ``--torch-malloc``
choice: ``system`` (glibc's defaults, what a nanoGPT user gets) and ``retain`` (the CLI's
policy, so that the ratio shows what is left once both processes reuse freed memory). Each
CLI choice's ratio is given against each nanoGPT run, keyed ``<dots>/<malloc>``.

Presets: ``256x6`` (6 layers x 256 wide, 8 heads, context 256, batch 16) and ``nanogpt-cpu``
(nanoGPT's shakespeare_char CPU run: 4 layers x 128, 4 heads, context 64, batch 12).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.record import REPO, result_path, write_result
from scaling import host_memory
from scaling.train import xla_options

PRESETS = {
    "256x6": {"n_layer": 6, "d_model": 256, "n_head": 8, "seq_len": 256, "batch": 16},
    "nanogpt-cpu": {"n_layer": 4, "d_model": 128, "n_head": 4, "seq_len": 64, "batch": 12},
}


def cli_args(p: dict, steps: int, out: Path, extra: tuple[str, ...] = ()) -> list[str]:
    """The CLI's command line for ``steps`` steps of preset ``p`` into ``out``."""
    tokens = steps * p["batch"] * p["seq_len"]
    flags = {
        "model.n_layer": p["n_layer"],
        "model.d_model": p["d_model"],
        "model.n_head": p["n_head"],
        "model.seq_len": p["seq_len"],
        "train.batch_size": p["batch"],
        "train.tokens": tokens,
        "train.eval_every": 10**9,
        "train.eval_batches": 1,
        "train.log_every": 1,
        "train.progress": "false",
        "optim.warmup_steps": 2,
        "checkpoint.every_steps": 0,
    }
    args = [sys.executable, "-m", "experiments.train", "--out", str(out), "--overwrite"]
    for k, v in flags.items():
        args += [f"--{k}", str(v)]
    return args + list(extra)


def dots_variant(name: str, env: dict) -> tuple[dict, tuple[str, ...]]:
    """(environment, extra CLI flags) of the ``--dots`` choice ``name``."""
    if name == "auto":
        return env, ()
    if name == "blas":
        return env, ("--model.dense", "blas")
    if name not in xla_options.CPU_DOTS:
        raise SystemExit(f"--dots: {name!r} is not auto, blas or one of {', '.join(xla_options.CPU_DOTS)}")
    return {**env, xla_options.ENV: name}, ("--model.dense", "xla")


def run_cli(p: dict, steps: int, out: Path, variant: tuple[dict, tuple[str, ...]]) -> dict:
    """One CLI process with ``variant`` (its environment, extra flags): the tokens/s its loop
    reports, its compile time, and the kernel's account of it (``wait4``: minor page faults,
    system and user CPU time, peak resident memory)."""
    env, extra = variant
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cli_args(p, steps, out, extra), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    stderr = proc.stderr.read()  # until the child exits; then reap it here, for its rusage
    proc.stderr.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"experiments.train failed ({code}): {stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "tokens_per_s": summary["tokens_per_s"],
        "wall_tokens_per_s": steps * p["batch"] * p["seq_len"] / wall,
        "compile_s": summary.get("compile_s"),
        "minor_faults": usage.ru_minflt,
        "sys_s": usage.ru_stime,
        "user_s": usage.ru_utime,
        "wall_s": wall,
        "max_rss_mb": usage.ru_maxrss / 1024,
    }


def run_torch(p: dict, steps: int, env: dict, malloc: str) -> dict:
    env = {**env, host_memory.ENV: malloc}
    cmd = [sys.executable, "-m", "benchmarks.cli_vs_torch", "--torch-worker", json.dumps({**p, "steps": steps})]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the PyTorch worker failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def torch_worker(spec: dict) -> None:
    """Train nanoGPT's step ``spec['steps']`` times after two warm-up steps; print tokens/s."""
    malloc = host_memory.apply()
    from benchmarks.torch_nanogpt import torch_step_runner
    from scaling.config import ModelConfig

    model = ModelConfig(
        n_layer=spec["n_layer"], d_model=spec["d_model"], n_head=spec["n_head"], seq_len=spec["seq_len"], vocab_size=257
    )
    run, _, _ = torch_step_runner(model, spec["batch"])
    t0 = time.perf_counter()
    run(spec["steps"])
    dt = time.perf_counter() - t0
    import torch

    tokens_per_s = spec["steps"] * spec["batch"] * spec["seq_len"] / dt
    print(json.dumps({"tokens_per_s": tokens_per_s, "threads": torch.get_num_threads(), "malloc": malloc}))


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="256x6", choices=sorted(PRESETS))
    ap.add_argument("--steps", type=int, default=30, help="train steps per process")
    ap.add_argument("--rounds", type=int, default=3, help="counted CLI/PyTorch pairs")
    ap.add_argument(
        "--cpus", type=int, default=0, help="pin both processes to the first CPUS usable CPUs (0: all of them)"
    )
    ap.add_argument(
        "--dots",
        default="auto",
        help="the CLI's dense products, comma separated, each run once a round: auto (no flag), blas, or an "
        "XLA dot library (xla, eigen, onednn; with --model.dense xla)",
    )
    ap.add_argument(
        "--torch-malloc",
        default="system,retain",
        type=host_memory.policy_list,
        help="nanoGPT's host allocator, comma separated, each run once a round: a policy of scaling.host_memory "
        "(system: glibc's defaults; retain: the CLI's default; one-arena)",
    )
    ap.add_argument("--out", help="results JSON (default benchmarks/results/cli_vs_torch_<preset>_cpu.json)")
    ap.add_argument("--torch-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.torch_worker:
        torch_worker(json.loads(args.torch_worker))
        return None
    if args.cpus:  # the children inherit the mask: XLA and PyTorch each size their thread pools by it
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cpus])
    p = PRESETS[args.preset]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    dots = args.dots.split(",")
    envs = {d: dots_variant(d, env) for d in dots}
    mallocs = args.torch_malloc
    pairs = [f"{d}/{m}" for d in dots for m in mallocs]
    rounds = []
    with tempfile.TemporaryDirectory(prefix="cli_vs_torch") as tmp:
        for e in envs.values():  # fills the compilation cache
            run_cli(p, min(args.steps, 4), Path(tmp) / "run", e)
        for i in range(args.rounds):
            clis = {d: run_cli(p, args.steps, Path(tmp) / "run", e) for d, e in envs.items()}
            tch = {m: run_torch(p, args.steps, env, m) for m in mallocs}
            ratios = {f"{d}/{m}": clis[d]["tokens_per_s"] / tch[m]["tokens_per_s"] for d in dots for m in mallocs}
            rounds.append({"cli": clis, "torch": tch, "ratio": ratios})
            print(
                f"round {i + 1}: "
                + ", ".join(
                    f"CLI ({d}) {c['tokens_per_s']:.0f} tok/s (wall {c['wall_tokens_per_s']:.0f})"
                    for d, c in clis.items()
                )
                + ", "
                + ", ".join(f"nanoGPT ({m}) {t['tokens_per_s']:.0f} tok/s" for m, t in tch.items())
                + ", ratio "
                + ", ".join(f"{k} {r:.2f}" for k, r in ratios.items()),
                flush=True,
            )
    result = {
        "preset": args.preset,
        **p,
        "steps": args.steps,
        "cpus": sorted(os.sched_getaffinity(0)),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "cpu_dots": dots,
        "torch_malloc": mallocs,
        "cli_malloc": host_memory.policy(),  # the CLI processes set it themselves
        "rounds": rounds,
        "cli_tokens_per_s": {d: statistics.median(r["cli"][d]["tokens_per_s"] for r in rounds) for d in dots},
        "torch_tokens_per_s": {m: statistics.median(r["torch"][m]["tokens_per_s"] for r in rounds) for m in mallocs},
        "cli_over_torch": {k: statistics.median(r["ratio"][k] for r in rounds) for k in pairs},
    }
    for k, r in result["cli_over_torch"].items():
        d, m = k.split("/")
        print(f"{args.preset}: the CLI ({d}) over nanoGPT's PyTorch step ({m}), median of {args.rounds}: {r:.2f}x")
    return write_result(args.out or result_path(f"cli_vs_torch_{args.preset}", "cpu"), result)


if __name__ == "__main__":
    main()
