"""A sweep's plan as printed: one line per run with its shape, counts, tokens, FLOPs and
branch point, the settings per size, the totals and the fits the plan supports."""

from __future__ import annotations

from scaling.sweep import hparams
from scaling.sweep.parse import format_si
from scaling.sweep.plan import Plan, PlannedRun


def format_duration(s: float) -> str:
    """Seconds as ``12.3s``, ``4m05s`` or ``2h07m``."""
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def shard_wall(plan: Plan, runs: tuple[PlannedRun, ...], estimates: dict, workers: int = 1) -> float:
    """Estimated seconds to train ``runs`` (of ``plan``) in ``workers`` processes, each a shard
    of the plan: the longest shard's sum."""
    mine = {r.run_id for r in runs}
    return max(sum(estimates[r.run_id] for r in plan.shard(i, workers) if r.run_id in mine) for i in range(workers))


def format_plan(
    plan: Plan,
    runs: tuple[PlannedRun, ...] | None = None,
    estimates: dict | None = None,
    shard: tuple[int, int] = (0, 1),
    workers: int = 1,
) -> str:
    """The plan as a table (one line per run) with totals; ``estimates`` maps run_id to seconds
    (trained in ``workers`` processes, each a shard of the plan)."""
    spec = plan.spec
    runs = plan.runs if runs is None else runs
    n_seeds = len(spec.seeds) if spec.seeds is not None else 1
    if spec.design == "grid":
        design = f"grid of {len(spec.models)} models x {len(spec.tokens)} token budgets"
    else:
        sizes = sorted({len(b.models) for b in spec.budgets})
        n_models = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
        design = f"IsoFLOP design of {len(spec.budgets)} budgets x {n_models} models"
    lines = [
        f"sweep {spec.name} ({spec.path}{f' with {spec.flags}' if spec.flags else ''}): {design} x {n_seeds} seed(s)"
        + (f" x {len(spec.arms)} arms" if spec.arms else "")
        + f" = {len(plan.runs)} runs"
    ]
    if spec.description:
        lines.append(f"  {spec.description}")
    b = plan.base
    lines.append(
        f"  corpus {b.data.corpus}, tokenizer {b.data.tokenizer}, seq_len {b.model.seq_len}, "
        f"batch {b.train.batch_size} (tokens are whole batches of {b.train.batch_size * b.model.seq_len})"
    )
    lines.append(f"  sizing rule: {spec.sizing.describe()}; N = n_params (all parameters), C = 6 N D")
    lines.extend(hparams.describe(spec, plan.runs, plan.lr_rule))
    if shard != (0, 1):
        lines.append(
            f"  shard {shard[0]}/{shard[1]}: families {shard[0]}, {shard[0] + shard[1]}, ... "
            f"({len(runs)} of {len(plan.runs)} runs)"
        )
    for note in plan.dropped:
        lines.append(f"  left out: {note}")
    head = (
        f"{'#':>3} {'run_id':<26} {'L':>3} {'d':>5} {'h':>3} {'N':>10} {'N_nonemb':>10} {'target':>7} "
        f"{'D':>11} {'steps':>6} {'C=6ND':>9} {'budget':>8} {'branch':>9}"
    )
    if spec.arms:
        head += f" {'arm':>10}"
    if estimates is not None:
        head += f" {'est.wall':>9}"
    lines.append(head)
    index_of = {r.run_id: r.index for r in plan.runs}
    for r in runs:
        m = r.cfg.model
        branch = f"#{index_of[r.parent]}@{r.stable_steps}" if r.parent else "-"  # trains from that checkpoint on
        target = format_si(r.target) if r.target else "-"
        line = (
            f"{r.index:>3} {r.run_id:<26} {m.n_layer:>3} {m.d_model:>5} {m.n_head:>3} {r.n_params:>10,} "
            f"{r.n_params_nonembed:>10,} {target:>7} {r.tokens:>11,} {r.steps:>6} "
            f"{r.flops['6nd']:>9.3g} {format(r.budget, '.3g') if r.budget else '-':>8} {branch:>9}"
        )
        if spec.arms:
            line += f" {r.arm:>10}"
        if estimates is not None:
            line += f" {format_duration(estimates[r.run_id]):>9}"
        lines.append(line)
    total = sum(r.train_flops for r in runs)
    n_branches = sum(r.parent is not None for r in runs)
    tail = (
        f"total: {len(runs)} runs ({n_branches} cooldown branches, counted from their branch points), "
        f"{sum(r.tokens * r.train_steps // r.steps for r in runs):,} tokens trained, C = {total:.3g} FLOPs (6ND)"
    )
    if estimates is not None:
        tail += f", est. wall {format_duration(shard_wall(plan, runs, estimates, workers))}"
        if workers > 1:
            tail += f" in {workers} worker processes"
    lines.append(tail)
    fits = {"3": "3 (parametric)", "2": "2 (IsoFLOP)", "1": "1 (annealed endpoints)"}
    if spec.fit:
        lines.append("fit at the end: approaches " + ", ".join(fits[a] for a in plan.approaches))
    return "\n".join(lines)
