"""The sweep's end-of-run fit (scaling.sweep.fit, .diagnose, .baseline) on results tables built
from a known law (no training): every diagnostic passes on a correctly specified law, fit.json
carries the diagnostics, baseline, noise and both parameter counts, the report ends with the
verdict; the count-model baseline equals an independent count on the same validation tokens;
``python -m analysis.fit --holdout-top-c 3`` reads a sweep's results.csv."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from analysis import fit as fitcli
from experiments import sweep as sweep_cli
from scaling import laws, sweep
from scaling.config import DataConfig
from scaling.data import Batches, load_tokens
from scaling.laws import approach3
from scaling.laws.record import NotRun
from scaling.laws.result import Baseline, Noise
from scaling.sweep import baseline as sweep_baseline
from scaling.sweep.diagnose import SweepFitOptions
from tests.helpers import data_path

LAW = (1.0, 15.0, 51.0, 0.35, 0.37)  # E, A, B, alpha, beta: losses 1.4-1.8 at 3e4-5e5 parameters
BUDGETS = np.logspace(math.log10(8e11), math.log10(6e12), 4)
EMBED = 1500.0  # the non-embedding count is N less this
NOISE = 0.0015  # 0.15%: at 0.3% this design (20 sizes x budgets over one decade) gives a an interval ~0.3 wide
N_CHECKS = 13


def write_results(path: Path, *, law=LAW, noise=NOISE, seed=0, top_factor=1.0) -> Path:
    """A sweep results.csv of an IsoFLOP design (sizes on one grid, 5 per budget around the
    law's optimum), two seeds of the two smallest sizes of each budget; ``top_factor``
    multiplies the largest budget's losses."""
    rng = np.random.default_rng(seed)
    grid = np.logspace(4.0, 6.5, 26)
    cols = [
        "run_id",
        "n_params",
        "n_params_nonembed",
        "tokens",
        "flops_6nd",
        "flops_chinchilla",
        "val_loss",
        "status",
        "budget",
        "seed",
    ]
    lines = [",".join(cols)]
    for C in BUDGETS:
        n_opt = laws.compute_optimal(C, *law)[0]
        sizes = grid[np.argsort(np.abs(np.log(grid / n_opt)))[:5]]
        for i, N in enumerate(np.sort(sizes)):
            for s in (0, 1) if i < 2 else (0,):
                D = C / (6 * N)
                loss = laws.law_loss(N, D, *law) * math.exp(noise * rng.standard_normal())
                loss *= top_factor if C == BUDGETS[-1] else 1.0
                fc = 6 * N * D * (1 + 2e3 / N**0.5)
                lines.append(
                    f"r{len(lines)},{N:.0f},{N - EMBED:.0f},{D:.0f},{6 * N * D:.6g},{fc:.6g},"
                    f"{loss:.8f},completed,{C:.6g},{s}"
                )
    lines.append(f"r{len(lines)},5e4,4.8e4,1e6,3e11,3.3e11,nan,diverged,{BUDGETS[0]:.6g},0")
    path.write_text("\n".join(lines) + "\n")
    return path


SPEC = """
name: synth
base:
  data: {corpus: tinyshakespeare, tokenizer: byte}
  model: {seq_len: 32}
  train: {batch_size: 4, eval_batches: 3}
sizing: {aspect: 16, head_dim: 16}
isoflop:
  budgets: [5e9, 1e10]
  models: [1e4, 4e4, 1e5]
"""


def make_plan(tmp: Path, extra: str = ""):
    data_path("tinyshakespeare", "input.txt")
    spec = tmp / "synth.yaml"
    spec.write_text(SPEC + extra)
    return sweep.make_plan(sweep.load_spec(spec), {})


FAST = SweepFitOptions(bootstrap=8, approach2_bootstrap=100, starts=laws.hoffmann_grid()[::5])
"""Fewer resamples than the sweep's default (still refitted from the full start grid), and a
fifth of the grid for the single fits: enough on this well-posed design."""


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweepfit")
    plan = make_plan(tmp)
    out = tmp / "sweep"
    out.mkdir()
    write_results(out / "results.csv")
    output = sweep.fit_sweep(plan, out, options=FAST)
    fit = sweep.SweepFit(
        output=output,
        name="synth",
        spec="synth.yaml",
        results=str(out / "results.csv"),
        results_sha256="x",
        n_planned=0,
    )
    return plan, out, output, json.loads(json.dumps(fit.to_dict(), allow_nan=False)), sweep.fit_report(fit)


def test_sweep_fit_of_a_known_law_passes_every_diagnostic(fitted):
    plan, out, output, d, text = fitted
    v = output.fit.diagnostics
    assert len(v.checks) == N_CHECKS
    assert v.passed, [c.message for c in v.checks if not c.passed]
    assert text.splitlines()[-1] == f"verdict: PASS: all {N_CHECKS} diagnostics pass"
    law = output.fit.law
    assert abs(law.a - LAW[4] / (LAW[3] + LAW[4])) < 0.05
    assert "held-out budget extrapolation" in text and "mean |rel. error| = " in text
    # the sweep's approaches: approach 3 with grid-start intervals, approach 2 with intervals,
    # approach 1 on the annealed endpoints
    assert d["bootstrap"]["starts"] == "grid" and d["bootstrap"]["n_resamples"] == FAST.bootstrap
    assert d["approach2"]["bootstrap"]["n_resamples"] == FAST.approach2_bootstrap
    assert d["approach1"]["input"] == "annealed endpoints"
    assert d["input"]["bootstrap"] == {"approach3": 8, "approach3_starts": "grid", "approach2": 100}


def test_fit_json_carries_baseline_noise_and_both_counts(fitted):
    plan, out, output, d, text = fitted
    runs = sweep.load_sweep_runs(plan, out)
    assert d["n_count"] == "total" and d["input"]["n_col"] == "n_params"
    # the other count: approach 3 refitted with N - EMBED, as the stability check used it
    alt = d["alt_count"]
    assert alt["count"] == "nonembed" and alt["n_col"] == "n_params_nonembed"
    ref = approach3.fit_approach3(runs.N - EMBED, runs.D, runs.L, starts=FAST.starts)
    assert alt["a"] == pytest.approx(ref.a, rel=1e-6)
    checks = {c["name"]: c for c in d["diagnostics"]["checks"]}
    assert checks["stable.n_count"]["details"]["a"] == pytest.approx([d["a"], alt["a"]])
    # noise: the pooled seed-to-seed deviation of the repeated (N, D) points, by hand
    groups: dict = {}
    for n, dd, loss in zip(runs.N, runs.D, runs.L):
        groups.setdefault((n, dd), []).append(loss)
    pairs = [g for g in groups.values() if len(g) == 2]
    assert d["noise"]["n_pairs"] == len(pairs) == 8
    sigma = math.sqrt(np.mean([(a - b) ** 2 / 2 for a, b in pairs]))
    assert d["noise"]["sigma"] == pytest.approx(sigma, rel=1e-9)
    res = runs.L - output.fit.law.predict(runs.N, runs.D)
    assert d["noise"]["residual_rms"] == pytest.approx(math.sqrt(np.mean(res**2)), rel=1e-9)
    assert "seed-to-seed sigma" in text and "residual RMS" in text
    # the baseline (tinyshakespeare, the plan's validation windows) is the regime check's threshold
    b = d["baseline"]
    assert set(b) >= {"unigram", "bigram", "trigram", "split", "tokens"} and b["split"] == "validation"
    assert b["unigram"] > b["bigram"] > b["trigram"] > runs.L.max()
    assert b["tokens"] == 3 * 4 * 32
    assert checks["regime.below_baseline"]["threshold"] == b["trigram"] == b["regime_loss"]
    assert (out / "baseline.json").is_file()
    # C by 6ND and by Appendix F, per size
    sizes = np.unique(runs.N)
    assert [r["N"] for r in d["compute"]] == pytest.approx(sizes.tolist())
    for r in d["compute"]:
        assert r["ratio"] == pytest.approx(1 + 2e3 / r["N"] ** 0.5, rel=1e-4)
    assert "Appendix F" in text


def test_a_failing_law_names_each_failing_check_in_the_last_line(tmp_path):
    """The largest budget 4% above the law: the extrapolation checks fail and the verdict line
    names each with its number and threshold; the fit is still written."""
    plan = make_plan(tmp_path)
    out = tmp_path / "sweep"
    out.mkdir()
    write_results(out / "results.csv", top_factor=1.04)
    opts = dataclasses.replace(FAST, bootstrap=4)
    output = sweep.fit_sweep(plan, out, options=opts, baselines={None: NotRun("not measured here")})
    fit = sweep.SweepFit(output=output, name="synth", spec="s", results="r", results_sha256="x", n_planned=0)
    last = sweep.fit_report(fit).splitlines()[-1]
    v = output.fit.diagnostics
    assert "extrapolation.mean_error" in v.failed and "regime.below_baseline" in v.not_evaluated
    assert last.startswith("verdict: FAIL: ")
    mean = next(c for c in v.checks if c.name == "extrapolation.mean_error")
    assert f"extrapolation.mean_error ({mean.value:.4g}, needs <= 0.01)" in last
    assert last.endswith("1 not evaluated: regime.below_baseline (of 13 checks)")
    assert fit.to_dict()["baseline"] == {"not_run": "not measured here"}


def test_fit_count_nonembed_from_the_spec(tmp_path):
    plan = make_plan(tmp_path, "fit: {count: nonembed, bootstrap: 3}\n")
    assert plan.spec.fit_count == "nonembed" and plan.spec.fit_bootstrap == 3
    out = tmp_path / "sweep"
    out.mkdir()
    write_results(out / "results.csv")
    opts = dataclasses.replace(FAST, bootstrap=0)  # no intervals: no diagnostics (a FAIL verdict)
    output = sweep.fit_sweep(plan, out, options=opts, baselines={})
    d = output.to_dict()
    assert (
        d["n_count"] == "nonembed" and d["alt_count"]["count"] == "total" and d["input"]["n_col"] == "n_params_nonembed"
    )
    runs = sweep.load_sweep_runs(plan, out)
    total = sweep.load_sweep_runs(plan, out, n_col="n_params")
    assert np.array_equal(runs.N, total.N - EMBED) and "diagnostics" not in d
    fit = sweep.SweepFit(output=output, name="synth", spec="s", results="r", results_sha256="x", n_planned=0)
    assert sweep.fit_report(fit).splitlines()[-1].startswith("verdict: FAIL: no diagnostics")
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC + "fit: {count: embed}\n")
    with pytest.raises(Exception, match="fit.count must be total or nonembed"):
        sweep.load_spec(bad)


