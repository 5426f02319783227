"""Curriculum: pacing formulas, difficulty scores (scaling.data.curriculum_scores; by a model: scaling.difficulty), the
competence sampler, exact resume, arm differences (analysis.curriculum)."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import curriculum as arms
from experiments import train as train_cli
from scaling import difficulty
from scaling.config import Config, DataConfig, ModelConfig, TrainConfig
from scaling.curriculum_config import ScoreSpec, check_config, parse_curriculum, parse_score
from scaling.data import Batches, load_tokens
from scaling.data import curriculum as cu
from scaling.data import curriculum_scores as cs
from scaling.errors import UsageError
from scaling.model import GPT
from scaling.train import cross_entropy, load_run
from tests.helpers import REPO, TINY

CURRIC = [
    "--data.curriculum",
    "root",
    "--data.curriculum_score",
    "rarity",
    "--data.curriculum_horizon",
    "1.0",
    "--checkpoint.every_steps",
    "20",
    "--checkpoint.keep",
    "10",
]


def _corpus(tmp_path, n=14, seed=0):
    """Documents of varied length and vocabulary."""
    rng = random.Random(seed)
    d = tmp_path / "corpus"
    d.mkdir()
    words = ["the", "cat", "sat", "on", "mat", "quixotic", "zephyr", "jynx", "fjord", "42", "OK", "!?"]
    for i in range(n):
        k = rng.randint(20, 400)
        (d / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(words[: 4 + i % 9]) for _ in range(k)))
    return d


def _cfg(corpus, curriculum="linear", score="rarity", seq_len=16, batch=8, tokens=16 * 8 * 50, seed=3, **data):
    return Config(
        model=ModelConfig(n_layer=1, n_head=1, d_model=16, seq_len=seq_len, vocab_size=257),
        data=DataConfig(corpus=str(corpus), tokenizer="byte", curriculum=curriculum, curriculum_score=score, **data),
        train=TrainConfig(tokens=tokens, batch_size=batch, seed=seed, progress=False),
    )


# ----------------------------------------------------------------------------- pacing


def test_pacing_functions_equal_the_formulas_and_are_monotone_from_c0_to_1():
    rng = np.random.default_rng(0)
    for _ in range(20):
        T, c0 = rng.uniform(5, 500), rng.uniform(0.01, 0.9)
        t = rng.uniform(0, 2 * T, 50)
        np.testing.assert_allclose(cu.linear_pacing(t, T, c0), np.minimum(1, t * (1 - c0) / T + c0), rtol=1e-12)
        for p in (2, 3):
            want = np.minimum(1, (t * (1 - c0**p) / T + c0**p) ** (1 / p))
            np.testing.assert_allclose(cu.root_pacing(t, T, c0, p), want, rtol=1e-12)
        assert cu.root_pacing(t, T, c0)[0] == cu.root_pacing(t, T, c0, 2)[0]  # p = 2 by default
        for f in (cu.linear_pacing, cu.root_pacing, cu.step_pacing, cu.exp_pacing):
            grid = np.linspace(0, 1.5 * T, 301)
            c = f(grid, T, c0)
            assert math.isclose(f(0, T, c0), c0, rel_tol=1e-12), f.__name__
            assert np.all(np.diff(c) >= -1e-15), f.__name__
            assert f(T, T, c0) == 1.0 and np.all(c[grid >= T] == 1.0), f.__name__
            assert np.all(c[grid < T * (1 - 1e-9)] < 1.0), f.__name__
            assert np.all((c >= c0 - 1e-15) & (c <= 1.0))
    # the step schedule has n_stages + 1 levels; exp is geometric: c(T/2) = sqrt(c0)
    assert sorted(set(cu.step_pacing(np.arange(100), 100, 0.2).round(12))) == [0.2, 0.4, 0.6, 0.8]
    assert math.isclose(cu.exp_pacing(50, 100, 0.04), 0.2)


def test_config_values_are_validated(tmp_path, capsys):
    assert parse_curriculum("linear") == ("linear", False)
    assert parse_curriculum("anti-exp") == ("exp", True)
    assert parse_score("rarity") == ScoreSpec("rarity", "sequence")
    assert parse_score("doc:length") == ScoreSpec("length", "document")
    assert parse_score("doc:model:runs/a:b") == ScoreSpec("model", "document", "runs/a:b")
    for bad in ("cosine", "anti-", "anti-anti-linear", "Linear"):
        with pytest.raises(UsageError, match="data.curriculum"):
            parse_curriculum(bad)
    for bad in ("size", "model:", "model", "rarity:x", "doc:", "page:length"):
        with pytest.raises(UsageError, match="data.curriculum_score"):
            parse_score(bad)
    check_config(DataConfig(curriculum="anti-step", curriculum_score="doc:rarity"))
    # bad values end the CLI with one line and exit code 2, before any compute
    for args in (
        ["--data.curriculum", "cosine"],
        ["--data.curriculum_score", "perplexity"],
        ["--data.curriculum_score", f"model:{tmp_path / 'nope'}"],
    ):
        with pytest.raises(SystemExit) as e:
            train_cli.main(["--out", str(tmp_path / "run"), *TINY, "--data.curriculum", "linear", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------- scores


def _hand_scores(tokens, L, eot, n_vocab):
    """Window scores by direct loops (independent of the vectorised code)."""
    tokens = [int(x) for x in tokens]
    doc, d, lengths = [], 0, [0]
    for x in tokens:  # document of each token (an end-of-text belongs to the document it ends)
        doc.append(d)
        if x == eot:
            d += 1
            lengths.append(0)
        else:
            lengths[d] += 1
    freq = np.bincount(tokens, minlength=n_vocab) / len(tokens)
    n_w = (len(tokens) - 1) // L
    out = {"length": [], "rarity": [], "doc:length": [], "doc:rarity": []}
    doc_rarity = {}
    for i, x in enumerate(tokens):
        doc_rarity[doc[i]] = doc_rarity.get(doc[i], 0.0) - math.log(freq[x])
    for w in range(n_w):
        idx = range(w * L, w * L + L + 1)
        out["length"].append(sum(lengths[doc[i]] for i in idx) / (L + 1))
        out["rarity"].append(-sum(math.log(freq[tokens[i]]) for i in idx))
        out["doc:length"].append(lengths[doc[w * L]])
        out["doc:rarity"].append(doc_rarity[doc[w * L]])
    return out


def test_scores_equal_a_direct_computation_and_are_deterministic_and_cached(tmp_path, monkeypatch):
    splits = load_tokens(DataConfig(corpus=str(_corpus(tmp_path)), tokenizer="byte", val_fraction=0.2))
    eot = splits.manifest["eot"]
    monkeypatch.setattr(cs, "_CHUNK_TOKENS", 1000)  # several chunks, to test the chunked scans
    for L in (16, 7):
        hand = _hand_scores(np.asarray(splits.train), L, eot, splits.n_vocab)
        for name, want in hand.items():
            got = cs.compute_scores(splits, L, parse_score(name))
            np.testing.assert_allclose(got, want, rtol=1e-9, err_msg=f"{name} L={L}")
    # the length score varies with the documents a window packs; rarity ranks rare-token windows higher
    assert len(set(hand["doc:length"])) > 5 and np.ptp(hand["length"]) > 0
    spec = parse_score("rarity")
    first = cs.load_scores(splits, 16, spec)
    path = cs.scores_path(splits, 16, spec)
    assert path.is_file() and path.is_relative_to(os.environ["SCALING_CACHE_DIR"])
    np.testing.assert_array_equal(np.load(path), first)
    np.testing.assert_array_equal(cs.load_scores(splits, 16, spec), first)
    np.testing.assert_array_equal(cs.compute_scores(splits, 16, spec), first)  # deterministic
    assert cs.scores_path(splits, 32, spec) != path and cs.scores_path(splits, 16, parse_score("length")) != path
    # the empirical CDF: rank / n, the ECDF for distinct scores, ties spread at random
    s = np.array([3.0, 1.0, 2.0, 5.0])
    np.testing.assert_allclose(cu.empirical_cdf(s), [(s <= v).mean() for v in s])
    cdf = cu.empirical_cdf(np.zeros(1000), tie_seed=1)
    assert sorted(cdf) == list(np.arange(1, 1001) / 1000) and not np.all(np.diff(cdf) > 0)


# ----------------------------------------------------------------------------- sampler


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    return _corpus(root, n=20, seed=1)


def test_sampler_never_emits_a_window_above_the_current_competence(small):
    for curriculum in ("linear", "root", "step", "exp", "anti-root"):
        cfg = _cfg(small, curriculum, "rarity", curriculum_horizon=0.6)
        splits = load_tokens(cfg.data)
        sampler = difficulty.make_sampler(cfg, splits, progress=False)
        scores = cs.load_scores(splits, 16, parse_score("rarity"))
        assert sampler.n == len(scores) and sampler.horizon_steps == pytest.approx(0.6 * 50)
        batches = Batches(splits, 16, 8, cfg.train.seed, sampler=sampler)
        hardest_first = curriculum.startswith("anti-")
        seen_max = 0.0
        for step in range(50):
            c = sampler.competence(step)
            ids = batches.window_starts(step) // 16
            assert np.all(batches.window_starts(step) % 16 == 0)
            assert np.all(sampler.cdf[ids] <= c + 1e-12), (curriculum, step)
            k = sampler.n_eligible(step)
            assert k == max(1, math.floor(c * sampler.n + 1e-9)) or c == 1.0
            # the eligible windows are the easiest (anti: hardest) by score
            ref = np.sort(scores)[::-1] if hardest_first else np.sort(scores)
            bound = ref[k - 1]
            assert np.all(scores[ids] >= bound) if hardest_first else np.all(scores[ids] <= bound)
            if c < 1:
                assert len(set(ids.tolist())) == 8  # no repeats within a batch
            # rows [lo, hi) are those rows of the full batch; the batch is a pure function of (seed, step)
            np.testing.assert_array_equal(batches.window_starts(step, 2, 5), batches.window_starts(step)[2:5])
            np.testing.assert_array_equal(batches.train_batch(step)[:, 0], splits.train[ids * 16])
            seen_max = max(seen_max, sampler.cdf[ids].max())
        again = difficulty.make_sampler(cfg, splits, progress=False)
        np.testing.assert_array_equal(again(17, 17 * 8 + np.arange(8)), sampler(17, 17 * 8 + np.arange(8)))
        assert seen_max > 0.9  # by the end it draws from the whole corpus
    assert sampler.competence(0) == pytest.approx(0.1)  # data.curriculum_c0 default


def test_full_competence_draws_from_the_plain_loaders_distribution(small):
    cfg = _cfg(small, "linear", curriculum_horizon=0.1)
    splits = load_tokens(cfg.data)
    sampler = difficulty.make_sampler(cfg, splits, progress=False)
    plain = Batches(splits, 16, 8, cfg.train.seed)
    n = sampler.n
    start = math.ceil(sampler.horizon_steps)
    assert sampler.competence(start) == 1.0 and sampler.n_eligible(start) == n
    # after the horizon: whole epochs visit every window once, as the plain loader's do
    steps = range(start, start + 40 * n // 8)
    ids = np.concatenate([sampler.batch(s) for s in steps])
    samples = np.concatenate([s * 8 + np.arange(8) for s in steps])
    for e in np.unique(samples // n)[1:-1]:
        assert sorted(ids[samples // n == e]) == list(range(n))
    plain_ids = np.concatenate([plain.window_starts(s) // 16 for s in steps])
    # frequencies: both uniform over their windows (chi-square), and alike (two-sample test)
    for x, m in ((ids, n), (plain_ids, plain.n_windows)):
        counts = np.bincount(x, minlength=m)
        assert stats.chisquare(counts).pvalue > 1e-3
    # the uniform draw used below competence 1, at full competence, is uniform too
    draws = np.concatenate([sampler.draw(s, n) for s in range(2000)])
    assert stats.chisquare(np.bincount(draws, minlength=n)).pvalue > 1e-3
    table = np.stack(
        [np.bincount(draws // 10, minlength=n // 10 + 1), np.bincount(plain_ids // 10, minlength=n // 10 + 1)]
    )
    assert stats.chi2_contingency(table[:, table.sum(axis=0) > 0]).pvalue > 1e-3
    # below competence 1: uniform over the eligible prefix
    k = n // 3
    draws = np.concatenate([sampler.draw(s, k) for s in range(1000)])
    assert set(np.unique(draws)) == set(sampler.order[:k].tolist())
    assert stats.chisquare(np.bincount(draws, minlength=n)[sampler.order[:k]]).pvalue > 1e-3


def test_constant_scores_admit_a_random_share(tmp_path):
    """One document: every window has the same length; competence still admits floor(c n) windows."""
    (tmp_path / "one.txt").write_text("abcdefgh " * 400)
    cfg = _cfg(tmp_path / "one.txt", "linear", score="length")
    splits = load_tokens(cfg.data)
    sampler = difficulty.make_sampler(cfg, splits, progress=False)
    assert np.ptp(cs.load_scores(splits, 16, parse_score("length"))) == 0
    k = sampler.n_eligible(0)
    assert k == math.floor(0.1 * sampler.n) and np.ptp(sampler.order[:k]) > sampler.n // 2  # spread, not a prefix


# ----------------------------------------------------------------------------- kill and resume


def _metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("cref") / "run"
    train_cli.main(["--out", str(out), *TINY, *CURRIC])
    return out


@pytest.mark.e2e
@pytest.mark.slow
def test_a_killed_and_resumed_curriculum_run_equals_an_unbroken_one(reference, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "experiments.train", "--out", str(out), *TINY, *CURRIC]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (out / "checkpoints" / "20").exists():
        time.sleep(0.02)
    time.sleep(random.Random(time.time_ns()).uniform(0.0, 0.1))
    assert proc.poll() is None, "run ended before the kill"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists()
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines, ref_lines = _metrics(out), _metrics(reference)
    assert [x["step"] for x in lines] == [x["step"] for x in ref_lines]
    assert [x["loss"] for x in lines] == [x["loss"] for x in ref_lines]
    assert [x.get("val_loss") for x in lines] == [x.get("val_loss") for x in ref_lines]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_loss"] == json.loads((reference / "summary.json").read_text())["val_loss"]
    # token accounting is that of a plain run
    assert summary["tokens"] == 80 * 8 * 32 and lines[-1]["tokens"] == 80 * 8 * 32


def test_model_scores_are_the_reference_checkpoints_losses(reference, tmp_path):
    splits = load_tokens(DataConfig(corpus=str(_corpus(tmp_path, n=6, seed=2)), tokenizer="byte"))
    spec = parse_score(f"model:{reference}")
    scores = difficulty.load_scores(splits, 32, spec, progress=False)
    n_w = (len(splits.train) - 1) // 32
    assert scores.shape == (n_w,) and np.all(np.isfinite(scores))
    cfg, params = load_run(reference)
    model = GPT(cfg.model)
    for w in (0, n_w // 2, n_w - 1):
        batch = np.asarray(splits.train[w * 32 : w * 32 + 33], np.int32)[None]
        assert scores[w] == pytest.approx(float(jax.device_get(cross_entropy(model, params, batch))), rel=1e-5)
    doc = difficulty.compute_scores(splits, 32, parse_score(f"doc:model:{reference}"), progress=False)
    start_doc = cs.documents(splits.train, splits.manifest["eot"]).doc_of(np.arange(n_w) * 32)
    for d in np.unique(start_doc):
        np.testing.assert_allclose(doc[start_doc == d], scores[start_doc == d].mean(), rtol=1e-9)
    assert "L32" in difficulty.scores_path(splits, 32, spec).name
    with pytest.raises(UsageError, match="seq_len"):
        difficulty.compute_scores(splits, 64, spec)


# ----------------------------------------------------------------------------- arm differences


def test_arm_differences_with_seed_and_batch_bootstraps():
    rows = []
    rng = np.random.default_rng(0)
    for n in (1000, 2000):
        for seed in (0, 1, 2):
            base = 3.0 - n / 1e4 + rng.normal(0, 0.01)
            for arm, shift in (("none", 0.0), ("linear", -0.02), ("anti", 0.05)):
                rows.append(
                    {
                        "run_id": f"{n}-{seed}-{arm}",
                        "arm": arm,
                        "n_params": n,
                        "tokens": 5000,
                        "seed": seed,
                        "val_loss": base + shift + rng.normal(0, 0.003),
                        "status": "completed",
                    }
                )
    rows.append(
        {
            "run_id": "x",
            "arm": "linear",
            "n_params": 3000,
            "tokens": 5000,
            "seed": 0,
            "val_loss": 9.0,
            "status": "diverged",
        }
    )
    df = pd.DataFrame(rows)
    t = arms.arm_differences(df, n_boot=4000)
    assert list(t["arm"]) == ["anti", "linear"] * 2 and set(t["resampled"]) == {"seeds"}
    for _, r in t.iterrows():
        cell = df[(df.n_params == r.n_params) & (df.status == "completed")]
        a = cell[cell.arm == r.arm].sort_values("seed").val_loss.to_numpy()
        b = cell[cell.arm == "none"].sort_values("seed").val_loss.to_numpy()
        assert r["diff"] == pytest.approx((a - b).mean(), abs=1e-12)
        assert r.lo <= r["diff"] <= r.hi
        d = a - b  # a paired bootstrap by a plain loop, independently seeded
        g = np.random.default_rng(123)
        reps = [d[g.integers(0, 3, 3)].mean() for _ in range(4000)]
        assert r.lo == pytest.approx(np.quantile(reps, 0.025), abs=0.004)
        assert r.hi == pytest.approx(np.quantile(reps, 0.975), abs=0.004)
    # per-batch losses: the same batch draw for both arms, so a constant batch difference has no spread
    one = df[df.seed == 0]
    per_batch = {rid: rng.normal(3, 0.3, 16) for rid in one.run_id}
    for rid, arm in zip(one.run_id, one.arm):
        if arm != "none":
            per_batch[rid] = per_batch[rid.replace(arm, "none")] + (0.1 if arm == "anti" else -0.1)
    t = arms.arm_differences(one, per_batch=per_batch, n_boot=500)
    assert set(t["resampled"]) == {"batches"}
    for _, r in t.iterrows():
        assert r.lo == pytest.approx(r.hi, abs=1e-9) and r.lo == pytest.approx(0.1 if r.arm == "anti" else -0.1)
    with pytest.raises(UsageError, match="baseline"):
        arms.arm_differences(df, baseline="control")


@pytest.mark.e2e
def test_arm_differences_cli_reevaluates_validation_batches(reference, tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    summary = json.loads((reference / "summary.json").read_text())
    rows = []
    for arm in ("none", "root"):
        (runs / f"r-{arm}").symlink_to(reference, target_is_directory=True)
        rows.append(
            {
                "run_id": f"r-{arm}",
                "arm": arm,
                "n_params": summary["n_params"],
                "tokens": summary["tokens"],
                "seed": 0,
                "val_loss": summary["val_loss"],
                "status": "completed",
            }
        )
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    table = arms.main(
        ["--results", str(tmp_path / "results.csv"), "--out", str(tmp_path / "d.json"), "--bootstrap", "200"]
    )
    out = capsys.readouterr().out
    assert "root" in out and "batches" in out
    assert table.iloc[0]["diff"] == 0.0 and table.iloc[0]["lo"] == 0.0 == table.iloc[0]["hi"]
    got = json.loads((tmp_path / "d.json").read_text())
    assert got["val_loss_recheck_max_abs"] < 1e-5  # per-batch losses average to the run's val_loss
    with pytest.raises(SystemExit) as e:
        arms.main(["--results", str(tmp_path / "missing.csv")])
    assert e.value.code == 2
