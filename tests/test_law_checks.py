"""scaling.laws.checks: every diagnostic passes on runs from a correctly specified law with
small noise, and fails on data built to fail it; the verdict names every failing check."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from scaling import laws
from scaling.errors import UsageError
from scaling.laws import approach2 as law_isoflop
from scaling.laws import checks as law_checks
from scaling.laws.verdict import Check, Thresholds, verdict

EPOCH = (1.8172, 477.8, 2143.4, 0.3473, 0.3672)  # Besiroglu et al.'s Huber-sum grid fit (E, A, B, alpha, beta)
STARTS = laws.hoffmann_grid()[::10]  # 450 of the 4,500 starts: enough on these well-posed designs
NAMES = [
    "regime.below_baseline",
    "regime.diminishing_returns",
    "non_degenerate.E_lower",
    "non_degenerate.alpha",
    "non_degenerate.beta",
    "non_degenerate.a_width",
    "stable.huber_delta",
    "stable.n_count",
    "agreement.a_overlap",
    "agreement.a_delta",
    "extrapolation.mean_error",
    "extrapolation.worst_error",
    "extrapolation.n_opt_ratio",
]


BUDGETS = np.logspace(17, 19, 5)


def shared_sizes_isoflop(law=EPOCH, *, noise=0.003, seed=0, budgets=BUDGETS, span=0.8, step=0.2667):
    """IsoFLOP budgets over one grid of sizes (so a size recurs at several budgets, as in a
    sweep): each budget runs the grid's sizes within 10^span of its N_opt; multiplicative noise."""
    rng = np.random.default_rng(seed)
    lo = math.log10(laws.compute_optimal(budgets[0], *law)[0]) - span
    hi = math.log10(laws.compute_optimal(budgets[-1], *law)[0]) + span
    grid = 10 ** np.arange(lo, hi + 1e-9, step)
    N, C = [], []
    for c in budgets:
        n_opt = laws.compute_optimal(c, *law)[0]
        sizes = grid[np.abs(np.log10(grid / n_opt)) <= span + 1e-9]
        N += list(sizes)
        C += [c] * sizes.size
    N, C = np.array(N), np.array(C)
    D = C / (6 * N)
    L = laws.law_loss(N, D, *law) * np.exp(noise * rng.standard_normal(N.size))
    return N, D, L, C


@pytest.fixture(scope="module")
def good():
    N, D, L, C = shared_sizes_isoflop()
    fit = laws.fit_approach3(N, D, L, starts=STARTS)
    boot = laws.bootstrap_approach3(N, D, L, fit, 50, seed=0)
    embed = 0.05 * N.min()  # a small embedding share: the non-embedding count moves a little
    v = law_checks.diagnose(
        N,
        D,
        L,
        fit=fit,
        ci=boot.ci(),
        C=C,
        budgets=C,
        baseline=1.02 * L.max(),
        alt_N=N - embed,
        n_resamples=100,
        starts=STARTS,
    )
    return N, D, L, C, fit, boot, v


def by_name(checks) -> dict[str, Check]:
    return {c.name: c for c in checks}


# ----------------------------------------------------------------------- all pass


def test_every_check_passes_on_a_correctly_specified_law(good):
    *_, v = good
    assert [c.name for c in v.checks] == NAMES
    failing = [c.message for c in v.checks if not c.passed]
    assert v.passed, failing
    assert v.failed == () and v.not_evaluated == ()
    assert v.message == "PASS: all 13 diagnostics pass"


def test_checks_are_typed_and_serialisable(good):
    _, _, L, _, fit, boot, v = good
    d = json.loads(json.dumps(v.to_dict(), allow_nan=False))
    assert d["passed"] is True and d["failed"] == [] and len(d["checks"]) == 13
    for c in d["checks"]:
        assert set(c) == {"name", "passed", "evaluated", "value", "threshold", "relation", "message", "details"}
        assert isinstance(c["value"], float) and c["passed"] is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.checks[0].passed = False
    c = by_name(v.checks)
    # the numbers are the ones they claim to be
    assert c["regime.below_baseline"].value == pytest.approx(L.max())
    assert c["non_degenerate.E_lower"].value == pytest.approx(boot.interval("E")[0])
    assert c["non_degenerate.alpha"].value == fit.alpha and c["non_degenerate.alpha"].threshold == (0.1, 1.0)
    lo, hi = boot.interval("a")
    assert c["non_degenerate.a_width"].value == pytest.approx(hi - lo)
    a_d = c["stable.huber_delta"].details["a_by_delta"]
    assert set(a_d) == {"0.001", "0.01", "1e+06"} and a_d["0.001"] == fit.a
    assert c["stable.huber_delta"].value == pytest.approx(max(a_d.values()) - min(a_d.values()))


