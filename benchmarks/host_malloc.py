"""The training CLI under each host allocator policy, in alternating subprocesses.

    python -m benchmarks.host_malloc [--preset 256x6|nanogpt-cpu] [--steps 30] [--rounds 2]
                                     [--policies system,retain,one-arena]

Each round runs ``python -m experiments.train`` (the command line of
``benchmarks.cli_vs_torch``) once per policy of :mod:`scaling.host_memory`, chosen by
``SCALING_HOST_MALLOC``, one after the other, so that the policies of a round see the same
machine. For each process it records the tokens/s its ``summary.json`` reports (the training
loop), its compile time, and from the kernel (``wait4``) its minor page faults, its system and
user CPU time, its wall time and its peak resident memory. The speed-up of a policy is the
median over rounds of its tokens/s over the first policy's in the same round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from benchmarks import cli_vs_torch
from benchmarks.record import REPO, result_path, write_result
from scaling import host_memory


def run_cli(p: dict, steps: int, out: Path, policy: str) -> dict:
    """One CLI process under ``policy`` (``cli_vs_torch.run_cli``: tokens/s and the kernel's account)."""
    env = {
        **os.environ,
        host_memory.ENV: policy,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    return cli_vs_torch.run_cli(p, steps, out, (env, ()))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="256x6", choices=sorted(cli_vs_torch.PRESETS))
    ap.add_argument("--steps", type=int, default=30, help="train steps per process")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--policies",
        default="system,retain,one-arena",
        type=host_memory.policy_list,
        help="comma separated; the first is the base",
    )
    ap.add_argument("--out", help="results JSON (default benchmarks/results/host_malloc_<preset>_cpu.json)")
    args = ap.parse_args(argv)
    policies = args.policies
    p = cli_vs_torch.PRESETS[args.preset]
    rounds = []
    with tempfile.TemporaryDirectory(prefix="host_malloc") as tmp:
        run_cli(p, min(args.steps, 4), Path(tmp) / "run", policies[0])  # fills the compilation cache
        for i in range(args.rounds):
            r = {x: run_cli(p, args.steps, Path(tmp) / "run", x) for x in policies}
            rounds.append(r)
            print(
                f"round {i + 1}: "
                + ", ".join(
                    f"{x} {v['tokens_per_s']:.0f} tok/s, {v['minor_faults'] / 1e3:.0f}K faults, "
                    f"sys {v['sys_s']:.1f} s, {v['max_rss_mb']:.0f} MB"
                    for x, v in r.items()
                ),
                flush=True,
            )
    base = policies[0]
    result = {
        "preset": args.preset,
        **p,
        "steps": args.steps,
        "policies": policies,
        "rounds": rounds,
        "median": {
            x: {k: statistics.median(r[x][k] for r in rounds) for k in rounds[0][x] if rounds[0][x][k] is not None}
            for x in policies
        },
        "speedup_over_first": {
            x: statistics.median(r[x]["tokens_per_s"] / r[base]["tokens_per_s"] for r in rounds) for x in policies
        },
    }
    for x, s in result["speedup_over_first"].items():
        print(f"{args.preset}: {x} over {base}, tokens/s, median of {args.rounds}: {s:.2f}x")
    return write_result(args.out or result_path(f"host_malloc_{args.preset}", "cpu"), result)


if __name__ == "__main__":
    main()
