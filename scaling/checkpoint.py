"""Orbax checkpoints of the train state: save, keep the last k (and the best), verify, resume.

A checkpoint holds the train state (step, parameters, optimizer state) and a small JSON
``meta`` item: the config's identity hash, the validation loss and the metrics.jsonl
length at the time. The RNG of a step is ``fold_in(key(seed), step)`` and the data
position is the step, so the state is all a resumed run needs to continue bit for bit.
Restores go through ``StandardRestore`` with the *current* run's shardings, so a run
saved on one mesh resumes on another (orbax reshards).

Saves are asynchronous by default (``checkpoint.async_save``): ``save`` returns once the
arrays are copied to host memory and orbax writes them in a background thread into a
temporary directory that it renames into place when complete, so a kill mid-save leaves the
previous checkpoints intact (and the temporary directory is cleaned up on the next start).
``wait``/``close`` block until the last save is on disk; a run calls them before it reports
completion.

Checksums: right after orbax renames a step into place (on the primary process, once every
process has written its part), every file of the step is fsynced and its SHA-256 and size go
into ``<step>/checksums.json``, written atomically. Only then is the step committed: orbax
prunes older checkpoints (its preservation policy: the last ``keep``, plus the best by
validation loss with ``keep_best``) after this, so a kill between the rename and the manifest
loses nothing that was committed. Before a step is read (state or meta) every file is checked
against the manifest; a step whose manifest is missing (a kill before it was written) or
unreadable, or with a missing, truncated, changed or unlisted file, is corrupt. A restore
falls back to the newest step that verifies and moves each newer one, with one warning line,
to ``checkpoints/corrupt/<step>-<time>-<pid>``: outside orbax's step listing, kept for
inspection, never retried, and the step can be saved again. When no step verifies nothing is
moved and ``CorruptCheckpoints`` (exit 2) is raised; a run that then starts from scratch
moves them at its first save. The manifest guards against damage at rest and torn writes;
it is not a signature (whoever can write the directory can rewrite it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from scaling.config import CheckpointConfig
from scaling.errors import UsageError
from scaling.io import atomic_write_text, fsync_dir

MANIFEST = "checksums.json"
CORRUPT_DIR = "corrupt"
_CHUNK = 1 << 20


@contextlib.contextmanager
def _quiet_read_only(read_only: bool):
    """Orbax warns, on every read-only manager, that it will not save: that is what read-only
    means here, so its warnings are dropped while one is made."""
    log = logging.getLogger("absl")
    level = log.level
    if read_only:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


class Checkpointer:
    def __init__(
        self, directory: Path, cfg: CheckpointConfig, *, read_only: bool = False, keep_steps: tuple[int, ...] = ()
    ):
        """``read_only`` opens another process's run to read it (generate, evaluate, a branch's
        parent): nothing is created, cleaned up or moved there, so a save in flight in a run
        still training is safe. ``keep_steps``: steps that are always saved and never pruned
        (the branch points of cooldown branches), beside the last ``keep``."""
        self.cfg, self.read_only = cfg, read_only
        self.keep_steps = frozenset(keep_steps)
        self.directory = Path(directory).absolute()
        policies: list = [ocp.checkpoint_managers.LatestN(n=cfg.keep)]
        if self.keep_steps:
            policies.append(ocp.checkpoint_managers.CustomSteps(steps=sorted(self.keep_steps)))
        if cfg.keep_best:
            policies.append(
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1, keep_checkpoints_without_metrics=False
                )
            )
        with _quiet_read_only(read_only):
            options = ocp.CheckpointManagerOptions(
                create=not read_only,
                read_only=read_only,
                cleanup_tmp_directories=not read_only,
                enable_async_checkpointing=cfg.async_save,
                preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
                best_fn=(lambda m: m["val_loss"]) if cfg.keep_best else None,
                best_mode="min",
                temporary_path_class=_ChecksummedPath,
            )
            self.manager = ocp.CheckpointManager(
                self.directory,
                options=options,
                item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
            )
        self._last_save_time = time.monotonic()
        self._problems: dict[int, str | None] = {}  # verification result per step, this process
        self._barriers = itertools.count()  # multi-process barrier names must not repeat

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def problem(self, step: int) -> str | None:
        """Why ``step`` cannot be trusted (see ``verify_step``), or None; checked once per process."""
        if step not in self._problems:
            self._problems[step] = verify_step(self.step_dir(step))
        return self._problems[step]

    def read_meta(self, step: int) -> dict | None:
        """The meta item of ``step``; None if the step does not verify."""
        if self.problem(step) is not None:
            return None
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def due(self, step: int, final: bool, steps_left: int | None = None) -> bool:
        """Whether to save after ``step``: always at the end; every ``every_steps`` steps (and
        ``every_seconds``) except within the last quarter of an interval before the end, when
        the final save is as good and only moments away; always at ``keep_steps``."""
        if final or step in self.keep_steps:
            return True
        if steps_left is not None and steps_left < self.cfg.every_steps // 4:
            return False
        if self.cfg.every_steps and step % self.cfg.every_steps == 0:
            return True
        return bool(self.cfg.every_seconds) and time.monotonic() - self._last_save_time >= self.cfg.every_seconds

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Start saving ``state`` at ``step`` (returns once it is copied to host memory when
        saving asynchronously; an earlier save still in flight is finished first)."""
        corrupt = [s for s in self.steps() if self._problems.get(s)]
        if corrupt:  # found by a restore that then started from scratch: make room for new saves
            self.manager.wait_until_finished()
            for s in corrupt:
                self._set_aside(s, self._problems[s], "the run saves anew")
        if step in self.manager.all_steps():
            return
        metrics = None
        if self.cfg.keep_best:  # an unevaluated checkpoint never counts as the best
            metrics = {"val_loss": math.inf if meta.get("val_loss") is None else float(meta["val_loss"])}
        self._problems.pop(step, None)
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            metrics=metrics,
            force=True,
        )
        self._last_save_time = time.monotonic()

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict, int] | None:
        """The newest checkpoint that verifies, as (state, meta, step); the newer ones that do
        not are moved aside, with a warning line each. None if there is no checkpoint at all.
        If none verifies, nothing is moved (the next ``save`` moves them) and CorruptCheckpoints
        is raised."""
        steps = self.steps()
        corrupt: list[tuple[int, str]] = []
        uncommitted: list[tuple[int, str]] = []  # killed between orbax's rename and the manifest
        for step in reversed(steps):
            problem = self.problem(step)
            if problem is not None:
                (uncommitted if problem == UNCOMMITTED else corrupt).append((step, problem))
                continue
            for s, p in sorted(corrupt + uncommitted, reverse=True):
                if self.read_only:
                    print(
                        f"warning: checkpoint {s} under {self.directory} is corrupt ({p}); reading checkpoint {step}",
                        file=sys.stderr,
                    )
                else:
                    self._set_aside(s, p, f"resuming from checkpoint {step}")
            self._check_shapes(step, abstract_state)
            try:
                out = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                    ),
                )
            except ValueError as e:  # intact files, but another tree structure than this run's state
                msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                raise UsageError(
                    f"checkpoint {step} under {self.directory} does not fit this run's "
                    f"train state ({msg}); use a new --out"
                ) from e
            return out["state"], out["meta"], step
        if uncommitted and not corrupt:  # only saves a kill interrupted: as if never started
            if not self.read_only:
                for s, p in uncommitted:
                    self._set_aside(s, p, "starting from scratch")
            return None
        if corrupt:
            raise CorruptCheckpoints(
                f"no checkpoint under {self.directory} can be restored: {len(corrupt)} corrupt, the newest "
                f"({corrupt[0][0]}) because {corrupt[0][1]} (pass --resume.restart_if_corrupt true to "
                f"start from scratch)"
            )
        return None

    def restore_step(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """(state, meta) of checkpoint ``step``, which must verify (UsageError otherwise); nothing
        is moved or written (a branch reads its parent's checkpoint this way)."""
        problem = self.problem(step) if step in self.steps() else "it does not exist"
        if problem is not None:
            raise UsageError(f"checkpoint {step} under {self.directory} cannot be restored: {problem}")
        self._check_shapes(step, abstract_state)
        try:
            out = self.manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
            )
        except ValueError as e:
            msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise UsageError(
                f"checkpoint {step} under {self.directory} does not fit this run's train state ({msg})"
            ) from e
        return out["state"], out["meta"]

    def _check_shapes(self, step: int, abstract_state: Any) -> None:
        """Refuse a checkpoint whose arrays have other shapes or dtypes than this run's state
        (orbax would restore a saved array into a target of another shape without a word)."""
        saved = _shapes_by_path(self.manager.item_metadata(step)["state"])
        wanted = _shapes_by_path(abstract_state)
        if saved.keys() != wanted.keys():
            layouts = _layer_layout(saved), _layer_layout(wanted)
            if None not in layouts and layouts[0] != layouts[1]:
                raise UsageError(
                    f"cannot restore checkpoint {step} under {self.directory}: it holds {layouts[0]} "
                    f"layers, this run's model {layouts[1]} ones; set model.scan_layers "
                    f"{str(layouts[0] == 'scanned').lower()} or use a new --out"
                )
            return  # another tree structure: orbax's restore names the difference
        for path, shape in wanted.items():
            if saved[path] != shape:
                raise UsageError(
                    f"cannot restore checkpoint {step} under {self.directory}: it holds {path} as "
                    f"{_fmt(saved[path])}, this run's state as {_fmt(shape)}; use a new --out"
                )

    def _set_aside(self, step: int, problem: str, then: str) -> None:
        """Move a corrupt step out of orbax's listing (primary process; all processes wait for it)
        so that it is neither retried nor in the way of a new save of that step."""
        src = self.step_dir(step)
        dest = self.directory / CORRUPT_DIR / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        ocp.multihost.sync_global_processes(f"scaling_checkpoint_corrupt_{step}_{next(self._barriers)}")
        if jax.process_index() == 0:
            try:
                dest.parent.mkdir(exist_ok=True)
                os.rename(src, dest)
                fsync_dir(self.directory)
                fsync_dir(dest.parent)
                where = f"moved to {dest}"
            except OSError as e:  # e.g. a read-only run directory opened only to read it
                where = f"left in place ({e.strerror or e})"
            print(
                f"warning: checkpoint {step} under {self.directory} is corrupt ({problem}); {where}; {then}",
                file=sys.stderr,
            )
        ocp.multihost.sync_global_processes(f"scaling_checkpoint_set_aside_{step}_{next(self._barriers)}")
        self.manager.reload()
        self._problems.pop(step, None)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class CorruptCheckpoints(UsageError):
    """Every checkpoint of a run failed to restore."""


