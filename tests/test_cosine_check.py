"""analysis.cosine_check: a wsd endpoint's cosine twin is its config with a cosine schedule,
trained from scratch beside the sweep; bad input exits 2 before any training."""

from __future__ import annotations

import json

import pytest

from analysis import cosine_check
from experiments import train as train_cli
from scaling.run_dir import read_config
from tests.helpers import TINY, run_cli


@pytest.mark.slow
def test_cosine_twin_has_the_runs_config_but_the_schedule(tmp_path):
    run = tmp_path / "sweep" / "runs" / "r0"
    train_cli.main(
        ["--out", str(run), *TINY, "--train.tokens", "10240", "--optim.schedule", "wsd", "--optim.min_lr_ratio", "0"]
    )
    rows = cosine_check.main(["--sweep", str(tmp_path / "sweep"), "--runs", "r0"])
    twin = read_config(tmp_path / "sweep" / "cosine_check" / "r0")
    wsd = read_config(run)
    assert twin.optim.schedule == "cosine" and twin.optim.min_lr_ratio == 0.1
    assert twin.model == wsd.model and twin.train == wsd.train and twin.optim.lr == wsd.optim.lr
    summary = json.loads((tmp_path / "sweep" / "cosine_check" / "r0" / "summary.json").read_text())
    assert rows[0]["cosine_val_loss"] == summary["val_loss"]
    assert rows[0]["rel_diff"] == rows[0]["wsd_val_loss"] / rows[0]["cosine_val_loss"] - 1
    check = json.loads((tmp_path / "sweep" / "cosine_check" / "check.json").read_text())
    assert check["max_abs_rel_diff"] == abs(rows[0]["rel_diff"])


def test_bad_input_exits_2(tmp_path):
    r = run_cli("analysis.cosine_check", "--sweep", str(tmp_path), "--runs", "nope")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "nope" in r.stderr
    assert not (tmp_path / "cosine_check").exists()
