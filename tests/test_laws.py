"""scaling.laws: the objective, the batched L-BFGS, approaches 1-3, frontier, bootstrap, hold-out.

Every number is checked against an independent computation: scipy's huber/logsumexp and
finite differences for the objective, scipy's L-BFGS-B for the optimiser, known
parameters for recovery, hand formulas for the frontier and the hold-out errors.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from scipy.special import huber as scipy_huber

from scaling import laws
from scaling.errors import UsageError
from scaling.laws import approach3
from tests.helpers import REPO

TRUE = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al.'s fit
TRUE_P = tuple(TRUE[k] for k in laws.PARAM_NAMES)
TRUE_A = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
TRUE_B = TRUE["alpha"] / (TRUE["alpha"] + TRUE["beta"])


def data_dir() -> Path:
    env = os.environ.get("SCALING_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def chinchilla_or_skip():
    path = data_dir() / "chinchilla" / "svg_extracted_data.csv"
    if not path.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing {path}")
        pytest.skip(f"missing {path}")
    import pandas as pd

    df = pd.read_csv(path).sort_values("loss", ascending=False).iloc[5:]
    N = df["Model Size"].to_numpy(float)
    D = df["Training FLOP"].to_numpy(float) / (6 * N)
    return N, D, df["loss"].to_numpy(float)


def synthetic_isoflop(seed=0, noise=0.01, c_lo=1e18, c_hi=1e22, n_budgets=12, n_sizes=20, span=1.0):
    """A Chinchilla-like IsoFLOP grid: n_budgets budgets, n_sizes model sizes each from
    N_opt/10^span to N_opt*10^span, D = C/(6N), loss from TRUE with multiplicative noise."""
    rng = np.random.default_rng(seed)
    Ns, Ds, Cs = [], [], []
    for C in np.logspace(math.log10(c_lo), math.log10(c_hi), n_budgets):
        n_opt = laws.compute_optimal(C, *TRUE_P)[0]
        N = n_opt * np.logspace(-span, span, n_sizes)
        Ns.append(N)
        Ds.append(C / (6 * N))
        Cs.append(np.full(n_sizes, C))
    N, D, C = np.concatenate(Ns), np.concatenate(Ds), np.concatenate(Cs)
    L = laws.law_loss(N, D, *TRUE_P) * np.exp(noise * rng.standard_normal(N.size))
    return N, D, L, C


# ----------------------------------------------------------------- objective


def test_huber_matches_scipy():
    r = np.linspace(-0.01, 0.01, 101)
    np.testing.assert_allclose(laws.huber(r, 1e-3), scipy_huber(1e-3, r), rtol=1e-12, atol=1e-18)


def test_batched_objective_matches_scalar_reference_and_finite_differences():
    rng = np.random.default_rng(0)
    N, D, L, _ = synthetic_isoflop(n_budgets=3, n_sizes=7)
    lN, lD, lL = np.log(N), np.log(D), np.log(L)
    theta = laws.hoffmann_grid()[rng.choice(4500, 40, replace=False)] + 0.1 * rng.standard_normal((40, 5))
    w = rng.integers(0, 3, size=(40, N.size)).astype(float)
    f, g = laws.objective_and_grad_batch(theta, lN, lD, lL, w, 1e-3, chunk=7)
    for i in range(0, 40, 7):
        assert f[i] == pytest.approx(laws.objective(theta[i], N, D, L, 1e-3, weights=w[i]), rel=1e-10)
        h = 1e-6
        fd = [
            (
                laws.objective(theta[i] + h * e, N, D, L, 1e-3, w[i])
                - laws.objective(theta[i] - h * e, N, D, L, 1e-3, w[i])
            )
            / (2 * h)
            for e in np.eye(5)
        ]
        np.testing.assert_allclose(g[i], fd, rtol=1e-4, atol=1e-7)
    # shared (1, n) weights equal explicit per-row ones
    f1, g1 = laws.objective_and_grad_batch(theta, lN, lD, lL, np.ones((1, N.size)), 1e-3)
    f2, g2 = laws.objective_and_grad_batch(theta, lN, lD, lL, np.ones((40, N.size)), 1e-3)
    np.testing.assert_allclose(f1, f2, rtol=1e-13)
    np.testing.assert_allclose(g1, g2, rtol=1e-12, atol=1e-15)


def test_overflow_fallback_agrees():
    N, D, L, _ = synthetic_isoflop(n_budgets=2, n_sizes=5)
    lN, lD, lL = np.log(N), np.log(D), np.log(L)
    theta = np.array([[800.0, 5.0, 0.5, 0.3, 0.3], [5.0, 5.0, 0.5, 0.3, 0.3]])  # row 0 overflows exp(u1 - e)
    w = np.ones((1, N.size))
    f, g = laws.objective_and_grad_batch(theta, lN, lD, lL, w, 1e-3)
    assert np.all(np.isfinite(f)) and np.all(np.isfinite(g))
    assert f[0] == pytest.approx(laws.objective(theta[0], N, D, L), rel=1e-12)
    f_s, g_s = approach3._objective_and_grad_shifted(theta[1:], lN, lD, lL, w, 1e-3)
    np.testing.assert_allclose(f[1:], f_s, rtol=1e-12)
    np.testing.assert_allclose(g[1:], g_s, rtol=1e-10, atol=1e-15)


def test_hoffmann_grid():
    g = laws.hoffmann_grid()
    assert g.shape == (4500, 5)
    a, b, e, al, be = g.T
    assert sorted(set(a)) == sorted(set(b)) == [0, 5, 10, 15, 20, 25]
    assert sorted(set(e)) == [-1, -0.5, 0, 0.5, 1]
    assert sorted(set(al)) == sorted(set(be)) == [0, 0.5, 1, 1.5, 2]
    assert len({tuple(r) for r in g}) == 4500


def test_lbfgs_batch_finds_rosenbrock_minima():
    """Each problem of the batch ends at a stationary point; most at the global minimum 0."""
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-2, 2, size=(40, 4))

    def rosen(x):
        f = np.sum(100 * (x[:, 1:] - x[:, :-1] ** 2) ** 2 + (1 - x[:, :-1]) ** 2, axis=1)
        g = np.zeros_like(x)
        g[:, :-1] += -400 * x[:, :-1] * (x[:, 1:] - x[:, :-1] ** 2) - 2 * (1 - x[:, :-1])
        g[:, 1:] += 200 * (x[:, 1:] - x[:, :-1] ** 2)
        return f, g

    res = laws.lbfgs_batch(lambda x, rows: rosen(x), x0, gtol=1e-9, ftol=0.0)
    _, g = rosen(res.x)
    assert np.all(np.abs(g) <= 1e-6)
    at_zero = res.f < 1e-12
    np.testing.assert_allclose(res.x[at_zero], 1.0, atol=1e-6)
    assert at_zero.sum() >= 30
    # the others sit at the 4-D Rosenbrock's one local minimum, f = 3.70
    np.testing.assert_allclose(res.f[~at_zero], 3.7015, atol=1e-3)


# --------------------------------------------------------------- approach 3


@pytest.fixture(scope="module")
def chinchilla_fit():
    N, D, L = chinchilla_or_skip()
    return N, D, L, laws.fit_approach3(N, D, L)


def test_chinchilla_matches_epoch_rerun(chinchilla_fit):
    """Epoch AI's re-run of Hoffmann's procedure: A = 477.8, B = 2143.9, E = 1.8172,
    alpha = 0.3473, beta = 0.3672, within 1%; a within 0.005 of 0.514."""
    N, D, L, fit = chinchilla_fit
    assert fit.n_points == 240 and fit.n_starts == 4500
    for k, v in dict(A=477.8, B=2143.9, E=1.8172, alpha=0.3473, beta=0.3672).items():
        assert getattr(fit, k) == pytest.approx(v, rel=0.01), k
    assert abs(fit.a - 0.514) < 0.005
    assert fit.loss == pytest.approx(laws.objective(fit.theta, N, D, L), rel=1e-12)


PLAIN_LOOP = """
import json, sys
import numpy as np
from scipy.optimize import minimize
from scaling import laws
N, D, L = (np.array(v) for v in json.load(sys.stdin))
lN, lD, lL, w = np.log(N), np.log(D), np.log(L), np.ones((1, N.size))