# ----------------------------------------------------------------------- regime


def test_regime_fails_when_a_run_is_not_below_the_baseline():
    N = np.array([1e5, 1e5, 2e5, 2e5])
    D = np.array([1e7, 2e7, 1e7, 2e7])
    L = np.array([2.30, 2.10, 2.06, 1.95])
    below, _ = law_checks.check_regime(N, D, L, baseline=2.058)
    assert not below.passed and below.evaluated
    assert below.value == 2.30 and below.threshold == 2.058
    assert below.details["n_at_or_above"] == 3
    assert "FAIL" in below.message
    ok, _ = law_checks.check_regime(N, D, L, baseline=2.31)
    assert ok.passed
    missing, _ = law_checks.check_regime(N, D, L, baseline=None)
    assert not missing.passed and not missing.evaluated and "no count-model baseline" in missing.message


def test_regime_fails_on_growing_gains_per_doubling():
    """At N = 1e5: D doubles, losses 3.00 -> 2.95 -> 2.85 -> 2.65: gains 0.05, 0.10, 0.20
    per doubling, growing by 0.05 and 0.10: no E + A/N^alpha + B/D^beta does that."""
    D = 1e7 * 2.0 ** np.arange(4)
    N = np.full(4, 1e5)
    grow = np.array([3.00, 2.95, 2.85, 2.65])
    _, dim = law_checks.check_regime(N, D, grow, baseline=None)
    assert not dim.passed and dim.evaluated
    assert dim.value == pytest.approx(0.10)
    assert dim.details["sizes"][0]["gains_per_doubling"] == pytest.approx([0.05, 0.10, 0.20])
    # the same design on the law: gains shrink
    law = laws.law_loss(N, D, *EPOCH)
    _, ok = law_checks.check_regime(N, D, law, baseline=None)
    assert ok.passed and ok.value < 0
    # uneven spacing: gains are per doubling (log2 D), so a convex curve still passes
    D2 = np.array([1e7, 3e7, 4e7, 1.6e8])
    _, ok2 = law_checks.check_regime(np.full(4, 1e5), D2, laws.law_loss(1e5, D2, *EPOCH), baseline=None)
    assert ok2.passed
    # two runs 1% apart in D are one point (their mean loss), not a slope over a tiny step
    D3 = np.array([1e7, 2e7, 4e7, 4.04e7])
    L3 = laws.law_loss(1e5, D3, *EPOCH) - np.array([0, 0, 0, 0.01])
    _, merged = law_checks.check_regime(np.full(4, 1e5), D3, L3, baseline=None)
    assert merged.passed and len(merged.details["sizes"][0]["gains_per_doubling"]) == 2
    unmerged = Thresholds(d_merge_factor=1.001)
    _, noisy = law_checks.check_regime(np.full(4, 1e5), D3, L3, baseline=None, thresholds=unmerged)
    assert not noisy.passed and noisy.value > 0.5
    _, none = law_checks.check_regime(N[:2], D[:2], grow[:2], baseline=None)
    assert not none.evaluated and "3 or more token counts" in none.message


# ----------------------------------------------------------------- non-degenerate


def test_non_degenerate_fails_on_a_law_with_E_zero():
    """Runs from L = A/N^alpha + B/D^beta (E = 0): the fitted E's interval reaches 0."""
    N, D, L, _ = shared_sizes_isoflop((0.0,) + EPOCH[1:])
    fit = laws.fit_approach3(N, D, L, starts=STARTS)
    boot = laws.bootstrap_approach3(N, D, L, fit, 50, seed=0)
    c = by_name(law_checks.check_non_degenerate(boot.interval("E"), fit.alpha, fit.beta, boot.interval("a")))
    assert not c["non_degenerate.E_lower"].passed
    assert c["non_degenerate.E_lower"].value < 0.2
    v = verdict(list(c.values()))
    assert "non_degenerate.E_lower" in v.failed and "non_degenerate.E_lower" in v.message