def test_noise_without_repeated_points():
    nz = Noise.from_runs([1, 2, 3], [1, 1, 1], [2.0, 1.9, 1.8], [2.0, 1.9, 1.7])
    assert nz.sigma is None and nz.n_pairs == 0 and nz.residual_rms == pytest.approx(math.sqrt(0.01 / 3))
    three = Noise.from_runs([1, 1, 1, 2], [5, 5, 5, 5], [1.0, 2.0, 3.0, 7.0])
    assert three.n_pairs == 1 and three.sigma == pytest.approx(1.0) and three.residual_rms is None


# ------------------------------------------------------------------ the baseline


def _independent_trigram_nll(train, val, starts, seq_len, vocab, eot, d=0.75):
    """Interpolated absolute discounting (count_models' 'absolute') counted with Counters, on
    each target of each window, from the two validation tokens before it (an end-of-text token
    before the split)."""
    train = [int(t) for t in train]
    c1 = Counter(train)
    c2 = Counter(zip(train, train[1:]))
    c3 = Counter(zip(train, train[1:], train[2:]))
    ctx1, ctx2, u1, u2 = Counter(), Counter(), Counter(), Counter()
    for (a, _b), n in c2.items():
        ctx1[a] += n
        u1[a] += 1
    for (a, b, _c), n in c3.items():
        ctx2[(a, b)] += n
        u2[(a, b)] += 1
    ext = [eot, eot] + [int(t) for t in val]
    total = 0.0
    count = 0
    for s in starts:
        for t in range(s + 1, s + seq_len + 1):
            a, b, w = ext[t], ext[t + 1], ext[t + 2]  # val[t-2], val[t-1], val[t]
            p = (c1[w] + 1.0) / (len(train) + vocab)
            if ctx1[b]:
                p = max(c2[(b, w)] - d, 0) / ctx1[b] + d * u1[b] / ctx1[b] * p
            if ctx2[(a, b)]:
                p = max(c3[(a, b, w)] - d, 0) / ctx2[(a, b)] + d * u2[(a, b)] / ctx2[(a, b)] * p
            total -= math.log(p)
            count += 1
    return total / count, count