def fg(th):  # the analytic gradient, checked against finite differences in this file
    f, g = laws.objective_and_grad_batch(th[None], lN, lD, lL, w, 1e-3)
    return f[0], g[0]

xs = [minimize(fg, x0, jac=True, method="L-BFGS-B").x for x0 in laws.hoffmann_grid()[::30]]
print(json.dumps([laws.objective(x, N, D, L) for x in xs]))
"""


def test_chinchilla_fit_is_the_best_of_a_plain_scipy_loop(chinchilla_fit):
    """No start of a plain scipy L-BFGS-B loop over a spread-out 150 of the grid's starts
    beats the batched fit (objective values from the independent scalar reference).
    Run in a subprocess with one BLAS thread: on these tiny matrices BLAS worker threads
    only contend for the cores."""
    N, D, L, fit = chinchilla_fit
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", PLAIN_LOOP],
        input=json.dumps([N.tolist(), D.tolist(), L.tolist()]),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    fs = json.loads(out.stdout)
    assert len(fs) == 150
    assert fit.loss <= min(fs) * (1 + 1e-7)
    assert fit.loss == pytest.approx(min(fs), rel=1e-4)  # and the loop does reach the same optimum
    assert fit.n_starts_at_best >= 1


def test_fewer_points_than_parameters_and_bad_values_raise():
    N, D, L, _ = synthetic_isoflop(n_budgets=1, n_sizes=4)
    with pytest.raises(UsageError, match="fewer than the 5 parameters"):
        laws.fit_approach3(N, D, L)
    N, D, L, _ = synthetic_isoflop(n_budgets=2, n_sizes=4)
    with pytest.raises(UsageError, match="non-positive loss"):
        laws.fit_approach3(N, D, np.where(np.arange(L.size) == 3, 0.0, L))
    with pytest.raises(UsageError, match="non-finite N"):
        laws.fit_approach3(np.where(np.arange(N.size) == 0, np.nan, N), D, L)


# ------------------------------------------------------ synthetic recovery


@pytest.fixture(scope="module")
def synthetic_fit():
    N, D, L, C = synthetic_isoflop(seed=0)
    fit = laws.fit_approach3(N, D, L)
    boot = laws.bootstrap_approach3(N, D, L, fit, 100, seed=0)
    return N, D, L, C, fit, boot


def test_synthetic_recovery_within_bootstrap_intervals(synthetic_fit):
    """1% multiplicative noise on a 12-budget x 20-size IsoFLOP grid (240 runs) from
    known (E, A, B, alpha, beta): each inside its 95% bootstrap interval; a, b within 0.02."""
    *_, fit, boot = synthetic_fit
    ci = boot.ci()
    assert boot.n_failed == 0 and boot.samples.shape == (100, 8)
    for k, v in TRUE.items():
        lo, hi = ci[k]
        assert lo <= v <= hi, (k, v, lo, hi)
        assert lo <= getattr(fit, k) <= hi
    assert abs(fit.a - TRUE_A) < 0.02 and abs(fit.b - TRUE_B) < 0.02
    lo, hi = ci["a"]
    assert lo <= TRUE_A <= hi
    # informative, not vacuous: the exponents' intervals are narrow
    assert ci["alpha"][1] - ci["alpha"][0] < 0.1 and ci["a"][1] - ci["a"][0] < 0.05


def test_bootstrap_samples_are_fits_of_resamples(synthetic_fit):
    """The derived columns are the frontier of the parameter columns, the intervals are
    the percentiles, and the same seed draws the same resamples."""
    N, D, L, _, fit, boot = synthetic_fit
    s = boot.samples
    G, a, b = laws.frontier(*s[:, :5].T)
    np.testing.assert_allclose(s[:, 5], a, rtol=1e-12)
    np.testing.assert_allclose(s[:, 6], b, rtol=1e-12)
    np.testing.assert_allclose(s[:, 7], G, rtol=1e-12)
    assert boot.interval("alpha") == pytest.approx(tuple(np.percentile(s[:, 3], [2.5, 97.5])))
    # the first 3 resamples again, in other batches: the same bits
    again = laws.bootstrap_approach3(N, D, L, fit, 3, seed=0, chunk=2, workers=1)
    np.testing.assert_array_equal(again.samples, boot.samples[:3])


_ROWS = np.random.default_rng(11)
_ROW_THETAS = approach3.hoffmann_grid()[::9] + _ROWS.normal(0.0, 3.0, size=(500, 5))
_ROW_THETAS[::25, 0] += 800.0  # rows whose exponent overflows: the shifted form
_ROW_WEIGHTS = _ROWS.integers(0, 3, size=(500, 30)).astype(np.float64)
_ROW_DATA = tuple(np.log(_ROWS.uniform(lo, hi, 30)) for lo, hi in ((3e4, 4e5), (1e6, 2e7), (1.8, 2.6)))


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.integers(0, 499), min_size=1, max_size=600), shared=st.booleans())
def test_objective_rows_do_not_depend_on_their_batch(rows, shared):
    """Each row's objective and gradient are the same bits in any batch (with rows that
    overflow or not, shared or per-row weights): what lets a bootstrap batch its resamples
    freely and still give the same samples."""
    w = np.ones((1, 30)) if shared else _ROW_WEIGHTS
    f, g = approach3.objective_and_grad_batch(_ROW_THETAS, *_ROW_DATA, w, 1e-3)
    idx = np.asarray(rows)
    fs, gs = approach3.objective_and_grad_batch(_ROW_THETAS[idx], *_ROW_DATA, w if shared else w[idx], 1e-3)
    np.testing.assert_array_equal(fs, f[idx])
    np.testing.assert_array_equal(gs, g[idx])


def test_bootstrap_best_starts_reproduce_full_grid_refits():
    """A resample refit from the starts that reached the optimum finds what the full
    4,500-start grid finds (checked on a few resamples)."""
    N, D, L, _ = synthetic_isoflop(seed=3, n_budgets=6, n_sizes=10)
    fit = laws.fit_approach3(N, D, L)
    fast = laws.bootstrap_approach3(N, D, L, fit, 2, seed=5)
    full = laws.bootstrap_approach3(N, D, L, fit, 2, seed=5, starts="grid")
    np.testing.assert_allclose(fast.samples[:, :5], full.samples[:, :5], rtol=2e-3)


def test_bootstrap_in_worker_processes_equals_it_in_this_process(tmp_path):
    """Chunks of resamples refitted in two worker processes give the very samples one process
    gives (3 chunks of 2 resamples), called from a script without a main guard, which the
    workers must not run again."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        textwrap.dedent("""
            import numpy as np
            from scaling import laws
            from tests.test_laws import synthetic_isoflop
            N, D, L, _ = synthetic_isoflop(seed=3, n_budgets=4, n_sizes=6)
            fit = laws.fit_approach3(N, D, L)
            here = laws.bootstrap_approach3(N, D, L, fit, 6, seed=2, chunk=2, workers=1).samples
            there = laws.bootstrap_approach3(N, D, L, fit, 6, seed=2, chunk=2, workers=2).samples
            assert here.shape == (6, 8) and len(np.unique(here[:, 3])) == 6
            np.testing.assert_array_equal(there, here)
            print("ok")
        """)
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0 and proc.stdout.split() == ["ok"], proc.stderr[-3000:]


@pytest.mark.slow
def test_bootstrap_1000_resamples_on_chinchilla_bracket_the_fit(chinchilla_fit):
    N, D, L, fit = chinchilla_fit
    boot = laws.bootstrap_approach3(N, D, L, fit, 1000, seed=0)
    ci = boot.ci()
    for k in ("E", "A", "B", "alpha", "beta", "a"):
        assert ci[k][0] < getattr(fit, k) < ci[k][1]
    assert ci["alpha"][1] - ci["alpha"][0] > 0.01  # not collapsed onto the full-data optimum


# ------------------------------------------------------------------ frontier


def test_frontier_formulas_and_optimality():
    G, a, b = laws.frontier(*TRUE_P)
    E, A, B, al, be = TRUE_P
    assert G == pytest.approx((al * A / (be * B)) ** (1 / (al + be)), rel=1e-14)
    assert a == pytest.approx(be / (al + be)) and b == pytest.approx(al / (al + be))
    for C in (1e18, 1e21, 1e24):
        n_opt, d_opt, l_opt = laws.compute_optimal(C, *TRUE_P)
        assert 6 * n_opt * d_opt == pytest.approx(C, rel=1e-12)
        # independent: minimise L(N, C / 6N) over log N numerically
        r = minimize_scalar(
            lambda x: laws.law_loss(math.exp(x), C / (6 * math.exp(x)), *TRUE_P),
            bracket=(math.log(n_opt) - 3, math.log(n_opt) + 3),
            tol=1e-12,
        )
        assert math.exp(r.x) == pytest.approx(n_opt, rel=1e-4)
        assert l_opt == pytest.approx(r.fun, rel=1e-12)
    fit = laws.LawFit(*TRUE_P, loss=0, n_points=0, n_starts=0, n_starts_at_best=0, delta=1e-3)
    assert (fit.G, fit.a, fit.b) == pytest.approx((G, a, b))
    np.testing.assert_allclose(fit.optimal(1e22), laws.compute_optimal(1e22, *TRUE_P))


# ------------------------------------------------------------------- hold-out


def test_holdout_top_c_against_independent_computation():
    N, D, L, C = synthetic_isoflop(seed=1, n_budgets=6, n_sizes=8)
    starts = laws.hoffmann_grid()[::5]
    out = laws.holdout_top_c(N, D, L, 8, C=C, starts=starts)
    order = np.argsort(-C, kind="stable")
    held, kept = order[:8], order[8:]
    ref = laws.fit_approach3(N[kept], D[kept], L[kept], starts=starts)
    assert out["fit"]["alpha"] == pytest.approx(ref.alpha, rel=1e-12)
    assert len(out["runs"]) == 8
    assert sorted(r["C"] for r in out["runs"]) == sorted(C[held].tolist())
    for r in out["runs"]:
        pred = ref.E + ref.A / r["N"] ** ref.alpha + ref.B / r["D"] ** ref.beta
        assert r["predicted"] == pytest.approx(pred, rel=1e-12)
        assert r["rel_error"] == pytest.approx((pred - r["observed"]) / r["observed"], rel=1e-9, abs=1e-15)
    assert out["mean_abs_rel_error"] == pytest.approx(np.mean([abs(r["rel_error"]) for r in out["runs"]]))
    assert out["mean_abs_rel_error"] < 0.03  # 1% noise: the law extrapolates well
    with pytest.raises(UsageError, match="fewer than the 5 parameters"):
        laws.holdout_top_c(N[:10], D[:10], L[:10], 6)


# ----------------------------------------------------------------- approach 2


def test_approach2_exact_parabolas():
    """Losses exactly parabolic in log N with minima N_opt = k C^a: recovered exactly."""
    k, a = 0.3, 0.55
    Ns, Ls, Cs = [], [], []
    for C in (1e18, 1e19, 1e20, 1e21):
        n_opt = k * C**a
        x = np.log(n_opt) + np.linspace(-1.5, 1.5, 7)
        Ns.append(np.exp(x))
        Ls.append(3.0 - 0.1 * np.log10(C) + 0.05 * (x - np.log(n_opt)) ** 2)
        Cs.append(np.full(7, C) * (1 + 0.01 * np.linspace(-1, 1, 7)))  # budgets equal within 1%
    N, L, C = map(np.concatenate, (Ns, Ls, Cs))
    out = laws.fit_approach2(N, L, C, rtol=0.05)
    assert len(out["minima"]) == 4 and out["skipped"] == []
    # budgets: geometric means of the grouped C, which equal the nominal ones to 1e-4
    assert out["a"] == pytest.approx(a, abs=1e-4)
    assert out["k_n"] == pytest.approx(k, rel=1e-2)
    assert out["b"] == pytest.approx(1 - a, abs=1e-4)
    for m in out["minima"]:
        assert m["N_opt"] == pytest.approx(k * m["C"] ** a, rel=1e-3)
        assert m["D_opt"] == pytest.approx(m["C"] / (6 * m["N_opt"]), rel=1e-12)
    labelled = laws.fit_approach2(N, L, C, budgets=np.repeat([1e18, 1e19, 1e20, 1e21], 7))
    assert labelled["a"] == pytest.approx(a, abs=1e-9) and labelled["k_n"] == pytest.approx(k, rel=1e-8)


def test_approach2_on_the_law_approximates_the_frontier():
    N, D, L, C = synthetic_isoflop(noise=0.0, n_budgets=6, n_sizes=15, span=0.6)
    out = laws.fit_approach2(N, L, C, budgets=C)
    assert out["a"] == pytest.approx(TRUE_A, abs=0.02)


def test_isoflop_groups_tolerance():
    C = np.array([1.0e19, 1.05e19, 0.97e19, 3e19, 3.2e19, 1e20])
    labels, values = laws.isoflop_groups(C, rtol=0.1)
    assert labels.tolist() == [0, 0, 0, 1, 1, 2]
    assert values[0] == pytest.approx(math.exp(np.mean(np.log(C[:3]))))
    labels, values = laws.isoflop_groups(C, budgets=[1e19, 1e19, np.nan, 3e19, 3e19, np.nan])
    assert labels.tolist() == [0, 0, -1, 1, 1, -1] and values.tolist() == [1e19, 3e19]
    with pytest.raises(UsageError, match="at least 2 IsoFLOP budgets"):
        laws.fit_approach2(np.array([1e8, 2e8, 3e8]), np.array([3.0, 2.9, 3.1]), np.full(3, 1e19))


# ----------------------------------------------------------------- approach 1


def test_approach1_envelope_small_example():
    """Two runs whose curves cross: the envelope switches from the small to the large model."""
    fl = np.logspace(15, 17, 21)
    small = (1e6, fl, 4.0 - 0.5 * np.log10(fl / 1e15))  # 4.0 -> 3.0
    large = (1e7, fl * 2, 4.4 - 1.0 * np.log10(fl / 1e15))  # on [2e15, 2e17]: 4.1 -> 2.4
    out = laws.fit_approach1([small, large], n_grid=50)
    env = out["envelope"]
    for p in env:
        s = 4.0 - 0.5 * math.log10(p["C"] / 1e15)
        g = 4.4 - 1.0 * math.log10(p["C"] / 2e15)
        assert p["N_opt"] == (1e6 if s < g else 1e7)
        assert p["L_min"] == pytest.approx(min(s, g), rel=1e-9)
        assert p["D_opt"] == pytest.approx(p["C"] / (6 * p["N_opt"]))
    grid = np.logspace(15, math.log10(2e17), 50)  # the FLOP grid spans both curves
    covered = grid[(grid >= 2e15 * (1 - 1e-12)) & (grid <= 1e17 * (1 + 1e-12))]  # where both runs have a loss
    np.testing.assert_allclose([p["C"] for p in env], covered, rtol=1e-9)
    assert {p["N_opt"] for p in env} == {1e6, 1e7}


def test_approach1_on_the_law_recovers_the_exponent():
    """Curves L(N, flops / 6N) for many N: the envelope's N follows N_opt ~ C^a."""
    Ns = np.logspace(7, 10, 60)
    curves = [(n, 6 * n * np.logspace(8, 12, 80), None) for n in Ns]
    curves = [(n, fl, laws.law_loss(n, fl / (6 * n), *TRUE_P)) for n, fl, _ in curves]
    out = laws.fit_approach1(curves, n_grid=60)
    assert out["a"] == pytest.approx(TRUE_A, abs=0.03)
    assert out["a"] + out["b"] == pytest.approx(1.0)
    with pytest.raises(UsageError, match="at least 2 runs"):
        laws.fit_approach1(curves[:1])


