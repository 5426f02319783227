"""The learning-rate pilot scan of a sweep (the spec's ``lr_scan:``) and the rule fitted to it.

The scan is a sub-sweep in ``OUT/lr_scan/`` (its own plan.json, runs/, results.csv; no fit):
at each scanned size (``lr_scan.models``: that many sizes of the main design, from the
smallest to the largest evenly by rank, or a list of sizes), one run per rate of
``lr_scan.lrs``, each of ``lr_scan.flops`` FLOPs (D = C / 6N, whole batches), with the main
runs' base config and per-size warmup and init (the spec's arms are not scanned: the rule
serves them all). Its runs are sharded by ``--shard`` like the main ones.

The fit (:func:`fit_rule`): per size, the optimum of the loss (the spec's fit loss, val_loss
by default) against log(lr) is the vertex of the parabola through the best rate and its two
neighbours (``in_range: false`` when the best rate is the smallest or the largest scanned:
then the optimum may lie beyond the scan, and the best rate stands in for it); then
``log lr_opt = log c - gamma log(N / n_ref)`` by least squares over the sizes, with n_ref the
geometric mean of the scanned N (so c is the rule's rate there; with two sizes the line goes
through both optima). The rule goes to ``OUT/lr_rule.json`` (:class:`~scaling.sweep.hparams.LrRule`),
with the rate each main size got.

:func:`run` does it all in order, resumable after a kill at any point: the scan's runs of
this shard, a wait (polling) for the other shards' scan runs, the fit (an atomic write of
lr_rule.json, left as it is when a rerun fits the same rule from unchanged results), then the
main plan made with the rule and executed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

from scaling.errors import UsageError
from scaling.io import atomic_write_text
from scaling.sweep import hparams
from scaling.sweep.execute import SweepResult, execute
from scaling.sweep.fit import Plotter
from scaling.sweep.hparams import LrOptimum, LrRule
from scaling.sweep.plan import Plan, make_plan
from scaling.sweep.results import check_outputs, collect_rows, read_json, rebuild_results
from scaling.sweep.spec import Arm, Budget, ModelSpec, Spec

__all__ = [
    "SCAN_DIR",
    "RULE_FILE",
    "fit_rule",
    "lr_arm_name",
    "optimum",
    "plan_scan",
    "read_rule",
    "run",
    "record_rule",
    "rule_report",
    "scan_rule",
    "scan_spec",
    "write_rule",
]

SCAN_DIR = "lr_scan"
RULE_FILE = "lr_rule.json"


# ----------------------------------------------------------------------------- the scan's plan


def lr_arm_name(lr: float) -> str:
    """The arm (and run-id suffix) of a scanned rate: ``lr0.002``, ``lr1e_05``."""
    return "lr" + format(lr, ".4g").replace("-", "_")


def _scanned_models(spec: Spec, main: Plan) -> tuple[ModelSpec, ...]:
    scan = spec.lr_scan
    assert scan is not None
    if scan.models:
        return scan.models
    sizes: dict[tuple, int] = {}
    for r in main.runs:
        m = r.cfg.model
        sizes[(m.n_layer, m.d_model, m.n_head)] = hparams.count_of(r, spec.sizing.count)
    ranked = sorted(sizes, key=lambda k: (sizes[k], k))
    picks = sorted({round(i * (len(ranked) - 1) / (scan.n_models - 1)) for i in range(scan.n_models)})
    if len(picks) < 2:
        raise UsageError(
            f"sweep spec {spec.path}: lr_scan needs 2 or more sizes, but the design has "
            f"{len(ranked)}; list lr_scan.models"
        )
    return tuple(ModelSpec(n_layer=ranked[i][0], d_model=ranked[i][1], n_head=ranked[i][2]) for i in picks)


def scan_spec(spec: Spec, main: Plan) -> Spec:
    """The scan as a sweep spec: one IsoFLOP budget (``lr_scan.flops``) over the scanned sizes,
    one arm per rate, the first seed, no fit (nor the main design's noise seeds and
    tokens-per-parameter floor: a scan run is short by design). A scanned size warms up as its
    runs in the main plan do: the rate is scanned under the schedule it will get."""
    scan = spec.lr_scan
    if scan is None:
        raise ValueError(f"sweep spec {spec.path} has no lr_scan")
    arms = tuple(Arm(lr_arm_name(lr), {"optim": {"lr": lr}}) for lr in scan.lrs)
    return dataclasses.replace(
        spec,
        name=f"{spec.name}.{SCAN_DIR}",
        description=f"learning-rate scan of sweep {spec.name}",
        design="isoflop",
        models=(),
        tokens=(),
        budgets=(Budget(scan.flops, _scanned_models(spec, main)),),
        min_steps=1,
        seeds=None if spec.seeds is None else spec.seeds[:1],
        arms=arms,
        fit=False,
        lr_scan=None,
        lr_rule=None,
        noise=None,
        min_tokens_per_param=0.0,
        max_tokens_per_param=0.0,  # the scan's runs are at one budget, whatever their D / N
        warmups=tuple((hparams.shape_of(r.cfg), r.cfg.optim.warmup_steps) for r in main.runs) if spec.per_size else (),
    )


def plan_scan(spec: Spec, overrides: dict | None, main: Plan, *, load_data: bool = True) -> Plan:
    """The scan's plan (``main``: the sweep's plan, whose sizes are scanned)."""
    sub = scan_spec(spec, main)
    too_small = (
        f"sweep spec {spec.path}: lr_scan.flops {sub.budgets[0].flops:g} is too small for a scanned size "
        f"(a run of less than one step); raise it"
    )
    try:
        plan = make_plan(sub, overrides, load_data=load_data)
    except UsageError as e:
        raise UsageError(too_small if "plans no runs" in str(e) else f"lr_scan of {spec.path}: {e}") from None
    if plan.dropped:
        raise UsageError(f"{too_small} ({plan.dropped[0]})")
    return plan


# ----------------------------------------------------------------------------- the fit


def optimum(lrs: list[float], losses: list[float | None]) -> tuple[float, bool]:
    """(lr_opt, in_range) of one size's scan: the vertex, in log(lr), of the parabola through
    the best finite loss and its neighbours; the best rate itself when it is at an end of the
    scan (in_range False), when a neighbour has no finite loss, or when the three points do
    not curve upwards."""
    order = np.argsort(lrs)
    lr_sorted = np.asarray(lrs, dtype=np.float64)[order]
    x = np.log(lr_sorted)
    y = np.array(
        [np.inf if v is None or not math.isfinite(v) else v for v in np.asarray(losses, dtype=object)[order]],
        dtype=np.float64,
    )
    if not np.isfinite(y).any():
        raise UsageError("every run of a scanned size diverged; lower lr_scan.lrs")
    i = int(np.argmin(y))
    in_range = 0 < i < len(x) - 1
    if not in_range or not (np.isfinite(y[i - 1]) and np.isfinite(y[i + 1])):
        return float(lr_sorted[i]), in_range
    a, b, _ = np.polyfit(x[i - 1 : i + 2], y[i - 1 : i + 2], 2)
    if a <= 0:
        return float(lr_sorted[i]), in_range
    return float(np.exp(np.clip(-b / (2 * a), x[i - 1], x[i + 1]))), in_range


def fit_rule(points: list[tuple[int, str, float, float | None]], count: str = "total") -> LrRule:
    """The rule fitted to scan points ``(N, shape, lr, loss)`` (loss None: diverged)."""
    optima = []
    for shape in dict.fromkeys(p[1] for p in points):
        ps = sorted((p for p in points if p[1] == shape), key=lambda p: p[2])
        lrs, losses = [p[2] for p in ps], [None if p[3] is None or not math.isfinite(p[3]) else float(p[3]) for p in ps]
        lr_opt, in_range = optimum(lrs, losses)
        optima.append(LrOptimum(int(ps[0][0]), shape, lr_opt, tuple(lrs), tuple(losses), in_range))
    optima.sort(key=lambda o: o.n_params)
    logn = np.log([o.n_params for o in optima])
    logl = np.log([o.lr_opt for o in optima])
    n_ref = float(np.exp(logn.mean()))
    if np.ptp(logn) > 0:
        slope, icept = np.polyfit(logn - logn.mean(), logl, 1)
    else:
        slope, icept = 0.0, float(logl.mean())
    return LrRule(c=float(np.exp(icept)), gamma=float(-slope), n_ref=n_ref, count=count, optima=tuple(optima))


def scan_rule(spec: Spec, scan: Plan, scan_out: Path) -> LrRule | None:
    """The rule fitted to the scan's results in ``scan_out``; None while a run has no summary."""
    by_id = {r.run_id: r for r in scan.runs}
    rows = {row["run_id"]: row for row in collect_rows(scan_out, scan)}
    if set(rows) != set(by_id):
        return None
    points = []
    for rid, r in by_id.items():
        row = rows[rid]
        loss = row.get(spec.fit_loss) if row.get("status") == "completed" else None
        points.append(
            (
                hparams.count_of(r, spec.sizing.count),
                hparams.shape_of(r.cfg),
                r.cfg.optim.lr,
                None if loss is None else float(loss),
            )
        )
    return fit_rule(points, spec.sizing.count)


