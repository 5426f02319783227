"""Experiment trackers and what a run shows while it trains: TensorBoard events read back with
TensorBoard's own reader equal metrics.jsonl, also across a resume; a W&B offline run's files
hold the run's config, history and summary, and a resumed run continues the same W&B run; a
sweep groups its runs; the entry point's stderr shows the platform, the compile and a line per
evaluation, and nothing of it with train.progress false."""

from __future__ import annotations

import json
import re
import shutil
import struct
import sys
import time
from pathlib import Path

import pytest
import yaml

from experiments import sweep as sweep_cli
from experiments import train as train_cli
from scaling import config_parse
from scaling.checkpoint import Checkpointer
from scaling.config import CheckpointConfig, LogConfig
from scaling.errors import UsageError
from scaling.train import Run
from scaling.train import trackers as trackers_lib
from tests.helpers import TINY, run_cli

CKPT = ["--checkpoint.every_steps", "20", "--checkpoint.keep", "10"]
TB = ["--log.tensorboard", "true"]


@pytest.fixture(scope="module")
def trainers() -> dict:
    """Compiled programs shared by this module's in-process runs (one compile of TINY's shape)."""
    return {}


def _train(out: Path, trainers: dict, *flags: str) -> dict:
    """Train (or resume) TINY with ``flags`` in this process, as experiments.train would."""
    args = train_cli.parser().parse_args(["--out", str(out), *TINY, *flags])
    cfg = config_parse.resolve(None, config_parse.overrides_from_args(args))
    return Run(cfg, out, trainers=trainers).run()


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _tb_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard shows them (its reader, its purging)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _tb_texts(logdir: Path) -> dict[str, list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    texts = {}
    for tag in ("config", "summary"):
        texts[tag] = [tensor_util.make_ndarray(e.tensor_proto).item().decode() for e in acc.Tensors(tag)]
    return texts


def _json_block(text: str) -> dict:
    return json.loads(text.strip().removeprefix("```").removesuffix("```"))


def _assert_tb_equals_jsonl(logdir: Path, out: Path) -> None:
    scalars, lines = _tb_scalars(logdir), _metrics(out)
    for key in ("loss", "lr", "grad_norm", "val_loss", "val_bpb"):
        want = [(x["step"], x[key]) for x in lines if key in x]
        got = scalars[key]
        assert [s for s, _ in got] == [s for s, _ in want], key  # every step once, in order
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), key  # stored as float32


def _kill_after(out: Path, step: int) -> None:
    """What a kill right after checkpoint ``step`` leaves: the later checkpoints never committed
    and no summary, but metrics and tracker files of the steps after it."""
    for d in (out / "checkpoints").iterdir():
        if d.name.isdigit() and int(d.name) > step:
            shutil.rmtree(d)
    (out / "summary.json").unlink()


# ------------------------------------------------------------------ Weights & Biases, offline


