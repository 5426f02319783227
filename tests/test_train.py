"""The training entry point end to end, the optimizer's schedule and mask, bad input."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import math
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import train as train_cli
from scaling import compile_cache, config_parse
from scaling.config import Config, DebugConfig, ModelConfig, OptimConfig, TrainConfig
from scaling.io import load_yaml
from scaling.sharding import make_mesh
from scaling.train import Trainer, cross_entropy, decay_mask, lr_schedule, short_gil_switch
from scaling.train.programs import eval_chunk
from tests.helpers import TINY, run_cli


def test_tiny_run_end_to_end(tmp_path):
    out = tmp_path / "run"
    summary = train_cli.main(["--out", str(out), *TINY])
    assert summary["status"] == "completed" and summary["steps"] == 80
    saved = json.loads((out / "summary.json").read_text())
    for key in (
        "n_params",
        "n_params_nonembed",
        "tokens",
        "flops_6nd",
        "flops_kaplan",
        "flops_chinchilla",
        "flops_xla",
        "final_train_loss",
        "val_loss",
        "val_bpb",
        "wall_s",
        "status",
    ):
        assert saved[key] is not None, key
    assert saved["tokens"] == 80 * 8 * 32
    assert saved["flops_6nd"] == 6 * saved["n_params"] * saved["tokens"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(5, 81, 5))
    for key in ("step", "tokens", "flops", "loss", "lr", "grad_norm", "tokens_per_s"):
        assert key in lines[0]
    assert [x["step"] for x in lines if "val_loss" in x] == [40, 80]
    assert lines[-1]["val_loss"] == pytest.approx(saved["val_loss"])
    # it learned something: from ln(257) ~ 5.55 nats to well below
    assert saved["val_loss"] < 4.5 and lines[-1]["loss"] < lines[0]["loss"]
    assert saved["val_bpb"] == pytest.approx(saved["val_loss"] / math.log(2), rel=1e-6)  # bytes: 1 token = 1 byte
    assert (out / "config.yaml").read_text().count("d_model: 32") == 1


def test_lr_schedule_warmup_then_cosine_to_ten_percent_at_the_end():
    cfg = OptimConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    f = lr_schedule(cfg, total_steps=110)
    assert float(f(0)) == pytest.approx(1e-3 / 11)
    assert float(f(9)) == pytest.approx(1e-3 * 10 / 11)
    assert float(f(10)) == pytest.approx(1e-3)
    assert float(f(60)) == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 50 / 99)), rel=1e-5)
    assert float(f(109)) == pytest.approx(1e-4)  # the last step
    lrs = [float(f(s)) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_weight_decay_only_on_matrices():
    cfg = dataclasses.replace(
        Config(), model=ModelConfig(n_layer=1, d_model=16, n_head=2, vocab_size=40, tie_embeddings=False)
    )
    trainer = Trainer(cfg, make_mesh({"data": 1, "fsdp": 1, "model": 1}), 10)
    mask = decay_mask(trainer.abstract_state.params)
    flat = {
        "/".join(str(getattr(k, "key", k)) for k in path): v for path, v in jax.tree_util.tree_leaves_with_path(mask)
    }
    assert flat["h_0/attn/qkv_kernel"] is False  # noqa: E712  (named *_kernel, not 'kernel')
    decayed = {k for k, v in flat.items() if v}
    assert decayed == {"h_0/mlp/fc/kernel", "h_0/mlp/proj/kernel", "lm_head/kernel"}


def test_gradient_accumulation_equals_one_big_batch():
    model = ModelConfig(n_layer=1, d_model=16, n_head=2, vocab_size=64, seq_len=8)
    mesh = make_mesh({"data": 1, "fsdp": 1, "model": 1})
    batch = jax.random.randint(jax.random.key(0), (8, 9), 0, 64)
    out = []
    for m in (1, 4):
        cfg = dataclasses.replace(Config(), model=model, train=TrainConfig(batch_size=8, microbatches=m))
        t = Trainer(cfg, mesh, 10)
        state = t.init_state()
        new_state, metrics = t.train_step(state, batch)
        out.append((float(metrics["loss"]), jax.tree.leaves(new_state.params)))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-6)
    for a, b in zip(out[0][1], out[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_auto_microbatches_keep_about_1024_tokens_per_device_on_a_cpu():
    from scaling.train import resolve_microbatches

    def auto(batch, seq, shards, backend="cpu", m=0):
        cfg = dataclasses.replace(
            Config(), model=ModelConfig(seq_len=seq), train=TrainConfig(batch_size=batch, microbatches=m)
        )
        return resolve_microbatches(cfg, shards, backend)

    assert auto(16, 256, 1) == 4  # 4 rows x 256 tokens each
    assert auto(16, 256, 2) == 2  # 8 rows per device -> 2 x 4
    assert auto(12, 256, 1) == 3
    assert auto(6, 256, 1) == 1  # 6 rows: no split leaves >= 4 rows
    assert auto(8, 64, 1) == 1  # 8 x 64 tokens is under 1024 already
    assert auto(64, 64, 1) == 4  # 16 rows x 64 tokens each
    assert auto(16, 256, 1, backend="gpu") == 1
    assert auto(16, 256, 1, m=2) == 2  # an explicit value is kept


def _train(t, batch, n):
    """(loss, lr) of each of ``n`` steps of Trainer ``t`` on ``batch`` from its init, and the final parameters."""
    state, out = t.init_state(), []
    for _ in range(n):
        state, m = t.train_step(state, batch)
        out.append((float(m["loss"]), float(m["lr"])))
    return out, jax.tree.leaves(state.params)


def test_runs_of_one_shape_share_the_compiled_step_and_train_as_if_compiled_alone():
    """for_run: another schedule length, seed and NaN step, the same compiled step; every
    step's loss, lr and parameters equal those of a Trainer compiled for that run alone."""
    model = ModelConfig(n_layer=1, d_model=16, n_head=2, vocab_size=64, seq_len=8, dropout=0.1)
    mesh = make_mesh({"data": 1, "fsdp": 1, "model": 1})
    batch = jax.random.randint(jax.random.key(0), (4, 9), 0, 64)
    optim = OptimConfig(lr=1e-2, warmup_steps=3)

    def cfg(seed, nan_step=-1):
        return dataclasses.replace(
            Config(),
            model=model,
            optim=optim,
            train=TrainConfig(batch_size=4, seed=seed),
            debug=DebugConfig(inject_nan_step=nan_step),
        )

    first = Trainer(cfg(0), mesh, 20)
    _train(first, batch, 2)
    assert Trainer.program_key(cfg(1, 4), mesh) == first.key
    shared = first.for_run(cfg(1, 4), 7)
    assert shared.compile_step() is first.compile_step() and shared.step_compiled
    alone = Trainer(cfg(1, 4), mesh, 7)
    assert not alone.step_compiled
    (a, pa), (b, pb) = _train(shared, batch, 7), _train(alone, batch, 7)
    assert a == b or all((x == y) or (math.isnan(x[0]) and math.isnan(y[0]) and x[1] == y[1]) for x, y in zip(a, b))
    for x, y in zip(pa, pb):
        np.testing.assert_array_equal(x, y)
    f = lr_schedule(optim, 7)
    assert [lr for _, lr in a] == pytest.approx([float(f(s)) for s in range(7)], rel=1e-6)
    assert math.isnan(a[4][0]) and not any(math.isnan(x) for x, _ in a[:4] + a[5:])  # step 4 injected
    with pytest.raises(ValueError):  # the optimizer's other settings are compiled into the step
        first.for_run(dataclasses.replace(cfg(0), optim=OptimConfig(lr=1e-2, warmup_steps=3, beta2=0.99)), 7)


