"""A fine-tuning run: data prepared, steps, held-out evaluation, checkpoints and its directory.

    OUT/config.yaml     the fine-tuning config, the model source, the data file and its SHA-256
    OUT/labels.json     classify: the label names in index order
    OUT/metrics.jsonl   one JSON object per logged step (``step, loss``) and per evaluation
    OUT/summary.json    the final held-out metrics (written atomically at the end)
    OUT/checkpoints/    orbax steps of {step, trainable parameters, optimizer state}
                        (:mod:`scaling.checkpoint`, checksummed)

The batch of a step follows from (``train.seed``, step) alone and the state is all a resumed
run needs, so rerunning the same command continues from the newest checkpoint that verifies
and ends where an unbroken run ends; a kill loses only the steps since that checkpoint. A
directory holding another fine-tuning run (another config, model source or data file) is
refused unless it is started over.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from scaling import io as run_io
from scaling import tokenizer as tok
from scaling.checkpoint import Checkpointer
from scaling.config import ModelConfig
from scaling.errors import UsageError
from scaling.finetune import examples as ex
from scaling.finetune import model as fm
from scaling.finetune_config import FinetuneConfig
from scaling.inference.decode import generate

CONFIG, LABELS, METRICS, SUMMARY, CHECKPOINTS = (
    "config.yaml",
    "labels.json",
    "metrics.jsonl",
    "summary.json",
    "checkpoints",
)
EVAL_BATCH = 128


@dataclass(frozen=True)
class Source:
    """The model fine-tuning starts from: its config (looped layout), parameters, tokenizer, and
    where it came from (``run:DIR`` or ``hf-gpt2:DIR``)."""

    model_cfg: ModelConfig
    params: Any
    encoding: Any
    name: str

    @property
    def eot(self) -> int:
        return tok.eot_id(self.encoding)

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def decode(self, ids) -> str:
        eot, n = self.eot, self.encoding.n_vocab
        return self.encoding.decode([int(i) for i in ids if 0 <= int(i) < n and int(i) != eot])


class Finetune:
    """One fine-tuning run of ``cfg`` from ``source`` on ``data`` in directory ``out``."""

    def __init__(self, cfg: FinetuneConfig, source: Source, data: ex.Dataset, data_path: str, out: str | Path | None):
        self.cfg, self.source = cfg, source
        self.out = Path(out) if out is not None else None  # None: --eval-only writes nothing
        self.model_cfg = source.model_cfg
        self.seq_len = cfg.train.seq_len or self.model_cfg.seq_len
        if self.model_cfg.position == "learned" and self.seq_len > self.model_cfg.seq_len:
            raise UsageError(
                f"train.seq_len {self.seq_len} exceeds the model's context of {self.model_cfg.seq_len} "
                f"(learned positions)"
            )
        self.record = {
            "source": source.name,
            "data": str(data_path),
            "data_sha256": data.sha256,
            "model": self.model_cfg.__dict__,
            "finetune": cfg.to_dict(),
        }
        self.identity = hashlib.sha256(
            json.dumps(
                [cfg.identity_hash(), source.name, data.sha256, self.model_cfg.__dict__], sort_keys=True
            ).encode()
        ).hexdigest()[:16]
        self._prepare(data)

    # ------------------------------------------------------------------ data

    def _prepare(self, data: ex.Dataset) -> None:
        t = self.cfg.task
        data = ex.Dataset(data.train, ex.eval_subset(data.test, t.eval_examples), data.sha256)
        if t.kind == "instruct":
            pairs = ex.encode_pairs(data.train, self.source.encode, t.template, self.source.eot, self.seq_len)
            self.rows, self.masks = ex.pack_rows(pairs, self.seq_len, t.pack)
            test = ex.encode_pairs(data.test, self.source.encode, t.template, self.source.eot, self.seq_len)
            self.test_rows, self.test_masks = ex.pack_rows(test, self.seq_len, pack=False)
            self.test_pairs = test
            # generation: a prompt keeps its last tokens when prompt plus answer would pass a learned context
            longest = max(len(p.prompt) for p in test)
            learned = self.model_cfg.position == "learned"
            self.prompt_room = min(longest, self.model_cfg.seq_len - t.max_new_tokens) if learned else longest
            if self.prompt_room < 1:
                raise UsageError(
                    f"task.max_new_tokens {t.max_new_tokens} leaves no room for a prompt in the model's context "
                    f"of {self.model_cfg.seq_len} tokens"
                )
            self.answers = [r["response"] for r in data.test]
            self.n_train, self.labels = len(self.rows), []
        else:
            self.labels = ex.label_names(data.train)
            self.train_set = ex.encode_labelled(data.train, self.source.encode, self.labels, self.seq_len)
            self.test_set = ex.encode_labelled(data.test, self.source.encode, self.labels, self.seq_len)
            self.n_train = len(self.train_set.labels)

    def batch(self, step: int) -> tuple:
        idx = ex.batch_indices(self.n_train, self.cfg.train.batch_size, self.cfg.train.seed, step)
        if self.cfg.task.kind == "instruct":
            return self.rows[idx], self.masks[idx]
        s = self.train_set
        return s.tokens[idx], s.lengths[idx], s.labels[idx]

    # ------------------------------------------------------------------ state and steps

    def base_params(self) -> Any:
        if self.cfg.train.init == "scratch":
            return fm.fresh_params(self.model_cfg, self.cfg.train.seed)
        return self.source.params

    def init_state(self) -> dict:
        key = jax.random.key(self.cfg.train.seed)
        trainable = fm.init_trainable(self.cfg, self.model_cfg, self.base, len(self.labels), key)
        self.tx = fm.make_optimizer(self.cfg, trainable)
        return {"step": jnp.zeros((), jnp.int32), "trainable": trainable, "opt_state": self.tx.init(trainable)}

    def loss_fn(self, trainable, base, batch):
        if self.cfg.task.kind == "instruct":
            loss, _ = fm.instruct_loss(self.cfg, self.model_cfg, trainable, base, *batch)
        else:
            loss, _ = fm.classify_loss(self.cfg, self.model_cfg, trainable, base, *batch)
        return loss

    @functools.cached_property
    def _step(self):
        def step(state, base, batch):
            loss, grads = jax.value_and_grad(self.loss_fn)(state["trainable"], base, batch)
            updates, opt_state = self.tx.update(grads, state["opt_state"], state["trainable"])
            trainable = jax.tree.map(lambda p, u: p + u, state["trainable"], updates)
            return {"step": state["step"] + 1, "trainable": trainable, "opt_state": opt_state}, loss

        return jax.jit(step, donate_argnums=0)

    # ------------------------------------------------------------------ evaluation

    @functools.cached_property
    def _eval_fn(self):
        if self.cfg.task.kind == "instruct":
            return jax.jit(
                lambda tr, base, rows, mask: fm.instruct_loss(self.cfg, self.model_cfg, tr, base, rows, mask)
            )
        return jax.jit(
            lambda tr, base, toks, lens, labels: fm.classify_loss(
                self.cfg, self.model_cfg, tr, base, toks, lens, labels
            )
        )

    def evaluate(self, trainable: dict) -> dict:
        """Held-out metrics: classify ``test_loss, accuracy, macro_f1``; instruct ``test_loss``
        (per response token) and ``exact_match, answer_prefix`` of greedy generations."""
        if self.cfg.task.kind == "classify":
            s, preds, total = self.test_set, [], 0.0
            for i in range(0, len(s.labels), EVAL_BATCH):
                sl = slice(i, i + EVAL_BATCH)
                loss, logits = self._eval_fn(trainable, self.base, s.tokens[sl], s.lengths[sl], s.labels[sl])
                total += float(loss) * len(s.labels[sl])
                preds.append(np.asarray(jnp.argmax(logits, -1)))
            pred = np.concatenate(preds)
            return {
                "test_loss": total / len(s.labels),
                "accuracy": fm.accuracy(s.labels, pred),
                "macro_f1": fm.macro_f1(s.labels, pred),
                "n_test": len(s.labels),
            }
        nats, count = 0.0, 0.0
        for i in range(0, len(self.test_rows), EVAL_BATCH):
            sl = slice(i, i + EVAL_BATCH)
            loss, n = self._eval_fn(trainable, self.base, self.test_rows[sl], self.test_masks[sl])
            nats, count = nats + float(loss) * float(n), count + float(n)
        generated = self.generate(trainable)
        em, prefix = fm.exact_match(self.answers, generated)
        return {"test_loss": nats / count, "exact_match": em, "answer_prefix": prefix, "n_test": len(generated)}

    def generate(self, trainable: dict) -> list[str]:
        """Greedy continuations of the held-out prompts, up to end-of-text or ``task.max_new_tokens``."""
        params = fm.model_params(self.cfg, trainable, self.base)
        new = self.cfg.task.max_new_tokens
        prompts = [p.prompt[-self.prompt_room :] for p in self.test_pairs]
        out = []
        for i in range(0, len(prompts), EVAL_BATCH):
            g = generate(self.model_cfg, params, prompts[i : i + EVAL_BATCH], new, eot=self.source.eot)
            out.extend(self.source.decode(g.new_tokens(j)) for j in range(len(g.lengths)))
        return out

    # ------------------------------------------------------------------ the run

    def _check_directory(self, overwrite: bool) -> None:
        stored = self.out / CONFIG
        if overwrite:
            for name in (SUMMARY, METRICS, LABELS, CHECKPOINTS, CONFIG):
                p = self.out / name
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink(missing_ok=True)
            return
        if stored.is_file():
            old = run_io.load_yaml(stored)
            if old.get("identity") != self.identity:
                raise UsageError(
                    f"{self.out} holds another fine-tuning run (config, model source or data differ); "
                    f"use another --out or --overwrite to start over"
                )
        elif any((self.out / n).exists() for n in (METRICS, SUMMARY, CHECKPOINTS)):
            raise UsageError(f"{self.out} holds fine-tuning outputs but no {CONFIG}; use another --out or --overwrite")

    def run(self, overwrite: bool = False, stop_after: int | None = None) -> dict:
        """Train to ``train.steps`` (resuming from the newest checkpoint) and write the summary;
        ``stop_after``: return after that step's checkpoint, as a kill right then would (tests)."""
        self.out.mkdir(parents=True, exist_ok=True)
        with run_io.hold_directory(self.out):
            self._check_directory(overwrite)
            return self._run(stop_after)

    def _run(self, stop_after: int | None) -> dict:
        t0 = time.time()
        self.base = self.base_params()
        run_io.atomic_write_text(
            self.out / CONFIG, yaml.safe_dump({**self.record, "identity": self.identity}, sort_keys=False)
        )
        if self.labels:
            run_io.atomic_write_text(self.out / LABELS, json.dumps(self.labels))
        state = self.init_state()
        ckpt = Checkpointer(self.out / CHECKPOINTS, self.cfg.checkpoint)
        try:
            abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
            restored = ckpt.restore_latest(abstract)
            metrics_lines = 0
            if restored is not None:
                state, meta, step = restored
                if meta.get("identity") != self.identity:
                    raise UsageError(
                        f"checkpoint {step} under {self.out} belongs to another fine-tuning run; use --overwrite"
                    )
                metrics_lines = int(meta.get("metrics_lines", 0))
                print(f"resuming from checkpoint {step}", file=sys.stderr)
            self._truncate_metrics(metrics_lines)
            total = self.cfg.train.steps
            start = int(state["step"])
            last_eval: dict = {}
            for step in range(start, total):
                state, loss = self._step(state, self.base, self.batch(step))
                done = step + 1
                if done % self.cfg.train.log_every == 0 or done == total:
                    self._log({"step": done, "loss": float(loss)})
                if done % self.cfg.train.eval_every == 0 or done == total:
                    last_eval = self.evaluate(state["trainable"])
                    self._log({"step": done, **{f"eval_{k}": v for k, v in last_eval.items()}})
                if ckpt.due(done, done == total, total - done):
                    ckpt.save(done, state, {"identity": self.identity, "metrics_lines": self._metrics_count()})
                    if stop_after is not None and done >= stop_after:
                        ckpt.wait()
                        return {"status": "stopped", "steps": done}
            ckpt.wait()
        finally:
            ckpt.close()
        if not last_eval:  # resumed at the end: every step was done
            last_eval = self.evaluate(state["trainable"])
        summary = self._summary(state, last_eval, time.time() - t0)
        run_io.atomic_write_text(self.out / SUMMARY, json.dumps(summary, indent=1))
        return summary

    def evaluate_untuned(self) -> dict:
        """The held-out metrics of the source model as it is (instruct; no training, nothing written)."""
        if self.cfg.task.kind != "instruct":
            raise UsageError("--eval-only scores an instruct task (a classifier needs a trained head)")
        self.base = self.source.params
        cfg_full = self.cfg.lora.rank == 0
        trainable = (
            {"model": self.base}
            if cfg_full
            else fm.init_trainable(self.cfg, self.model_cfg, self.base, 0, jax.random.key(0))
        )
        return {"status": "evaluated", "source": self.source.name, "task": "instruct", **self.evaluate(trainable)}

    def _summary(self, state: dict, metrics: dict, wall_s: float) -> dict:
        trainable = state["trainable"]
        return {
            "status": "completed",
            "task": self.cfg.task.kind,
            "source": self.source.name,
            "init": self.cfg.train.init,
            "lora_rank": self.cfg.lora.rank,
            "steps": int(state["step"]),
            "n_trainable": fm.param_tree_size(trainable),
            "n_params_model": fm.param_tree_size(self.base),
            **metrics,
            "wall_s": wall_s,
        }

    def _log(self, line: dict) -> None:
        with open(self.out / METRICS, "a") as f:
            f.write(json.dumps(line) + "\n")

    def _metrics_count(self) -> int:
        p = self.out / METRICS
        return len(p.read_text().splitlines()) if p.exists() else 0

    def _truncate_metrics(self, n: int) -> None:
        """Keep the metrics lines written up to the restored checkpoint (a kill may have added more)."""
        p = self.out / METRICS
        if p.exists():
            lines = p.read_text().splitlines()[:n]
            run_io.atomic_write_text(p, "".join(line + "\n" for line in lines))