# ------------------------------------------- approach 1 on annealed endpoints (laws.approach1)

EPOCH = (1.8172, 477.8, 2143.4, 0.3473, 0.3672)  # Besiroglu et al.'s Huber-sum grid fit
EPOCH_A = EPOCH[4] / (EPOCH[3] + EPOCH[4])
SMALL_SIZES = np.logspace(math.log10(3.5e4), math.log10(3.5e5), 6)  # a small CPU sweep's sizes
SMALL_BUDGETS = np.logspace(math.log10(8e11), math.log10(6e12), 4)  # and budgets (FLOPs)


def annealed_isoflop(sizes=SMALL_SIZES, budgets=SMALL_BUDGETS, law=EPOCH):
    """Every size at every budget, each run's final (annealed) loss on the law."""
    N, C = (a.ravel() for a in np.meshgrid(sizes, budgets))
    return N, C, laws.law_loss(N, C / (6 * N), *law)


def test_approach1_endpoints_recovers_the_exponent_on_a_small_sweep():
    """Annealed endpoints of 6 sizes (35K-350K) x 4 budgets (8e11-6e12 FLOPs) on
    Chinchilla's law, as an IsoFLOP sweep, with 5 sizes, and as warmup-stable-decay
    cooldowns (every size cooled down at the same 6 token counts): a within 0.03."""
    from scaling.laws.approach1 import fit_approach1_endpoints

    out = fit_approach1_endpoints(*annealed_isoflop())
    assert abs(out["a"] - EPOCH_A) < 0.03
    assert out["a"] + out["b"] == pytest.approx(1.0)
    assert out["n_runs"] == 6 and out["n_endpoints"] == 24 and out["input"] == "annealed endpoints"
    five = fit_approach1_endpoints(*annealed_isoflop(sizes=np.logspace(math.log10(3.5e4), math.log10(3.5e5), 5)))
    assert abs(five["a"] - EPOCH_A) < 0.03
    N, D = (a.ravel() for a in np.meshgrid(SMALL_SIZES, np.logspace(6, 7.5, 6)))
    wsd = fit_approach1_endpoints(N, 6 * N * D, laws.law_loss(N, D, *EPOCH))
    assert abs(wsd["a"] - EPOCH_A) < 0.03
    # only where the optimum is bracketed: never at the smallest or largest size
    for r in (out, five, wsd):
        n_opt = np.array([p["N_opt"] for p in r["envelope"]])
        assert np.all(n_opt > SMALL_SIZES[0]) and np.all(n_opt < SMALL_SIZES[-1])
        for p in r["envelope"]:
            assert p["D_opt"] == pytest.approx(p["C"] / (6 * p["N_opt"]))