def read_rule(out: Path) -> LrRule | None:
    d = read_json(Path(out) / RULE_FILE)
    return None if d is None else LrRule.from_dict(d)


def write_rule(out: Path, rule: LrRule) -> bool:
    """Write OUT/lr_rule.json atomically; False (nothing written) when it holds this rule already."""
    path = Path(out) / RULE_FILE
    if read_rule(out) == rule:
        return False
    atomic_write_text(path, json.dumps(rule.to_dict(), indent=1) + "\n")
    return True


def rule_report(rule: LrRule) -> str:
    """The fitted rule and each size's scan, with a loud warning for an optimum at an end of its scan."""
    lines = [
        f"learning-rate rule: {hparams.FORMULA}, c = {rule.c:.4g}, gamma = {rule.gamma:.4g}, "
        f"n_ref = {rule.n_ref:.4g} (N = {rule.count} parameters)"
    ]
    for o in rule.optima:
        losses = " ".join(f"{lr:g}:{'-' if v is None else format(v, '.4f')}" for lr, v in zip(o.lrs, o.losses))
        lines.append(
            f"  {o.shape} (N={o.n_params:,}): lr_opt {o.lr_opt:.4g}"
            f"{'' if o.in_range else ' (NOT IN RANGE)'}; lr:loss {losses}"
        )
    for o in rule.out_of_range:
        end = "smallest" if o.lr_opt <= min(o.lrs) else "largest"
        lines.append(
            f"WARNING: the best learning rate of {o.shape} (N={o.n_params:,}) is the {end} one scanned "
            f"({o.lr_opt:g}): its optimum may lie outside lr_scan.lrs [{min(o.lrs):g}, {max(o.lrs):g}]; "
            f"widen the scan"
        )
    if rule.applied:
        lines.append("  applied: " + ", ".join(f"{a.shape} {a.lr:.4g}" for a in rule.applied))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the whole sweep


