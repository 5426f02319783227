"""The run-directory readers: config, metrics (a torn last line tolerated), summary."""

from __future__ import annotations

import json

import pytest

from scaling import run_dir
from scaling.config import Config
from scaling.errors import UsageError


def test_metrics_drop_a_torn_last_line_and_refuse_a_bad_middle_line(tmp_path):
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 4, "lo')
    assert [m["step"] for m in run_dir.read_metrics(tmp_path)] == [1, 2, 3]
    (tmp_path / "metrics.jsonl").write_text(lines[0] + "\n{oops\n\n" + lines[1] + "\n")
    with pytest.raises(UsageError, match="line 2 is not valid JSON"):
        run_dir.read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(lines[0] + "\n[1, 2]\n" + lines[1] + "\n")
    with pytest.raises(UsageError, match="entry 2 is not a JSON object"):
        run_dir.read_metrics(tmp_path)
    assert run_dir.read_metrics(tmp_path / "nowhere") == []


def test_summary_is_none_until_written_and_must_be_an_object(tmp_path):
    assert run_dir.read_summary(tmp_path) is None
    (tmp_path / "summary.json").write_text('{"status": "completed"}')
    assert run_dir.read_summary(tmp_path) == {"status": "completed"}
    (tmp_path / "summary.json").write_text("[1]")
    with pytest.raises(UsageError, match="not a JSON object"):
        run_dir.read_summary(tmp_path)
    (tmp_path / "summary.json").write_text('{"status": ')
    with pytest.raises(UsageError, match="not valid JSON"):
        run_dir.read_summary(tmp_path)


def test_config_is_read_back_and_a_directory_without_one_is_not_a_run(tmp_path):
    with pytest.raises(UsageError, match=r"not a training run directory \(no config.yaml\)"):
        run_dir.read_config(tmp_path)
    cfg = Config()
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    assert run_dir.read_config(tmp_path) == cfg
    assert run_dir.checkpoints_path(tmp_path) == tmp_path / "checkpoints"