def _wandb_records(run_dir: Path) -> list:
    """The records of an offline W&B run's ``run-<id>.wandb`` file: a header (":W&B", magic
    0xBEE1, version) and then LevelDB-log framed records (32 KiB blocks; each chunk a crc32c,
    a length and a type: full, first, middle or last) holding wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1
    block, pos, records, parts = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            r = pb.Record()
            r.ParseFromString(parts)
            records.append(r)
            parts = b""
    return records


def _wandb_run(run_dir: Path) -> dict:
    """{id, group, config, history: {step: {key: value}}, summary} of one offline run."""
    out: dict = {"config": {}, "history": {}, "summary": {}}
    records = _wandb_records(run_dir)
    for _ in range(60):  # wandb's writer is a separate process: wait for the run's exit record
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.5)
        records = _wandb_records(run_dir)
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["id"], out["group"] = r.run.run_id, r.run.run_group
        elif kind == "config":
            for u in r.config.update:
                out["config"][u.key] = json.loads(u.value_json)
        elif kind == "history":
            row = {i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            out["history"][row["_step"]] = row
        elif kind == "summary":
            for u in r.summary.update:
                out["summary"][u.key or ".".join(u.nested_key)] = json.loads(u.value_json)
    return out


def _wandb_env(tmp_path: Path) -> dict:
    return {"WANDB_DIR": str(tmp_path / "wandb-home"), "WANDB_SILENT": "true", "WANDB_MODE": "offline"}


def _wandb_offline(tmp_path, monkeypatch) -> list[str]:
    for k, v in _wandb_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    return ["--log.wandb", "true", "--log.mode", "offline", "--log.project", "tests"]


def test_tensorboard_and_wandb_offline_read_back_equal_metrics_jsonl_across_a_resume(
    tmp_path, capsys, monkeypatch, trainers
):
    out, logdir = tmp_path / "run", tmp_path / "run" / "tensorboard"
    flags = [*CKPT, *TB, *_wandb_offline(tmp_path, monkeypatch)]
    summary = _train(out, trainers, *flags)
    err = capsys.readouterr().err
    assert not re.search(r"^(jax .* on |compiling|step \d+/)", err, re.M), err  # train.progress false: quiet
    _assert_tb_equals_jsonl(logdir, out)
    texts = _tb_texts(logdir)
    assert _json_block(texts["config"][0])["model"]["d_model"] == 32
    assert _json_block(texts["summary"][-1])["val_loss"] == pytest.approx(summary["val_loss"])
    (first,) = [_wandb_run(d) for d in (out / "wandb").glob("offline-run-*")]
    assert first["config"]["model"]["d_model"] == 32 and first["config"]["train"]["tokens"] == 20480
    for line in _metrics(out):
        row = first["history"][line["step"]]
        for key in ("loss", "val_loss"):
            if key in line:
                assert row[key] == pytest.approx(line[key], rel=1e-12)
    assert first["summary"]["val_loss"] == pytest.approx(summary["val_loss"], rel=1e-12)
    assert first["summary"]["status"] == "completed" and first["group"] == ""  # a run alone has no group
    ck = Checkpointer(out / "checkpoints", CheckpointConfig())
    assert ck.read_meta(40)[trackers_lib.WANDB_ID] == first["id"]
    ck.close()

    _kill_after(out, 40)
    again = _train(out, trainers, *flags)
    assert again["final_train_loss"] == summary["final_train_loss"]
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 2  # the second process's file
    _assert_tb_equals_jsonl(logdir, out)  # steps 41..80 once each, though both files hold them
    assert _json_block(_tb_texts(logdir)["summary"][-1])["val_loss"] == pytest.approx(again["val_loss"])
    runs = [_wandb_run(d) for d in (out / "wandb").glob("offline-run-*")]
    assert len(runs) == 2 and {r["id"] for r in runs} == {first["id"]}  # one W&B run, synced as one
    (resumed,) = [r for r in runs if min(r["history"]) > 40]
    assert sorted(resumed["history"]) == list(range(45, 81, 5))  # the resumed process logs from step 41 on
    assert resumed["summary"]["val_loss"] == pytest.approx(again["val_loss"], rel=1e-12)


@pytest.mark.slow
def test_a_sweep_groups_its_runs_in_wandb_and_tensorboard(tmp_path, monkeypatch):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: tracked\n"
        "base:\n"
        "  data: {corpus: tinyshakespeare, tokenizer: byte}\n"
        "  model: {seq_len: 32}\n"
        "  train: {batch_size: 8, eval_every: 1000, eval_batches: 2, log_every: 5}\n"
        "grid: {models: [{n_layer: 1, d_model: 16}], tokens: [2048, 4096]}\n"
        "fit: false\n"
    )
    out = tmp_path / "sweep"
    flags = ["--train.progress", "false", "--jobs", "1", *TB, *_wandb_offline(tmp_path, monkeypatch)]
    sweep_cli.main(["--config", str(spec), "--out", str(out), *flags])
    run_ids = sorted(p.name for p in (out / "runs").iterdir())
    assert len(run_ids) == 2
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == run_ids
    for rid in run_ids:
        _assert_tb_equals_jsonl(out / "tensorboard" / rid, out / "runs" / rid)
        summary = json.loads((out / "runs" / rid / "summary.json").read_text())
        assert _json_block(_tb_texts(out / "tensorboard" / rid)["summary"][-1])["val_loss"] == summary["val_loss"]
    runs = [_wandb_run(d) for d in (out / "wandb").glob("offline-run-*")]
    assert sorted(r["config"]["train"]["tokens"] for r in runs) == [2048, 4096]
    assert {r["group"] for r in runs} == {"tracked"}


def test_a_tracker_that_is_not_installed_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an environment without wandb imports
    with pytest.raises(UsageError, match=r"log.wandb needs the wandb package: pip install 'scaling\[tracking\]'"):
        trackers_lib.check_available(LogConfig(wandb=True))
    with pytest.raises(UsageError, match="log.mode must be online, offline or disabled"):
        LogConfig(mode="sometimes")


def test_the_log_section_leaves_the_identity_of_a_run_alone():
    base = config_parse.from_dict({})
    logged = config_parse.from_dict({"log": {"tensorboard": True, "wandb": True, "group": "g", "dir": "/x"}})
    assert logged.identity_hash() == base.identity_hash() == "f6dd344d173c0341"  # as before the section
    old = yaml.safe_load(base.to_yaml())
    del old["log"]  # a config.yaml written before the section existed
    assert config_parse.from_dict(old) == base


# ------------------------------------------------------------------ what the user sees


def test_the_entry_point_shows_platform_compile_and_evaluation_lines_on_stderr(tmp_path):
    out = tmp_path / "run"
    r = run_cli("experiments.train", "--out", out, *TINY, "--train.progress", "true", *TB)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 1 and json.loads(r.stdout)["status"] == "completed"
    lines = r.stderr.replace("\r", "\n").splitlines()
    platform = [x for x in lines if x.startswith("jax ")]
    assert len(platform) == 1 and re.fullmatch(r"jax \d+\.\d+\S* on cpu: 1 device \(.+\)", platform[0]), platform
    i = lines.index("compiling the train step for L2-d32 ...")
    assert re.fullmatch(r"compiled in \d+\.\ds", lines[i + 1]), lines[i + 1]
    evals = [
        m
        for m in map(
            re.compile(r"step (\d+)/80: train loss (\S+), val loss (\S+), ([\d,]+) tok/s, ETA (\S+)").fullmatch, lines
        )
        if m
    ]
    val = {x["step"]: x["val_loss"] for x in _metrics(out) if "val_loss" in x}
    assert [int(m[1]) for m in evals] == sorted(val) == [40, 80]
    loss = {x["step"]: x["loss"] for x in _metrics(out) if "loss" in x}
    assert [float(m[2]) for m in evals] == [pytest.approx(loss[s], abs=1e-4) for s in (40, 80)]
    assert [float(m[3]) for m in evals] == [pytest.approx(val[s], abs=1e-4) for s in (40, 80)]
    assert evals[-1][5] == "00:00" and int(evals[0][4].replace(",", "")) > 0
    assert "80/80" in lines[-1]  # the bar is left at the end
    _assert_tb_equals_jsonl(out / "tensorboard", out)