def test_non_degenerate_exponents_and_width_thresholds():
    c = by_name(law_checks.check_non_degenerate((1.0, 2.0), 0.05, 1.2, (0.2, 0.5)))
    assert c["non_degenerate.E_lower"].passed
    assert not c["non_degenerate.alpha"].passed and not c["non_degenerate.beta"].passed
    assert not c["non_degenerate.a_width"].passed and c["non_degenerate.a_width"].value == pytest.approx(0.3)
    c = by_name(law_checks.check_non_degenerate((0.2, 2.0), 0.1, 1.0, (0.3, 0.549)))
    assert not c["non_degenerate.E_lower"].passed  # strictly above 0.2
    assert c["non_degenerate.alpha"].passed and c["non_degenerate.beta"].passed  # the range is closed
    assert c["non_degenerate.a_width"].passed


def test_non_degenerate_fails_on_runs_built_to_fail_each_check():
    """Runs from a law whose alpha is 0.05 (beta 1.3): the fitted exponents leave [0.1, 1.0];
    the good design with 3% noise: a's interval is wider than 0.25."""
    flat = (1.8172, 3.0, 2.0e9, 0.05, 1.3)
    N, D, L, _ = shared_sizes_isoflop(flat, noise=0.0005)
    fit = laws.fit_approach3(N, D, L, starts=STARTS)
    c = by_name(law_checks.check_non_degenerate((1.0, 2.0), fit.alpha, fit.beta, (0.4, 0.5)))
    assert not c["non_degenerate.alpha"].passed and c["non_degenerate.alpha"].value < 0.1
    assert not c["non_degenerate.beta"].passed and c["non_degenerate.beta"].value > 1.0
    N, D, L, _ = shared_sizes_isoflop(noise=0.03, seed=3)
    fit = laws.fit_approach3(N, D, L, starts=STARTS)
    boot = laws.bootstrap_approach3(N, D, L, fit, 50, seed=0)
    c = by_name(law_checks.check_non_degenerate(boot.interval("E"), fit.alpha, fit.beta, boot.interval("a")))
    lo, hi = boot.interval("a")
    assert not c["non_degenerate.a_width"].passed and c["non_degenerate.a_width"].value == pytest.approx(hi - lo)
    assert hi - lo > 0.25


# ----------------------------------------------------------------------- stable


def test_stability_fails_with_outlier_runs(good):
    """Five runs 30% above the law: the robust Huber fits ignore them, least squares does not."""
    N, D, L, *_ = good
    bad = L.copy()
    bad[np.random.default_rng(1).choice(L.size, 5, replace=False)] *= 1.3
    a_delta = law_checks.a_across_deltas(N, D, bad, starts=STARTS)
    (c, _) = law_checks.check_stability(a_delta)
    assert not c.passed and c.value > 0.05
    assert c.value == pytest.approx(max(a_delta.values()) - min(a_delta.values()))


def test_stability_fails_between_parameter_counts(good):
    """A fixed embedding share that dominates the small models (as the tied head and a
    position table do at width 8) moves the exponent when it is left out of N."""
    N, D, L, _, fit, *_ = good
    alt = laws.fit_approach3(N - 0.8 * N.min(), D, L, starts=STARTS)
    _, c = law_checks.check_stability({1e-3: fit.a}, (fit.a, alt.a))
    assert not c.passed and c.value == pytest.approx(abs(fit.a - alt.a)) and c.value > 0.1
    _, missing = law_checks.check_stability({1e-3: fit.a}, None)
    assert not missing.evaluated


# -------------------------------------------------------------------- agreement


def test_agreement_fails_when_the_approaches_disagree(good):
    """Approach 2 on IsoFLOP runs from a law with a = 0.25 against approach 3 on the good runs."""
    *_, fit, boot, _ = good
    other = (1.8, 400.0, 400.0, 0.6, 0.2)
    N2, _, L2, C2 = shared_sizes_isoflop(other)
    a2 = laws.fit_approach2(N2, L2, C2, budgets=C2)
    iv = law_isoflop.bootstrap_approach2(N2, L2, C2, a2, 100, budgets=C2).interval("a")
    overlap, delta = law_checks.check_agreement(a2["a"], iv, fit.a, boot.interval("a"))
    assert not overlap.passed and not delta.passed
    lo3, hi3 = boot.interval("a")
    assert overlap.value == pytest.approx(min(iv[1], hi3) - max(iv[0], lo3)) and overlap.value < 0
    assert delta.value == pytest.approx(abs(a2["a"] - fit.a)) and delta.value > 0.15
    # intervals that touch overlap
    o, d = law_checks.check_agreement(0.45, (0.40, 0.50), 0.55, (0.50, 0.70))
    assert o.passed and o.value == 0.0 and d.passed and d.value == pytest.approx(0.10)