def test_approach1_endpoints_skips_compute_where_the_envelope_is_clamped():
    """Budgets reaching below the smallest size's optimum: there the smallest model is the
    best whatever the optimum is, and those C are left out of the fit."""
    from scaling.laws.approach1 import fit_approach1_endpoints

    budgets = np.logspace(10, math.log10(6e12), 6)
    N, C, L = annealed_isoflop(budgets=budgets)
    out = fit_approach1_endpoints(N, C, L, n_grid=300)
    lo, hi = out["c_range"]
    # the smallest size is the best up to where its loss curve crosses the next size's
    grid = np.exp(np.linspace(math.log(C.min()), math.log(C.max()), 300))
    best = np.argmin([laws.law_loss(n, grid / (6 * n), *EPOCH) for n in SMALL_SIZES], axis=0)
    assert lo == pytest.approx(grid[np.argmax(best > 0)], rel=1e-9)
    assert out["grid_fraction"] < 1.0
    assert abs(out["a"] - EPOCH_A) < 0.03
    plain = fit_approach1_endpoints(N, C, L, n_grid=300, refine="none")
    assert {p["N_opt"] for p in plain["envelope"]} <= set(SMALL_SIZES[1:-1])


def test_approach1_endpoints_parabola_vertex_is_exact_at_the_endpoints():
    """Losses exactly parabolic in log N with vertex k C^a at each endpoint C: the
    envelope's N_opt at the endpoints' C equals k C^a."""
    from scaling.laws.approach1 import annealed_curves, fit_approach1_endpoints

    k, a = 0.3, 0.55
    sizes = np.logspace(6, 10, 17)  # the vertices lie between 10^7.7 and 10^8.8
    budgets = np.logspace(15, 17, 5)
    N, C = (v.ravel() for v in np.meshgrid(sizes, budgets))
    L = 3.0 - 0.1 * np.log10(C) + 0.05 * (np.log(N) - np.log(k * C**a)) ** 2
    out = fit_approach1_endpoints(N, C, L, n_grid=9)  # grid points on the budgets and midway
    at = {round(math.log10(p["C"]), 6): p["N_opt"] for p in out["envelope"]}
    for c in budgets:
        assert at[round(math.log10(c), 6)] == pytest.approx(k * c**a, rel=1e-9)
    # a repeated endpoint (a second seed) is averaged into its size's curve
    curves = annealed_curves(np.r_[N, N[:1]], np.r_[C, C[:1]], np.r_[L, L[:1] + 0.2])
    assert curves[0][0] == sizes[0] and curves[0][2][0] == pytest.approx(L[0] + 0.1)