def abstract_with_shardings(state: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings)


class _ChecksummedPath(ocp.path.atomicity.AtomicRenameTemporaryPath):
    """Orbax's atomic-rename commit of a step, followed by its checksum manifest. Orbax uses
    the class for the step and for each item inside it; only the step gets a manifest."""

    async def finalize(self) -> None:
        await super().finalize()
        final = Path(self.get_final())
        if ocp.path.atomicity_types.TMP_DIR_SUFFIX not in final.parent.name:
            await asyncio.to_thread(write_manifest, final)


def _files(step_dir: Path) -> list[str]:
    """Paths (relative, POSIX) of everything in ``step_dir`` that is not a directory, but the manifest."""
    return sorted(
        p.relative_to(step_dir).as_posix()
        for p in step_dir.rglob("*")
        if not p.is_dir() and p.relative_to(step_dir).as_posix() != MANIFEST
    )


def _sha256(path: Path, fsync: bool = False) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
        if fsync:
            os.fsync(f.fileno())
    return h.hexdigest()


def write_manifest(step_dir: Path) -> None:
    """Make every file of a committed step durable, then record their sizes and SHA-256 in
    ``step_dir/MANIFEST`` (written atomically): from then on the step counts as committed."""
    files = {
        rel: {"bytes": (step_dir / rel).stat().st_size, "sha256": _sha256(step_dir / rel, fsync=True)}
        for rel in _files(step_dir)
    }
    for d in sorted({(step_dir / rel).parent for rel in files}, key=lambda p: -len(p.parts)):
        fsync_dir(d)
    fsync_dir(step_dir)
    fsync_dir(step_dir.parent)  # orbax's rename of the step into place
    manifest = {"version": 1, "files": files}
    atomic_write_text(step_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


UNCOMMITTED = f"no {MANIFEST}: the save was never committed"


def verify_step(step_dir: Path) -> str | None:
    """None if every file of the step matches its manifest and nothing else is there; otherwise
    what is wrong, in a few words."""
    try:
        manifest = json.loads((step_dir / MANIFEST).read_text())
    except FileNotFoundError:
        return UNCOMMITTED
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"unreadable {MANIFEST} ({type(e).__name__})"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(e, dict) and isinstance(e.get("bytes"), int) and isinstance(e.get("sha256"), str)
        for e in files.values()
    ):
        return f"malformed {MANIFEST}"
    present = set(_files(step_dir))
    for rel, entry in sorted(files.items()):
        path = step_dir / rel
        if rel not in present:
            return f"{rel} is missing"
        size = path.stat().st_size
        if size != entry["bytes"]:
            return f"{rel} has {size} bytes, not {entry['bytes']}"
        if _sha256(path) != entry["sha256"]:
            return f"{rel} does not match its SHA-256"
    extra = sorted(present - set(files))
    if extra:
        return f"{extra[0]} is not in {MANIFEST}"
    return None


def _shapes_by_path(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{"params/h_0/attn/kernel": (shape, dtype), ...}`` of a state or its saved metadata
    (dataclass fields and dict keys name a path alike)."""

    def name(k) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    return {
        "/".join(name(k) for k in path): (tuple(leaf.shape), str(leaf.dtype))
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _layer_layout(shapes: dict[str, Any]) -> str | None:
    """``"scanned"`` (one ``h`` stacked over layers, ``model.scan_layers``), ``"looped"``
    (``h_0 .. h_{n-1}``) or None, from the parameter paths of :func:`_shapes_by_path`."""
    parts = {p for path in shapes if path.startswith("params/") for p in path.split("/")}
    if "h" in parts:
        return "scanned"
    return "looped" if "h_0" in parts else None


def _fmt(shape_dtype: tuple[tuple[int, ...], str]) -> str:
    return f"{shape_dtype[1]}{list(shape_dtype[0])}"