def test_baseline_equals_an_independent_count_on_the_same_tokens(tmp_path):
    corpus = tmp_path / "tiny.txt"
    rng = np.random.default_rng(0)
    words = ["the ", "cat ", "sat ", "on ", "a ", "mat. ", "dog ", "ran "]
    corpus.write_text("".join(rng.choice(words, 3000)))
    splits = load_tokens(DataConfig(corpus=str(corpus), tokenizer="byte", val_fraction=0.2))
    seq_len, batch, n_batches = 16, 4, 3
    got = sweep_baseline.count_baseline(splits, seq_len, batch, n_batches)
    starts = Batches(splits, seq_len, batch, seed=0).val_window_ids(n_batches) * seq_len
    assert starts[0] == 0  # the first window starts the split: its first target's context is padded
    ref, n = _independent_trigram_nll(
        splits.train, splits.val, starts, seq_len, splits.n_vocab, int(splits.manifest["eot"])
    )
    assert got["tokens"] == n == n_batches * batch * seq_len
    assert got["trigram"] == pytest.approx(ref, rel=1e-12)
    assert got["unigram"] > got["bigram"] > got["trigram"]
    # the targets are the ones a run's val_loss averages over: window[1:] of each val batch
    batches = Batches(splits, seq_len, batch, seed=0)
    targets = np.concatenate([w[:, 1:].ravel() for w in batches.val_batches(n_batches)])
    flat = np.concatenate([np.asarray(splits.val[s + 1 : s + seq_len + 1]) for s in starts])
    assert np.array_equal(targets, flat)


