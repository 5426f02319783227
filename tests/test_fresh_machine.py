"""A fresh machine: the repository's tracked files installed (not editable) into an empty
folder, no data or tiktoken variables, no ``../shared``, run from elsewhere: the smoke sweep
finishes and a training run on the default corpus (the embedded Gutenberg books) trains."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, TINY


def _tracked_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.mark.slow
@pytest.mark.e2e
def test_a_fresh_install_runs_the_smoke_sweep_and_trains_on_the_default_corpus(tmp_path):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the repository's git checkout")
    src = _tracked_copy(tmp_path / "clone")
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(site), str(src)], check=True, capture_output=True, timeout=600)
    shutil.rmtree(src)  # nothing may read the clone any more
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCALING_", "TIKTOKEN_", "PYTHON"))}
    env |= {"PYTHONPATH": str(site), "HOME": str(tmp_path / "home"), "CI": "false"}
    work = tmp_path / "elsewhere"
    work.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True, timeout=1200)

    where = run("-c", "import scaling, experiments; print(scaling.__file__); print(experiments.__file__)")
    assert where.returncode == 0 and all(Path(p).is_relative_to(site) for p in where.stdout.split()), where

    config = site / "experiments" / "configs" / "smoke.yaml"
    sweep = run("-m", "experiments.sweep", "--config", str(config), "--out", str(tmp_path / "sweep"))
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert (tmp_path / "sweep" / "results.csv").is_file()

    train = run("-m", "experiments.train", "--out", str(tmp_path / "run"), "--data.corpus", "gutenberg", *TINY)
    assert train.returncode == 0, train.stderr[-3000:]
    assert (tmp_path / "run" / "summary.json").is_file()
    cache = tmp_path / "home" / ".cache" / "scaling"
    extracted = sorted(p.name.split("-")[0] for p in (cache / "corpora").iterdir() if not p.name.startswith("."))
    assert extracted == ["gutenberg", "tinyshakespeare"]
    books = json.loads((site / "scaling" / "data" / "corpora" / "manifest.json").read_text())["corpora"]["gutenberg"]
    tokens = [json.loads(p.read_text()) for p in (cache / "tokens").glob("*/manifest.json")]
    assert [t["n_documents"] for t in tokens if t["corpus"] == "gutenberg"] == [len(books["documents"])]