def run(
    spec: Spec,
    overrides: dict | None,
    main: Plan,
    out: Path,
    *,
    shard: tuple[int, int] = (0, 1),
    retry_diverged: bool = False,
    progress: bool | None = None,
    echo=print,
    plot: Plotter | None = None,
    poll_s: float = 10.0,
    trainers: dict | None = None,
) -> tuple[Plan, SweepResult]:
    """The sweep of a spec with ``lr_scan``: scan, fit, then the main plan (``main``, made
    without a rule, gives the sizes to scan); returns the main plan made with the rule and
    its :class:`SweepResult`. Resumable: finished scan runs are kept, and the rule is refitted
    from their results."""
    import jax  # the training stack loads with the runner (see scaling.sweep)

    out = Path(out)
    scan_out = out / SCAN_DIR
    is_main = jax.process_index() == 0
    scan = plan_scan(spec, overrides, main)
    check_outputs(scan, scan_out)
    trainers = {} if trainers is None else trainers
    rule = scan_rule(spec, scan, scan_out) if scan_out.is_dir() else None
    if rule is not None:  # a finished scan: the main plan's outputs are checked before any compute
        check_outputs(make_plan(spec, overrides, lr_rule=rule), out)
    if rule is None or retry_diverged:
        execute(
            scan, scan_out, shard=shard, retry_diverged=retry_diverged, progress=progress, echo=echo, trainers=trainers
        )
        rule = _wait_for_scan(spec, scan, scan_out, echo, poll_s)
    if is_main:
        rebuild_results(scan_out, scan)
    plan = make_plan(spec, overrides, lr_rule=rule)
    check_outputs(plan, out)
    plan = record_rule(plan, out, echo if is_main else None)
    result = execute(
        plan,
        out,
        shard=shard,
        retry_diverged=retry_diverged,
        progress=progress,
        echo=echo,
        trainers=trainers,
        plot=plot,
    )
    return plan, result


def record_rule(plan: Plan, out: Path, echo=print) -> Plan:
    """``plan`` with its rule's ``applied`` rates, written to OUT/lr_rule.json and printed
    (``echo`` None: neither, as on processes other than the first)."""
    assert plan.lr_rule is not None
    rule = hparams.with_applied(plan.lr_rule, plan.spec, plan.runs)
    if echo is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        wrote = write_rule(out, rule)
        echo(rule_report(rule))
        echo(f"{'wrote' if wrote else 'kept'} {Path(out) / RULE_FILE}")
    return dataclasses.replace(plan, lr_rule=rule)


def _wait_for_scan(spec: Spec, scan: Plan, scan_out: Path, echo, poll_s: float) -> LrRule:
    """Poll until every scan run has a summary (trained by other shards), then fit."""
    waiting: list[str] | None = None
    while True:
        rule = scan_rule(spec, scan, scan_out)
        if rule is not None:
            return rule
        pending = [r.run_id for r in scan.runs if not (scan_out / "runs" / r.run_id / "summary.json").is_file()]
        if pending != waiting:
            echo(
                f"waiting for {len(pending)} scan run(s) of other shards before the learning-rate fit: "
                f"{', '.join(pending)} (checking every {poll_s:g}s)"
            )
            waiting = pending
        time.sleep(poll_s)