def test_approach1_endpoints_bad_input():
    from scaling.laws.approach1 import fit_approach1_endpoints

    N, C, L = annealed_isoflop(sizes=SMALL_SIZES[:2])
    with pytest.raises(UsageError, match="at least 3 model sizes with 2 or more endpoints"):
        fit_approach1_endpoints(N, C, L)
    N, C, L = annealed_isoflop(sizes=np.logspace(7, 8, 4))  # all far above the optimum
    with pytest.raises(UsageError, match="do not straddle the optimum"):
        fit_approach1_endpoints(N, C, L)
    with pytest.raises(UsageError, match="non-positive loss"):
        fit_approach1_endpoints([1.0, 2.0], [1.0, 2.0], [1.0, 0.0])


# ------------------------------------------------ approach 2 bootstrap (laws.approach2)


def test_approach2_bootstrap_covers_true_a_and_narrows_with_less_noise():
    """Residual bootstrap on 5 budgets x 7 sizes from Hoffmann's law: the 95% interval
    for a covers the true a at 1% and at 0.25% noise, and is narrower at 0.25%."""
    from scaling.laws.approach2 import bootstrap_approach2

    widths = {}
    for noise in (0.01, 0.0025):
        N, D, L, C = synthetic_isoflop(seed=2, noise=noise, c_lo=1e18, c_hi=1e21, n_budgets=5, n_sizes=7, span=0.8)
        fit = laws.fit_approach2(N, L, C, budgets=C)
        boot = bootstrap_approach2(N, L, C, fit, 100, budgets=C, seed=0)
        lo, hi = boot.interval("a")
        assert lo <= TRUE_A <= hi, (noise, lo, hi)
        assert lo <= fit["a"] <= hi
        assert boot.n_failed == 0 and boot.a.size == 100 and boot.n_opt.shape == (100, 5)
        d = boot.to_dict()
        assert d["bootstrap"] == {"n_resamples": 100, "seed": 0, "method": "residual", "n_failed": 0}
        for m, b in zip(fit["minima"], d["budgets"]):
            assert b["C"] == m["C"] and b["N_opt"][0] <= m["N_opt"] <= b["N_opt"][1]
        # b is 1 - a on every resample (D_opt = C / 6 N_opt)
        np.testing.assert_allclose(boot.a + boot.b, 1.0, atol=1e-9)
        widths[noise] = hi - lo
    assert widths[0.0025] < 0.5 * widths[0.01]


