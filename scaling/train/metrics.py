"""``metrics.jsonl``: the lines a run logs, and their truncation when a run resumes.

One JSON object per logged step: ``step, tokens, flops, flops_chinchilla, loss, lr,
grad_norm, tokens_per_s``, with ``val_loss`` and ``val_bpb`` on evaluated steps (a line of its
own when the step was not logged otherwise). Lines are buffered and handed to the run's
trackers (:mod:`scaling.train.trackers`; metrics.jsonl itself is :class:`JsonlTracker`) by
process 0 at evaluations and checkpoints.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from scaling import io as run_io
from scaling.train.trackers import Tracker


class JsonlTracker:
    """metrics.jsonl: the lines logged are appended at ``flush`` (an OSError leaves them
    buffered; a torn last line is dropped when the run resumes). The config and the summary
    have files of their own (config.yaml, summary.json)."""

    def __init__(self, path: Path):
        self.path = path
        self.lines: list[dict] = []

    def log_config(self, config: dict) -> None:
        pass

    def log(self, step: int, metrics: dict) -> None:
        self.lines.append(metrics)

    def flush(self) -> None:
        if self.lines:
            with open(self.path, "a") as f:
                for line in self.lines:
                    f.write(json.dumps(line) + "\n")
            self.lines = []

    def log_summary(self, summary: dict) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        pass


class MetricsLogger:
    """metrics.jsonl lines (process 0 only), buffered and handed to metrics.jsonl and to
    ``trackers`` at ``flush``."""

    def __init__(self, path: Path, enabled: bool, fpt: dict, tokens_per_step: int, every: int, trackers: tuple = ()):
        self.path, self.enabled, self.fpt, self.tps, self.every = path, enabled, fpt, tokens_per_step, every
        self.trackers: list[Tracker] = [JsonlTracker(path), *trackers] if enabled else []
        self.lines: list[dict] = []
        self._t, self._step = time.time(), None
        self.tokens_per_s = 0.0
        self._tok_total, self._time_total = 0, 0.0

    def _rate(self, step: int) -> None:
        now = time.time()
        if self._step is not None and step > self._step:
            dt = now - self._t
            self.tokens_per_s = (step - self._step) * self.tps / max(dt, 1e-9)
            self._tok_total += (step - self._step) * self.tps
            self._time_total += dt
        self._t, self._step = now, step

    @property
    def mean_tokens_per_s(self) -> float:
        return self._tok_total / self._time_total if self._time_total else self.tokens_per_s

    def log(self, step: int, m: dict, force: bool = False) -> None:
        self._rate(step)
        if not (force or step % self.every == 0):
            return
        tokens = step * self.tps
        self.lines.append(
            {
                "step": step,
                "tokens": tokens,
                "flops": self.fpt["6nd"] * tokens,
                "flops_chinchilla": self.fpt["chinchilla"] * tokens,
                "loss": m["loss"],
                "lr": m["lr"],
                "grad_norm": m["grad_norm"],
                "tokens_per_s": self.tokens_per_s,
            }
        )

    def add_val(self, step: int, val: tuple[float, float]) -> None:
        if self.lines and self.lines[-1]["step"] == step:
            self.lines[-1].update(val_loss=val[0], val_bpb=val[1])
        else:
            tokens = step * self.tps
            self.lines.append(
                {
                    "step": step,
                    "tokens": tokens,
                    "flops": self.fpt["6nd"] * tokens,
                    "flops_chinchilla": self.fpt["chinchilla"] * tokens,
                    "val_loss": val[0],
                    "val_bpb": val[1],
                }
            )

    def flush(self) -> None:
        """Hand the buffered lines to every tracker, then flush each (metrics.jsonl first)."""
        lines, self.lines = self.lines, []
        for t in self.trackers:
            for line in lines:
                t.log(line["step"], line)
        for t in self.trackers:
            t.flush()


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines logged after ``step``, the checkpoint being resumed (they will be logged
    again), and any line that does not parse (a torn last line from a kill)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and _line_step(ln) <= step]
    run_io.atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # not a line of a step: dropped
