"""What a run shows on stderr while it trains (process 0, unless ``train.progress`` is false):
the platform and its devices, a line before a compile the run waits for and its time after,
a line per evaluation (step, train loss, validation loss, tokens per second, time left), and a
progress bar over the steps. stdout is left to the entry points' results.
"""

from __future__ import annotations

import sys

import jax
from tqdm import tqdm

from scaling.config import ModelConfig


def platform_line() -> str:
    """``jax 0.x on cpu: 8 devices (TFRT_CPU_0, ...)``: the backend this process trains on."""
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    n = len(devices)
    procs = f", {jax.process_count()} processes" if jax.process_count() > 1 else ""
    return (
        f"jax {jax.__version__} on {jax.default_backend()}: {n} device{'s' if n != 1 else ''} "
        f"({', '.join(kinds)}){procs}"
    )


def shape_name(m: ModelConfig) -> str:
    return f"L{m.n_layer}-d{m.d_model}"


class Progress:
    """The lines of one run of ``steps`` steps, and its bar from ``begin`` on. ``prefix`` names
    the run in its lines (a sweep's run id); ``keep`` leaves the bar on screen at the end."""

    def __init__(self, steps: int, *, enabled: bool, name: str, prefix: str = "", keep: bool = True):
        self.steps, self.enabled, self.name, self.prefix, self.keep = steps, enabled, name, prefix, keep
        self.bar: tqdm | None = None

    @classmethod
    def of_run(cls, steps: int, name: str, enabled: bool, in_sweep: bool) -> Progress:
        """A run's progress: alone, it starts with the platform line and keeps its bar at the
        end; in a sweep (which names the platform once) its lines carry its name, and the
        sweep's line per run replaces its bar at the end."""
        show = cls(steps, enabled=enabled, name=name, prefix=f"{name}: " if in_sweep else "", keep=not in_sweep)
        if not in_sweep:
            show.say(platform_line())
        return show

    def begin(self, start: int) -> None:
        """Show the bar, at step ``start``."""
        self.bar = tqdm(
            total=self.steps,
            initial=start,
            disable=not self.enabled,
            unit="step",
            dynamic_ncols=True,
            desc=self.name,
            file=sys.stderr,
            leave=self.keep,
            mininterval=1.0,
        )

    def say(self, text: str) -> None:
        """A line on stderr (above the bar)."""
        if self.enabled:
            tqdm.write(self.prefix + text, file=sys.stderr)

    def compiling(self, m: ModelConfig) -> None:
        self.say(f"compiling the train step for {shape_name(m)} ...")

    def compiled(self, seconds: float) -> None:
        self.say(f"compiled in {seconds:.1f}s")

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        assert self.bar is not None, "begin() first"
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:.0f}", refresh=False)

    def evaluated(
        self, step: int, train_loss: float | None, val_loss: float, tokens_per_s: float, tokens_per_step: int
    ) -> None:
        """nanoGPT's line per evaluation, with the time left at the mean rate so far."""
        left = (self.steps - step) * tokens_per_step / tokens_per_s if tokens_per_s > 0 else None
        train = "-" if train_loss is None else f"{train_loss:.4f}"
        eta = "?" if left is None else tqdm.format_interval(left)
        self.say(
            f"step {step}/{self.steps}: train loss {train}, val loss {val_loss:.4f}, "
            f"{tokens_per_s:,.0f} tok/s, ETA {eta}"
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