def test_approach2_residuals_are_leverage_adjusted():
    """Each budget's residuals are r_i / sqrt(1 - h_ii) of its own parabola, pooled and
    centred; a budget with exactly 3 sizes has none, and a design of only such budgets
    has nothing to resample."""
    from scaling.laws.approach2 import bootstrap_approach2, parabola_residuals

    rng = np.random.default_rng(0)
    x = np.log(np.logspace(6, 8, 5))
    N = np.exp(np.r_[x, x[:3]])
    L = np.r_[3 + 0.1 * (x - x.mean()) ** 2 + 0.01 * rng.standard_normal(5), [3.2, 3.0, 3.1]]
    labels = np.r_[np.zeros(5, int), np.ones(3, int)]
    fitted, res = parabola_residuals(N, L, labels, 2)
    X = np.vander(x, 3)
    H = X @ np.linalg.inv(X.T @ X) @ X.T
    r = (np.eye(5) - H) @ L[:5]
    expect = r / np.sqrt(1 - np.diag(H))
    np.testing.assert_allclose(res, expect - expect.mean(), atol=1e-12)
    np.testing.assert_allclose(fitted[:5], H @ L[:5], atol=1e-12)
    np.testing.assert_allclose(fitted[5:], L[5:], atol=1e-12)  # exactly 3 sizes: the parabola interpolates
    N3 = np.exp(np.r_[x[:3], x[:3] + 1])
    L3 = np.r_[[3.2, 3.0, 3.1], [3.1, 2.9, 3.0]]
    with pytest.raises(UsageError, match="no residuals"):
        bootstrap_approach2(N3, L3, np.r_[np.full(3, 1e18), np.full(3, 1e19)], n_resamples=5)
