"""Fine-tuning: response-only loss, packing, LoRA, the classifier head and its metrics, resume,
the task builders and the command line."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import downstream
from experiments import finetune as cli
from scaling import finetune_config as fc
from scaling import tokenizer as tok
from scaling.config import ModelConfig
from scaling.finetune import examples as ex
from scaling.finetune import lora, tasks
from scaling.finetune import model as fm
from scaling.finetune.baseline import fit_logistic
from scaling.finetune.loop import Finetune, Source
from tests.helpers import run_cli, tiny_run_dir

TINY_MODEL = ModelConfig(n_layer=2, n_head=2, d_model=32, seq_len=16, vocab_size=257, position="rotary")


@pytest.fixture(scope="module")
def tiny_params():
    return fm.fresh_params(TINY_MODEL, 0)


# ----------------------------------------------------------------------------- instruct data and loss


def test_response_only_loss_on_a_hand_example():
    # prompt [1, 2], response [3] + eot: the row is 1 2 3 EOT 0; targets 2 3 EOT 0, of which 3 and EOT count
    rows, mask = ex.pack_rows([ex.Pair([1, 2], [3, 4])], seq_len=4, pack=True)
    assert rows.tolist() == [[1, 2, 3, 4, 0]]
    assert mask.tolist() == [[0, 1, 1, 0]]
    # two-token vocabulary stand-in: logits (0, ln 3) give p(token 1) = 3/4, p(token 0) = 1/4
    logits = jnp.tile(jnp.array([0.0, math.log(3.0)]), (1, 4, 1))
    targets = jnp.array([[1, 0, 1, 0]])
    total, n = fm.masked_nll(logits, targets, jnp.asarray(mask))
    assert float(n) == 2.0
    assert float(total) == pytest.approx(-math.log(1 / 4) - math.log(3 / 4), rel=1e-6)
    # the prompt's targets have no gradient: changing their logits changes nothing
    g = jax.grad(lambda lg: fm.masked_nll(lg, targets, jnp.asarray(mask))[0])(logits)
    assert np.all(np.asarray(g)[0, [0, 3]] == 0) and np.any(np.asarray(g)[0, 1] != 0)


def test_packing_never_splits_an_example_and_keeps_order():
    rng = np.random.default_rng(0)
    pairs = [
        ex.Pair(rng.integers(1, 9, rng.integers(1, 5)).tolist(), rng.integers(10, 19, rng.integers(1, 4)).tolist())
        for _ in range(30)
    ]
    rows, mask = ex.pack_rows(pairs, seq_len=11, pack=True)
    assert rows.shape[1] == 12 and mask.shape == (len(rows), 11)
    flat = []  # the rows read back, padding dropped, give the examples in order, each whole in one row
    for r in rows:
        flat.append(r[r != 0].tolist())
    assert sum(flat, []) == sum((p.prompt + p.response for p in pairs), [])
    i = 0
    for r in flat:
        used = 0
        while i < len(pairs) and used + len(pairs[i].prompt) + len(pairs[i].response) <= len(r):
            used += len(pairs[i].prompt) + len(pairs[i].response)
            i += 1
        assert used == len(r)  # a row ends where an example ends
    assert i == len(pairs)
    # the mask marks exactly the response tokens (ids >= 10 here), seen as targets
    assert np.array_equal(mask, (rows[:, 1:] >= 10).astype(np.float32))
    assert len(rows) < len(pairs)
    unpacked, _ = ex.pack_rows(pairs, seq_len=11, pack=False)
    assert len(unpacked) == len(pairs)


def test_long_prompts_keep_their_end_and_a_response_too_long_is_refused():
    pairs = ex.encode_pairs([{"prompt": "abcdefgh", "response": "xy"}], list, "{prompt}:", 0, seq_len=6)
    assert pairs[0].prompt == list("fgh:") and pairs[0].response == ["x", "y", 0]
    with pytest.raises(ValueError, match="does not fit"):
        ex.encode_pairs([{"prompt": "a", "response": "x" * 9}], list, "{prompt}", 0, seq_len=6)


def test_batches_follow_from_seed_and_step():
    a = [ex.batch_indices(10, 4, seed=3, step=s) for s in range(5)]
    assert all(np.array_equal(x, ex.batch_indices(10, 4, seed=3, step=s)) for s, x in enumerate(a))
    assert sorted(np.concatenate(a[:5])[:10].tolist()) == list(range(10))  # an epoch visits every example once


# ----------------------------------------------------------------------------- LoRA


def test_lora_at_init_is_the_base_model(tiny_params):
    params = tiny_params
    cfg = fc.from_dict({"lora": {"rank": 4, "targets": "qkv,fc", "layers": "1"}})
    trainable = fm.init_trainable(cfg, TINY_MODEL, params, 0, jax.random.key(1))
    assert set(trainable) == {"lora"} and set(trainable["lora"]) == {"h_1/qkv", "h_1/fc"}
    merged = fm.model_params(cfg, trainable, params)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), merged, params)))


@pytest.mark.slow
def test_only_the_adapted_kernels_change_when_lora_trains():
    params = fm.fresh_params(TINY_MODEL, 0)
    cfg = fc.from_dict({"lora": {"rank": 4, "targets": "qkv,fc", "layers": "1"}})
    trainable = fm.init_trainable(cfg, TINY_MODEL, params, 0, jax.random.key(1))
    toks = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 17)), jnp.int32)
    mask = jnp.ones((2, 16))
    tx = fm.make_optimizer(cfg, trainable)
    loss_fn = lambda tr: fm.instruct_loss(cfg, TINY_MODEL, tr, params, toks, mask)[0]  # noqa: E731
    grads = jax.jit(jax.grad(loss_fn))(trainable)
    updates, _ = tx.update(grads, tx.init(trainable), trainable)
    stepped = jax.tree.map(lambda p, u: p + u * 1000.0, trainable, updates)  # warmup's first lr is 0: scale up
    stepped = jax.tree.map(lambda p, g: p - 0.1 * g, stepped, grads)
    after = fm.model_params(cfg, stepped, params)
    flat_before = dict(jax.tree_util.tree_leaves_with_path(params))
    changed = {
        jax.tree_util.keystr(k)
        for k, v in jax.tree_util.tree_leaves_with_path(after)
        if not np.array_equal(np.asarray(v), np.asarray(flat_before[k]))
    }
    assert changed == {"['h_1']['attn']['qkv_kernel']", "['h_1']['mlp']['fc']['kernel']"}


def test_lora_config_is_checked_up_front():
    with pytest.raises(ValueError, match="lora.targets"):
        fc.from_dict({"lora": {"targets": "qkv,nope"}})
    with pytest.raises(ValueError, match="lora.layers"):
        fc.from_dict({"lora": {"layers": "0,x"}})
    with pytest.raises(ValueError, match="block 5"):
        lora.adapter_names(fc.LoraConfig(rank=2, layers="5"), 2)


# ----------------------------------------------------------------------------- classification


def test_pooling_and_head_shapes(tiny_params):
    h = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
    lengths = jnp.array([2, 3])
    assert fm.pool(h, lengths, "last").tolist() == [[2.0, 3.0], [10.0, 11.0]]
    assert fm.pool(h, lengths, "mean").tolist() == [[1.0, 2.0], [8.0, 9.0]]
    cfg = fc.from_dict({"task": {"kind": "classify", "pooling": "mean"}})
    params = tiny_params
    trainable = fm.init_trainable(cfg, TINY_MODEL, params, 5, jax.random.key(0))
    assert trainable["head"]["w"].shape == (32, 5)
    toks = jnp.zeros((3, 16), jnp.int32)
    logits = jax.jit(lambda tr: fm.class_logits(cfg, TINY_MODEL, tr, params, toks, jnp.array([1, 4, 16])))(trainable)
    assert logits.shape == (3, 5)


def test_accuracy_and_macro_f1_on_a_hand_example():
    y_true, y_pred = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0])
    assert fm.accuracy(y_true, y_pred) == pytest.approx(3 / 5)
    # class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 2 fp 1 fn 0 -> 0.8; class 2: tp 0 -> 0
    assert fm.macro_f1(y_true, y_pred) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert fm.exact_match(["a b", "c"], [" a b\n", "c d"]) == (0.5, 1.0)


def test_logistic_baseline_separates_separable_data():
    x = np.array([[0.0, 1.0], [0.1, 0.9], [1.0, 0.0], [0.9, 0.2]])
    w, b = fit_logistic(x, np.array([0, 0, 1, 1]), 2, l2=1e-3)
    assert np.argmax(x @ w + b, 1).tolist() == [0, 0, 1, 1]


# ----------------------------------------------------------------------------- task builders


@pytest.fixture
def corpus_dir(tmp_path):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "stone", "river", "light", "house"]
    for i, title in enumerate(["FIRST BOOK", "Second Book", "Note: not a title at all, far too long a line"]):
        sentences = []
        for _ in range(400):
            n = rng.integers(2, 7)
            sentences.append(" ".join(rng.choice(words[i * 2 :] if i < 2 else words, n)).capitalize() + ".")
        (tmp_path / f"{i}.txt").write_text(title + "\n\n" + " ".join(sentences))
    return tmp_path


def test_task_builders_are_deterministic_and_split_by_region_or_document(corpus_dir):
    spec = tasks.TaskSpec(min_chars=1000, train_per_class=20, test_per_class=5, per_doc=10)
    a = tasks.build_task("author", str(corpus_dir), spec)
    assert a == tasks.build_task("author", str(corpus_dir), spec)
    assert sorted({r["label"] for r in a}) == ["First Book", "Second Book"]  # the untitled document is left out
    for r in a:
        text = tasks.normalise((corpus_dir / r["doc"]).read_text())
        at = text.find(r["text"])
        cut = int(len(text) * (1 - spec.test_fraction))
        assert at >= 0 and ((at + len(r["text"]) <= cut) if r["split"] == "train" else at >= cut)
    n = tasks.build_task("nextsentence", str(corpus_dir), spec)
    assert n == tasks.build_task("nextsentence", str(corpus_dir), spec)
    by_doc = {}
    for r in n:
        by_doc.setdefault(r["doc"], set()).add(r["split"])
        assert r["response"][-1] == "." and 10 <= len(r["response"]) <= spec.max_answer_chars
    assert all(len(s) == 1 for s in by_doc.values()) and {"train", "test"} == set().union(*by_doc.values())


# ----------------------------------------------------------------------------- bad input and the CLI


@pytest.mark.parametrize(
    "args, message",
    [
        (["--from", "x", "--task", "classify", "--out", "o"], "--data is required"),
        (["--from", "x", "--task", "classify", "--data", "nope.jsonl", "--out", "o"], "data file not found"),
        (["--from", "x", "--task", "instruct", "--data", "{bad}", "--out", "o"], "needs string fields"),
        (["--from", "x", "--task", "classify", "--data", "{data}", "--out", "o", "--lora.rank", "-1"], "lora.rank"),
        (["--from", "x", "--task", "classify", "--data", "{data}", "--out", "o", "--task.pooling", "max"], "pooling"),
        (["--baseline", "bag-of-bytes", "--task", "instruct", "--data", "{bad}"], "scores a classify task"),
        (["--from", "x", "--task", "classify", "--data", "{data}", "--eval-only"], "scores an instruct task"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y", "split": "test"}\n')
    args = [a.replace("{data}", str(data)).replace("{bad}", str(data)) for a in args]
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def _classify_records(n: int = 24) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        label = ["ab", "cd"][i % 2]
        out.append(
            {"text": "".join(rng.choice(list(label), 12)), "label": label, "split": "test" if i % 4 == 0 else "train"}
        )
    return out


def _source(seed: int = 0) -> Source:
    return Source(TINY_MODEL, fm.fresh_params(TINY_MODEL, seed), tok.byte_encoding(), "test:tiny")


@pytest.mark.slow
def test_resume_after_a_kill_equals_an_unbroken_run(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _classify_records()))
    data = ex.read_records(path, "classify", 0.2)
    cfg = fc.from_dict(
        {
            "task": {"kind": "classify"},
            "lora": {"rank": 2},
            "train": {"steps": 6, "batch_size": 4, "warmup_steps": 2},
            "checkpoint": {"every_steps": 3, "async_save": False},
        }
    )
    whole = Finetune(cfg, _source(), data, str(path), tmp_path / "whole").run()
    assert Finetune(cfg, _source(), data, str(path), tmp_path / "cut").run(stop_after=3)["status"] == "stopped"
    resumed = Finetune(cfg, _source(), data, str(path), tmp_path / "cut").run()
    for k in ("steps", "accuracy", "macro_f1", "test_loss"):
        assert resumed[k] == whole[k]
    # the resumed run's log holds each step once, as the unbroken run's does
    assert (tmp_path / "cut" / "metrics.jsonl").read_text() == (tmp_path / "whole" / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="another fine-tuning run"):
        other = fc.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "lr": 0.5}})
        Finetune(other, _source(), data, str(path), tmp_path / "cut").run()


@pytest.mark.slow
def test_cli_fine_tunes_a_trained_run_end_to_end(tmp_path):
    run = tiny_run_dir()
    cls = tmp_path / "cls.jsonl"
    cls.write_text("".join(json.dumps(r) + "\n" for r in _classify_records()))
    common = ["--train.batch_size", "4", "--train.steps", "4", "--train.eval_every", "2", "--train.seq_len", "16"]
    r = run_cli(
        "experiments.finetune", "--from", run, "--task", "classify", "--data", cls, "--out", tmp_path / "c", *common
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert (
        summary["steps"] == 4
        and 0 <= summary["accuracy"] <= 1
        and json.loads((tmp_path / "c" / "labels.json").read_text()) == ["ab", "cd"]
    )
    ins = tmp_path / "ins.jsonl"
    ins.write_text("".join(json.dumps({"prompt": f"say {w}", "response": w}) + "\n" for w in ["yes", "no", "up"] * 4))
    r = run_cli(
        "experiments.finetune",
        "--from",
        run,
        "--task",
        "instruct",
        "--data",
        ins,
        "--out",
        tmp_path / "i",
        "--lora.rank",
        "2",
        "--task.max_new_tokens",
        "4",
        *common,
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "i" / "summary.json").read_text())
    assert (
        summary["lora_rank"] == 2
        and 0 <= summary["exact_match"] <= 1
        and summary["n_trainable"] < summary["n_params_model"]
    )


def test_downstream_plot_reads_the_table_and_ranks_by_compute(tmp_path):
    assert downstream.spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)  # 1 - 6 * 2 / (3 * 8)
    table = tmp_path / "downstream.csv"
    table.write_text("run_id,n_params,flops_6nd,ft_accuracy\na,10,3e12,0.5\nb,20,1e12,0.4\nc,20,,0.9\n")
    result = downstream.main(["--results", str(table)])
    assert result["runs"] == 2 and result["spearman_vs_compute"] == pytest.approx(1.0)
    assert (tmp_path / "downstream.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        downstream.main(["--results", str(table), "--metric", "ft_nope"])


@pytest.mark.slow
def test_cli_fine_tunes_hugging_face_gpt2_weights(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(str(tmp_path / "gpt2"))
    cls = tmp_path / "cls.jsonl"
    cls.write_text("".join(json.dumps(r) + "\n" for r in _classify_records()))
    args = ["--task", "classify", "--data", cls, "--out", tmp_path / "c", "--train.steps", "2"]
    args += ["--train.batch_size", "4"]
    r = run_cli("experiments.finetune", "--hf-gpt2", tmp_path / "gpt2", *args, "--lora.rank", "2")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["source"].startswith("hf-gpt2:") and summary["steps"] == 2 and summary["n_test"] == 6


@pytest.mark.slow
def test_from_sweep_fine_tunes_each_run_and_writes_the_downstream_table(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "runs").mkdir(parents=True)
    (sweep / "runs" / "tiny").symlink_to(tiny_run_dir())
    (sweep / "results.csv").write_text("run_id,n_params,flops_6nd,status\ntiny,1000,1e9,completed\ngone,5,1,diverged\n")
    cls = tmp_path / "cls.jsonl"
    cls.write_text("".join(json.dumps(r) + "\n" for r in _classify_records()))
    args = ["--from-sweep", sweep, "--task", "classify", "--data", cls, "--out", tmp_path / "d", "--train.steps", "2"]
    r = run_cli("experiments.finetune", *args, "--train.batch_size", "4", "--train.seq_len", "16")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "d" / "tiny" / "summary.json").is_file()
    result = downstream.main(["--results", str(tmp_path / "d" / "downstream.csv"), "--out", str(tmp_path / "p.png")])
    assert result["runs"] == 1
    bad = run_cli("experiments.finetune", *args, "--run-ids", "gone")
    assert bad.returncode == 2 and "gone" in bad.stderr