def test_runs_differing_in_lr_and_warmup_share_the_compiled_step():
    """The peak lr and the warmup are arguments of the compiled step: a run with other values
    shares it and trains exactly as a step compiled for that run alone."""
    model = ModelConfig(n_layer=1, d_model=16, n_head=2, vocab_size=64, seq_len=8)
    mesh = make_mesh({"data": 1, "fsdp": 1, "model": 1})
    batch = jax.random.randint(jax.random.key(0), (4, 9), 0, 64)

    def cfg(lr, warmup):
        return dataclasses.replace(
            Config(), model=model, optim=OptimConfig(lr=lr, warmup_steps=warmup), train=TrainConfig(batch_size=4)
        )

    first = Trainer(cfg(1e-2, 3), mesh, 6)
    assert Trainer.program_key(cfg(3e-3, 1), mesh) == first.key
    shared = first.for_run(cfg(3e-3, 1), 6)
    assert shared.compile_step() is first.compile_step()
    (a, pa), (b, pb) = _train(shared, batch, 6), _train(Trainer(cfg(3e-3, 1), mesh, 6), batch, 6)
    assert a == b
    for x, y in zip(pa, pb):
        np.testing.assert_array_equal(x, y)
    f = lr_schedule(OptimConfig(lr=3e-3, warmup_steps=1), 6)
    assert [lr for _, lr in a] == pytest.approx([float(f(s)) for s in range(6)], rel=1e-6)


