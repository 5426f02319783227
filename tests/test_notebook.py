"""analysis/chinchilla.ipynb: its inputs are the variables of the cell tagged ``parameters``
(papermill's convention: these tests inject a cell after it, as papermill does); it runs on
any results.csv, fitting the approaches the runs support; it warns about predictions more than
a decade of compute beyond the runs; and it ships with the outputs of the default sweep."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from scaling import laws
from scaling.laws import reach
from tests.helpers import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = REPO / "analysis" / "chinchilla.ipynb"
DEFAULT_RESULTS = "docs/default-sweep/results.csv"
LAW = (1.8, 400.0, 2000.0, 0.34, 0.37)  # E, A, B, alpha, beta
N_FIGURES = 7  # loss against N and D, envelope, isoflop, predicted vs observed, residuals, optimal N, frontier


def _execute(params: dict, cwd) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    i = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    nb.cells.insert(i + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def _outputs(nb) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _text(nb) -> str:
    return "".join(o.get("text", "") for o in _outputs(nb))


def _n_images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for o in _outputs(nb))


def _fit_lines(text: str) -> list[str]:
    """The lines of the fits' report that do not depend on the bootstrap."""
    keys = ("runs from", "approach 3 (Huber", "approach 2 (IsoFLOP", "approach 1 (envelope", "approach 1 on")
    return [line.strip() for line in text.splitlines() if any(k in line for k in keys)]


@pytest.fixture(autouse=True)
def _one_blas_thread(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")


def write_isoflop_csv(path, *, noise=0.005, seed=0):
    """A sweep's results.csv: sizes shared across 4 IsoFLOP budgets (so that each size has
    annealed endpoints at several C), the law LAW with 0.5% noise, one diverged run."""
    rng = np.random.default_rng(seed)
    rows = []
    for C in np.logspace(16, 17.5, 4):
        for N in np.logspace(6, 7.5, 7):
            D = C / (6 * N)
            loss = laws.law_loss(N, D, *LAW) * math.exp(noise * rng.standard_normal())
            rows.append((f"r{len(rows)}", N, D, C, loss, "completed"))
    rows.append(("bad", 1e7, 1e9, 1e16, "nan", "diverged"))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run_id", "n_params", "tokens", "budget", "val_loss", "status"])
        w.writerows(rows)
    return path


def test_shipped_with_the_default_sweeps_outputs_and_a_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    params: dict = {}
    exec(code[0].source, params)  # plain assignments: the values papermill replaces
    assert params["results"] == DEFAULT_RESULTS and (REPO / DEFAULT_RESULTS).is_file()
    assert {"n_col", "d_col", "c_col", "loss_col", "bootstrap", "predict_c"} <= set(params)
    assert not any("environ" in c.source or "getenv" in c.source for c in code)
    with open(REPO / DEFAULT_RESULTS, newline="") as f:
        n_completed = sum(r["status"] == "completed" for r in csv.DictReader(f))
    text = _text(nb)
    assert not [o for o in _outputs(nb) if o.get("output_type") == "error" or o.get("name") == "stderr"]
    assert f"{n_completed} runs from {DEFAULT_RESULTS}" in text
    for a in ("1", "2", "3"):
        assert f"approach {a}: fitted" in text
    assert "lies 2.0 decades of compute beyond the largest run" in text  # the prediction at 100x
    assert _n_images(nb) == N_FIGURES


def test_runs_on_a_sweeps_results_with_injected_parameters(tmp_path):
    results = write_isoflop_csv(tmp_path / "results.csv")
    c_max = 10**17.5
    nb = _execute({"results": str(results), "bootstrap": 8, "predict_c": [3 * c_max, 300 * c_max]}, cwd=tmp_path)
    text = _text(nb)
    assert "28 runs from" in text  # the diverged run dropped
    for a in ("1", "2", "3"):
        assert f"approach {a}: fitted" in text
    assert "approach 2 (IsoFLOP, " in text and "approach 1 (envelope" in text
    warned = [line for line in text.splitlines() if line.startswith("warning: the prediction at C = ")]
    # 3x the largest run's compute is within a decade; 300x is 2.5 decades out (and so are the
    # frontier table's budgets beyond 10x)
    assert f"warning: the prediction at C = {300 * c_max:.3g} FLOPs lies 2.5 decades" in text
    assert not any(f"C = {3 * c_max:.3g} FLOPs" in line for line in warned)
    alpha = next(line for line in text.splitlines() if line.strip().startswith("alpha ="))
    assert float(alpha.split("=")[1].split()[0]) == pytest.approx(LAW[3], abs=0.05)
    assert _n_images(nb) == N_FIGURES


@pytest.mark.slow
def test_a_table_of_other_columns_without_budgets(tmp_path):
    """Chinchilla's layout (N, C, loss; D derived), one run per size: approach 3 only, the
    other approaches' figures replaced by the reason."""
    rng = np.random.default_rng(1)
    path = tmp_path / "runs.csv"
    lines = ["Model Size,Training FLOP,loss"]
    for N in np.logspace(6, 8, 9):
        C = N * 6 * 20 * N * math.exp(0.5 * rng.standard_normal())
        lines.append(f"{N:.6g},{C:.6g},{laws.law_loss(N, C / (6 * N), *LAW):.6f}")
    path.write_text("\n".join(lines) + "\n")
    params = dict(results=str(path), n_col="Model Size", d_col=None, c_col="Training FLOP", loss_col="loss")
    nb = _execute({**params, "budget_col": None, "bootstrap": 0, "ylabel": "loss"}, cwd=tmp_path)
    text = _text(nb)
    assert "approach 3: fitted" in text and "approach 2: not fitted" in text and "approach 1: not fitted" in text
    assert "isoflop: not drawn" in text and "envelope: not drawn" in text


@pytest.mark.slow
def test_default_results_found_from_another_directory_and_equal_the_shipped_outputs(tmp_path):
    """Executed elsewhere (the relative path resolved against the repository), the default
    sweep's fits are those the notebook ships with."""
    nb = _execute({"bootstrap": 0}, cwd=tmp_path)
    shipped = nbformat.read(NOTEBOOK, as_version=4)
    fresh = _fit_lines(_text(nb))
    assert len(fresh) >= 4 and fresh == _fit_lines(_text(shipped))


def test_reach_counts_decades_beyond_the_largest_run():
    data = [1e12, 3e12, 6e12]
    np.testing.assert_allclose(reach.decades_beyond([6e12, 6e13, 6e14, 6e11], data), [0.0, 1.0, 2.0, -1.0])
    lines = reach.warnings([6e12, 6.1e13, 6e15], data)
    assert len(lines) == 2 and "C = 6.1e+13 FLOPs lies 1.0 decades" in lines[0] and "lies 3.0 decades" in lines[1]
    assert reach.warnings([6e14], data, decades=3) == []