# ---------------------------------------------------------------- extrapolation


def test_extrapolation_fails_with_a_kink_at_the_top_budget(good):
    N, D, L, C, *_ = good
    top = C == C.max()
    lifted = np.where(top, 1.03 * L, L)  # the top budget 3% above the trend
    c = by_name(law_checks.check_extrapolation(N, D, lifted, C, budgets=C, starts=STARTS))
    assert not c["extrapolation.mean_error"].passed and not c["extrapolation.worst_error"].passed
    rel = np.array(c["extrapolation.mean_error"].details["rel_errors"])
    assert rel.size == top.sum()
    assert c["extrapolation.mean_error"].value == pytest.approx(np.mean(np.abs(rel)))
    assert c["extrapolation.worst_error"].value == pytest.approx(np.max(np.abs(rel)))
    # the top budget's optimum moved: its runs behave like models 4x smaller
    moved = np.where(top, laws.law_loss(N / 4, D, *EPOCH), L)
    c = by_name(law_checks.check_extrapolation(N, D, moved, C, budgets=C, starts=STARTS))
    r = c["extrapolation.n_opt_ratio"]
    assert not r.passed and r.value > 1.5
    p, q = r.details["N_opt_predicted"], r.details["N_opt_vertex"]
    assert r.value == pytest.approx(max(p / q, q / p))


def test_extrapolation_against_an_independent_refit(good):
    """The held-out fit is approach 3 on the runs below the top budget; its predictions
    and that budget's parabola vertex are recomputed here by hand."""
    N, D, L, C, *_ = good
    c = by_name(law_checks.check_extrapolation(N, D, L, C, budgets=C, starts=STARTS))
    top = C == C.max()
    ref = laws.fit_approach3(N[~top], D[~top], L[~top], starts=STARTS)
    rel = (ref.predict(N[top], D[top]) - L[top]) / L[top]
    assert c["extrapolation.mean_error"].value == pytest.approx(np.mean(np.abs(rel)), rel=1e-9)
    p2, p1, _ = np.polyfit(np.log(N[top]), L[top], 2)
    assert c["extrapolation.n_opt_ratio"].details["N_opt_vertex"] == pytest.approx(math.exp(-p1 / (2 * p2)))
    assert c["extrapolation.n_opt_ratio"].details["N_opt_predicted"] == pytest.approx(ref.optimal(C.max())[0])
    one = law_checks.check_extrapolation(N[top], D[top], L[top], C[top], budgets=C[top])
    assert all(not x.evaluated for x in one) and "nothing to hold out" in one[0].message


# ------------------------------------------------------------------------ verdict


def test_verdict_names_every_failing_and_unevaluated_check(good):
    bad = law_checks.check_non_degenerate((0.0, 1.0), 0.5, 0.5, (0.1, 0.2))
    missing = law_checks.check_regime([1e5], [1e7], [2.0], baseline=None)
    w = verdict([*bad, *missing])
    assert not w.passed
    assert w.failed == ("non_degenerate.E_lower",)
    assert w.not_evaluated == ("regime.below_baseline", "regime.diminishing_returns")
    assert w.message == (
        "FAIL: 1 failed: non_degenerate.E_lower; 2 not evaluated: regime.below_baseline, regime.diminishing_returns"
    )
    assert not verdict([]).passed
    with pytest.raises(ValueError, match="duplicate"):
        verdict([*bad, *bad])
    strict = Thresholds(delta_shift_max=0.0)
    (c, _) = law_checks.check_stability({1e-3: 0.5, 1e-2: 0.5001}, None, strict)
    assert not c.passed
    with pytest.raises(UsageError, match="interval for E"):
        law_checks.diagnose(*good[:3], fit=good[4], ci={"a": [0, 1]})