def test_loss_is_cross_entropy_by_hand():
    cfg = ModelConfig(n_layer=1, d_model=16, n_head=2, vocab_size=30, seq_len=6)
    from scaling.model import GPT

    model = GPT(cfg)
    batch = jax.random.randint(jax.random.key(1), (3, 7), 0, 30)
    params = model.init(jax.random.key(0), batch[:, :-1])["params"]
    logits = np.asarray(model.apply({"params": params}, batch[:, :-1]), np.float64)
    logp = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    ref = -np.take_along_axis(logp, np.asarray(batch[:, 1:])[..., None], -1).mean()
    assert float(cross_entropy(model, jax.tree.map(jnp.asarray, params), batch)) == pytest.approx(ref, rel=1e-5)


BAD_INPUTS = [
    (["--data.corpus", "/nonexistent/corpus.txt"], "corpus not found"),
    (["--model.d_model", "30", "--model.n_head", "4"], "divisible by model.n_head"),
    (["--train.tokens", "100"], "fewer than one batch"),
    (["--data.tokenizer", "wordpiece"], "unknown tokenizer"),
    (["--mesh.data", "3"], "needs 3 devices"),
    (["--model.n_layer", "two"], "expects an integer"),
    (["--model.position", "alibi"], "learned or rotary"),
    (["--config", "/nonexistent.yaml"], "config file not found"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line_before_compute(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("precious")
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--out", str(out), *TINY, *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]
    assert (out / "summary.json").read_text() == "precious"


def test_help_documents_starting_over_and_the_exit_codes():
    text = " ".join(train_cli.parser().format_help().split())
    assert "--overwrite start over in --out" in text
    assert "2 bad input" in text and f"{train_cli.EXIT_DIVERGED} the run diverged" in text


def test_empty_corpus_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--out", str(tmp_path / "run"), *TINY, "--data.corpus", str(tmp_path / "empty")])
    assert e.value.code == 2 and "corpus is empty" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_mesh_errors_on_eight_devices_exit_2_in_a_real_process(tmp_path):
    cases = [
        (["--mesh.data", "3"], "needs 3 devices, but 8 are available"),
        (["--mesh.data", "8", "--train.batch_size", "12"], "not divisible by the data axes"),
        (["--mesh.data", "1", "--mesh.model", "8", "--model.n_head", "2"], "n_head (2) is not divisible"),
    ]
    for args, message in cases:
        r = run_cli("experiments.train", "--out", tmp_path / "run", *TINY, *args, devices=8)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == [r.stderr.strip().splitlines()[-1]] and message in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


def test_a_second_cli_run_of_a_shape_loads_its_programs_from_the_compilation_cache(tmp_path):
    """The first process writes its programs to SCALING_COMPILE_CACHE; a second run of the
    same shape (another --out and learning rate) adds none; ``off`` writes no cache, not even
    the default one under SCALING_CACHE_DIR."""
    short = [*TINY, "--train.tokens", "512", "--train.eval_every", "2"]  # 2 steps, one evaluation
    cache = tmp_path / "jax-compile"
    counts = []
    for name, extra in (("a", []), ("b", ["--optim.lr", "1e-3"])):
        r = run_cli(
            "experiments.train", "--out", tmp_path / name, *short, *extra, env={"SCALING_COMPILE_CACHE": str(cache)}
        )
        assert r.returncode == 0, r.stderr[-3000:]
        counts.append(compile_cache.entries(cache))
    assert counts[0] >= 2 and counts[1] == counts[0], counts  # the init and the train step at least
    own = tmp_path / "own-cache"  # XLA's attention and dots: no C++ library to build in it
    off = ["--model.attention", "dot_product", "--model.dense", "xla"]
    env = {"SCALING_COMPILE_CACHE": "off", "SCALING_CACHE_DIR": str(own)}
    r = run_cli("experiments.train", "--out", tmp_path / "c", *short, *off, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert own.is_dir() and not (own / "jax-compile").exists()


def test_a_compilation_cache_that_cannot_be_made_is_left_off_with_a_warning(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert compile_cache.enable(tmp_path / "file" / "jax-compile") is None
    assert capsys.readouterr().err.startswith("warning: no compilation cache")


def _tiny_trainer(steps=10):
    model = ModelConfig(n_layer=1, d_model=16, n_head=2, vocab_size=64, seq_len=8)
    cfg = dataclasses.replace(Config(), model=model, train=TrainConfig(batch_size=4))
    return Trainer(cfg, make_mesh({"data": 1, "fsdp": 1, "model": 1}), steps)


def test_compile_ahead_builds_each_program_once_and_trains_as_compiled_in_line():
    """Two compile_ahead calls from two pool threads: every program built once, off this
    thread; the state, steps, evaluation and FLOP count equal a Trainer's that compiled each
    program when first asked."""
    ahead, inline = _tiny_trainer(), _tiny_trainer()
    builds = collections.Counter()
    for name in ("_build_step", "_build_init", "_build_eval", "_build_xla_flops", "_lower_step"):

        def counted(*args, f=getattr(ahead, name), name=name):
            builds[(name, threading.get_ident())] += 1
            return f(*args)

        setattr(ahead, name, counted)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for f in [ahead.compile_ahead(pool), ahead.compile_ahead(pool)]:
            f.result()
    assert sorted(n for n, _ in builds) == sorted(
        ["_build_step", "_build_init", "_build_eval", "_build_xla_flops", "_lower_step"]
    )
    assert all(c == 1 and tid != threading.get_ident() for (_, tid), c in builds.items())
    assert ahead.step_compiled and not inline.step_compiled
    batch = jax.random.randint(jax.random.key(0), (4, 9), 0, 64)
    outs = []
    for t in (ahead, inline):
        state, losses = t.init_state(), []
        for _ in range(3):
            state, m = t.train_step(state, batch)
            losses.append(float(m["loss"]))
        outs.append(
            (
                losses,
                t.mean_eval_loss(state.params, np.stack([batch] * 16)),
                t.xla_flops_per_step(),
                jax.tree.leaves(state.params),
            )
        )
    assert outs[0][:3] == outs[1][:3]
    for x, y in zip(outs[0][3], outs[1][3]):
        np.testing.assert_array_equal(x, y)
    assert sum(builds.values()) == 5  # asking for the programs built none again


def test_evaluation_in_chunks_of_batches_equals_it_batch_by_batch():
    """An evaluation takes eval_chunk(n) batches per program call; its mean is the mean of the
    batches' losses taken one at a time."""
    assert [eval_chunk(n) for n in (1, 16, 256, 48, 37, 17)] == [1, 16, 32, 24, 1, 17]
    t = _tiny_trainer()
    state = t.init_state()
    batches = np.asarray(jax.random.randint(jax.random.key(1), (12, 4, 9), 0, 64), dtype=np.int32)
    one_by_one = [float(t.eval_step(state.params, b)) for b in batches]
    assert len(set(one_by_one)) == 12
    assert t.mean_eval_loss(state.params, batches) == pytest.approx(np.mean(one_by_one), rel=1e-6)
    assert t.mean_eval_loss(state.params, batches[:6]) == pytest.approx(np.mean(one_by_one[:6]), rel=1e-6)


def test_a_failed_background_build_raises_where_the_program_is_asked_for():
    t = _tiny_trainer()

    def broken(*_):
        raise RuntimeError("evaluation does not compile")

    t._build_eval = broken
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        t.compile_ahead(pool).result()  # the worker goes on to the programs after it
    assert t.step_compiled and t._compiled["xla_flops"].done()
    state = t.init_state()
    with pytest.raises(RuntimeError, match="evaluation does not compile"):
        t.eval_losses(state.params, jnp.zeros((t.eval_k, 4, 9), jnp.int32))


def test_short_gil_switch_is_restored_after_the_last_user():
    before = sys.getswitchinterval()
    with short_gil_switch(1e-4):
        with short_gil_switch(1e-4):
            assert sys.getswitchinterval() == pytest.approx(1e-4)
        assert sys.getswitchinterval() == pytest.approx(1e-4)
    assert sys.getswitchinterval() == before


def test_debug_hooks_are_outside_the_identity_and_help_but_settable(tmp_path):
    p = train_cli.parser()
    assert "inject_nan_step" not in p.format_help() and "debug" not in p.format_help()
    cfg = config_parse.resolve(
        None, config_parse.overrides_from_args(p.parse_args(["--out", "x", "--debug.inject_nan_step", "7"]))
    )
    assert cfg.debug.inject_nan_step == 7 and cfg.identity_hash() == Config().identity_hash()
    # a config.yaml holding the field under its former section reads into the debug section
    old = tmp_path / "config.yaml"
    old.write_text("train: {inject_nan_step: 5, batch_size: 4}\n")
    cfg = config_parse.from_dict(load_yaml(old))
    assert cfg.debug.inject_nan_step == 5 and cfg.train.batch_size == 4
