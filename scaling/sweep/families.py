"""Cooldown families of a wsd sweep (Hägele et al. 2024): the runs that differ only in
``train.tokens`` share one stable phase.

When the base config's ``optim.schedule`` is ``wsd`` (and the spec does not set
``cooldown_branches: false``), the planned runs equal in everything but ``train.tokens``
(shape, seed, arm, optimizer, data: the config identity with the tokens left out) form a
family. The longest member trains from scratch and keeps a checkpoint at each shorter
member's decay start (:func:`scaling.schedule.decay_start`); each shorter member is a
branch from it there: it trains only its cooldown, and ends bit for bit where the same run
from scratch would. A member whose warmup does not fit its own steps, or with a curriculum
(whose data order depends on the run's length), trains from scratch.

The plan lists a family together, the parent first (then its branches, shortest first), and
``--shard I/N`` assigns whole families to shards, so that a branch's parent is trained by the
same process before it. The cost of a branch (estimates, progress) is its steps after the
branch point.
"""

from __future__ import annotations

import dataclasses

from scaling.config import Config
from scaling.schedule import decay_start


def family_key(cfg: Config) -> str:
    """What the members of a family share: the config identity with train.tokens left out."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, tokens=1)).identity_hash()


def can_branch(cfg: Config) -> bool:
    """Whether runs of this config may be cooldown branches of a longer one."""
    return cfg.optim.schedule == "wsd" and not cfg.data.curriculum


def branch_point(cfg: Config, steps: int, parent_steps: int) -> int | None:
    """The step a run of ``steps`` steps branches from a parent of ``parent_steps`` steps (its
    decay start), or None when it cannot (no stable steps, a warmup longer than the run, or the
    point after the parent's own decay start)."""
    start = decay_start(cfg.optim, steps)
    if steps >= parent_steps or start < 1 or cfg.optim.warmup_steps > steps - 1:
        return None
    return start if start <= decay_start(cfg.optim, parent_steps) else None


def assign_families(runs: list, enabled: bool = True) -> list:
    """``runs`` (PlannedRun, in design order) grouped into families, each at the place of its
    first member: parent first, then its branches by length; with ``index`` renumbered, and
    ``family``, ``parent``, ``stable_steps`` and ``keep_steps`` set. Without ``enabled`` (or
    for runs that cannot branch) every run is a family of its own."""
    groups: dict = {}
    for r in runs:
        key = (family_key(r.cfg), r.arm) if enabled and can_branch(r.cfg) else ("alone", r.run_id)
        groups.setdefault(key, []).append(r)
    out: list = []
    for fam, members in enumerate(groups.values()):
        parent = max(members, key=lambda r: (r.steps, -r.index))
        points = {r.run_id: branch_point(r.cfg, r.steps, parent.steps) for r in members if r is not parent}
        keep = tuple(sorted({p for p in points.values() if p is not None}))
        ordered = [parent] + sorted((r for r in members if r is not parent), key=lambda r: (r.steps, r.index))
        for r in ordered:
            point = points.get(r.run_id)
            out.append(
                dataclasses.replace(
                    r,
                    index=len(out),
                    family=fam,
                    keep_steps=keep if r is parent else (),
                    parent=parent.run_id if point is not None else None,
                    stable_steps=point,
                )
            )
    return out
