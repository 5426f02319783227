"""Approach-3 fit speed on Chinchilla's data: the batched 4,500-start fit and a bootstrap,
against a plain loop of scipy.optimize.minimize over the grid, in one process.

    python benchmarks/fit_speed.py [--resamples 1000] [--loop-starts 150] [--csv FILE] [--quick]
                                   [--out benchmarks/results/fit_speed_cpu.json]

Prints the full-grid fit time, the bootstrap time, and the plain scipy loop's time
measured on ``--loop-starts`` evenly spaced grid starts and extrapolated to 4,500
(L-BFGS-B with finite-difference gradients, as a plain loop would; and with the
analytic gradient), with the speed-up ratios. ``--quick``: 50 resamples and 30 loop starts.
Writes JSON with the machine record.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # tiny matrices: no BLAS threads
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.fit import chinchilla_csv, load_runs  # noqa: E402
from benchmarks.record import result_path, write_result  # noqa: E402
from scaling import laws  # noqa: E402


def plain_loop(N, D, L, starts, *, analytic: bool):
    """scipy.optimize.minimize(L-BFGS-B) from each start in turn; (best f, best x, seconds)."""
    from scipy.optimize import minimize

    lN, lD, lL = np.log(N), np.log(D), np.log(L)
    w = np.ones((1, N.size))

    def fg(th):
        f, g = laws.objective_and_grad_batch(th[None, :], lN, lD, lL, w, laws.DEFAULT_DELTA)
        return float(f[0]), g[0]

    def f_only(th):
        return laws.objective(th, N, D, L)

    t0 = time.perf_counter()
    best = (np.inf, None)
    for x0 in starts:
        if analytic:
            r = minimize(fg, x0, jac=True, method="L-BFGS-B")
        else:
            r = minimize(f_only, x0, method="L-BFGS-B")
        if r.fun < best[0]:
            best = (float(r.fun), r.x)
    return best[0], best[1], time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", default=None, help="Chinchilla CSV (default: the shared data)")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--loop-starts", type=int, default=150, help="grid starts for the plain-loop timing")
    p.add_argument("--quick", action="store_true", help="--resamples 50 --loop-starts 30")
    p.add_argument("--out", default=None, help="default: benchmarks/results/fit_speed_cpu.json")
    args = p.parse_args(argv)
    if args.quick:
        args.resamples, args.loop_starts = 50, 30
    csv = Path(args.csv) if args.csv else chinchilla_csv()
    runs = load_runs(csv, n_col="Model Size", d_col=None, c_col="Training FLOP", loss_col="loss", drop_top_loss=5)
    N, D, L = runs.N, runs.D, runs.L
    print(f"data: {csv} ({len(runs)} runs after dropping the 5 highest-loss), cpus: {os.cpu_count()}")

    laws.fit_approach3(N[:20], D[:20], L[:20], starts=laws.hoffmann_grid()[:50])  # warm-up (imports, caches)
    t0 = time.perf_counter()
    fit = laws.fit_approach3(N, D, L)
    t_fit = time.perf_counter() - t0
    print(
        f"approach 3, batched L-BFGS from all {fit.n_starts} starts: {t_fit:.2f} s; "
        f"{fit.n_starts_at_best} starts reached the best"
    )
    print(
        f"  E={fit.E:.4f} A={fit.A:.1f} B={fit.B:.1f} alpha={fit.alpha:.4f} beta={fit.beta:.4f} "
        f"a={fit.a:.4f} b={fit.b:.4f} objective={fit.loss:.10g}"
    )

    grid = laws.hoffmann_grid()
    sub = grid[np.linspace(0, len(grid) - 1, args.loop_starts).round().astype(int)]
    scale = len(grid) / len(sub)
    loops = {}
    for analytic, name in ((False, "finite-difference gradient"), (True, "analytic gradient")):
        f_best, _, t = plain_loop(N, D, L, sub, analytic=analytic)
        est = t * scale
        loops["analytic" if analytic else "finite_difference"] = {
            "starts": len(sub),
            "s": t,
            "extrapolated_s": est,
            "best_objective": f_best,
        }
        print(
            f"plain scipy loop ({name}), {len(sub)} starts: {t:.2f} s -> {est:.1f} s for {len(grid)} "
            f"(extrapolated); batched fit is {est / t_fit:.1f}x faster; "
            f"best objective on the subset {f_best:.10g} (batched full grid {fit.loss:.10g})"
        )

    t0 = time.perf_counter()
    boot = laws.bootstrap_approach3(N, D, L, fit, args.resamples, seed=0, progress=True)
    t_boot = time.perf_counter() - t0
    print(
        f"bootstrap, {args.resamples} resamples x {laws.bootstrap_starts(fit).shape[0]} starts: {t_boot:.1f} s "
        f"({t_boot / t_fit:.1f} full fits); failed: {boot.n_failed}"
    )
    ci = boot.ci()
    print("  95% intervals: " + ", ".join(f"{k} [{lo:.4g}, {hi:.4g}]" for k, (lo, hi) in ci.items()))
    write_result(
        args.out or result_path("fit_speed", "cpu"),
        {
            "data": csv.name,
            "runs": len(runs),
            "fit_s": t_fit,
            "n_starts": fit.n_starts,
            "n_starts_at_best": fit.n_starts_at_best,
            "objective": fit.loss,
            "plain_loop": loops,
            "bootstrap": {
                "resamples": args.resamples,
                "starts": int(laws.bootstrap_starts(fit).shape[0]),
                "s": t_boot,
                "failed": int(boot.n_failed),
            },
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