def test_sweep_baseline_is_cached_and_in_bits_per_byte_for_val_bpb(tmp_path):
    plan = make_plan(tmp_path, "fit: {loss: val_bpb}\n")
    out = tmp_path / "sweep"
    out.mkdir()
    (b,) = sweep_baseline.sweep_baselines(plan, out).values()
    assert isinstance(b, Baseline)
    cache = json.loads((out / "baseline.json").read_text())
    (entry,) = cache.values()
    assert entry["trigram"] == b.trigram and entry["tokens"] == b.tokens
    assert b.regime_loss == pytest.approx(b.trigram * entry["tokens"] / (math.log(2) * entry["bytes"]))
    entry["trigram"] = 0.123  # a cached value is read back, not recounted
    (out / "baseline.json").write_text(json.dumps(cache))
    (again,) = sweep_baseline.sweep_baselines(plan, out).values()
    assert again.trigram == 0.123


# --------------------------------------------------------------- analysis.fit


def test_fit_cli_holdout_on_a_sweep_results_table(tmp_path, capsys):
    csv = write_results(tmp_path / "results.csv")
    out = tmp_path / "fit.json"
    rc = fitcli.main(
        ["--results", str(csv), "--approach", "3", "--holdout-top-c", "3", "--out", str(out), "--no-progress"]
    )
    assert rc == 0
    d = json.loads(out.read_text())
    runs = fitcli.load_runs(csv)
    assert d["n_points"] == len(runs) == 28  # the diverged row is left out
    held = d["holdout"]
    top = np.argsort(-runs.C, kind="stable")[:3]
    assert [r["C"] for r in held["runs"]] == pytest.approx(runs.C[top].tolist())
    assert max(abs(r["rel_error"]) for r in held["runs"]) < 0.01
    assert "hold-out of the 3 largest-compute runs" in capsys.readouterr().out


def test_sweep_cli_help_says_the_verdict_is_not_the_exit_code():
    text = " ".join(sweep_cli.parser().format_help().split())
    assert "exit code 0" in text and "verdict" in text
