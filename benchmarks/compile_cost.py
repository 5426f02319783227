"""What one new model shape costs to compile on this machine: the fixed cost a sweep pays per shape.

    python benchmarks/compile_cost.py [--config experiments/configs/bench-smoke.yaml]
                                      [--depths 2,4,8,12] [--out benchmarks/results/compile_cost.json]

For each shape of the sweep (and the sweep's narrowest width at ``--depths`` layers), with
JAX's persistent compilation cache off, on the otherwise idle machine, in one process:

- trace + lower: Python (it holds the GIL) turning the train step, init and evaluation into
  XLA programs, and building the Trainer (abstract state and shardings);
- compile: XLA's compile of each (wall), and the CPU seconds the process spent meanwhile
  (XLA compiles on threads of its own, so the calling thread's CPU says nothing);
- the number of fusion kernels in the compiled train step.

On a machine whose cores the training loop keeps busy, a compile's CPU seconds are what it
takes from training, however it is scheduled. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.record import write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _timed(fn):
    """(result, wall seconds, process CPU seconds) of fn()."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def shape_cost(trainer_factory) -> dict:
    """Trace/lower and compile times of one shape's train step, init and evaluation."""
    trainer, build_s, _ = _timed(trainer_factory)
    row = {"trainer_s": build_s}
    lowered_step, row["step_lower_s"], _ = _timed(trainer._lower_step)
    compiled, row["step_compile_s"], row["step_compile_cpu_s"] = _timed(lowered_step.compile)
    row["step_fusions"] = len(re.findall(r"^\s*(?:ROOT )?%?\S+ = \S+ fusion\(", compiled.as_text(), re.M))
    lowered_init, row["init_lower_s"], _ = _timed(trainer._lower_init)
    _, row["init_compile_s"], row["init_compile_cpu_s"] = _timed(
        lambda: lowered_init.compile(compiler_options=trainer.init_compiler_options())
    )
    lowered_eval, row["eval_lower_s"], _ = _timed(trainer._lower_eval)
    _, row["eval_compile_s"], row["eval_compile_cpu_s"] = _timed(lowered_eval.compile)
    row["python_s"] = row["trainer_s"] + row["step_lower_s"] + row["init_lower_s"] + row["eval_lower_s"]
    row["compile_cpu_s"] = row["step_compile_cpu_s"] + row["init_compile_cpu_s"] + row["eval_compile_cpu_s"]
    return row


def _relative(path: str) -> str:
    """A path inside the repository as written from its root (no host-specific prefix)."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "experiments" / "configs" / "bench-smoke.yaml"))
    p.add_argument("--depths", default="2,4,8,12", help="extra layer counts at the sweep's narrowest width")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "compile_cost.json"))
    args = p.parse_args(argv)

    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    from scaling import sweep
    from scaling.sharding import make_mesh, mesh_shape
    from scaling.train import Trainer, steps_for

    plan = sweep.make_plan(sweep.load_spec(args.config), {"train": {"progress": "false"}})
    cfgs, seen = [], set()  # (config, whether a shape of the sweep)
    for r in plan.runs:
        if sweep.shape_key(r) not in seen:
            seen.add(sweep.shape_key(r))
            cfgs.append((r.cfg, True))
    narrow = min((c for c, _ in cfgs), key=lambda c: c.model.d_model)
    for depth in (int(x) for x in args.depths.split(",") if x):
        if all((c.model.d_model, c.model.n_layer) != (narrow.model.d_model, depth) for c, _ in cfgs):
            cfgs.append((dataclasses.replace(narrow, model=dataclasses.replace(narrow.model, n_layer=depth)), False))
    rows = []
    for cfg, in_sweep in cfgs:
        mesh = make_mesh(mesh_shape(cfg.mesh, jax.device_count()))
        row = shape_cost(lambda cfg=cfg, mesh=mesh: Trainer(cfg, mesh, steps_for(cfg)))
        rows.append({"shape": f"L{cfg.model.n_layer}-d{cfg.model.d_model}", "in_sweep": in_sweep, **row})
    result = {"config": _relative(args.config), "backend": jax.default_backend(), "jax": jax.__version__, "rows": rows}
    print(f"compile cost per shape ({result['backend']}, jax {jax.__version__}, persistent cache off, idle machine)")
    print(
        f"{'shape':>10} {'sweep':>5} {'python s':>8} {'step s':>7} {'init s':>7} {'eval s':>7} "
        f"{'compile CPU s':>13} {'step fusions':>12}"
    )
    for r in rows:
        print(
            f"{r['shape']:>10} {'yes' if r['in_sweep'] else '':>5} {r['python_s']:>8.2f} {r['step_compile_s']:>7.2f} "
            f"{r['init_compile_s']:>7.2f} {r['eval_compile_s']:>7.2f} {r['compile_cpu_s']:>13.2f} "
            f"{r['step_fusions']:>12}"
        )
    swept = [r for r in rows if r["in_sweep"]]
    print(
        f"the sweep's {len(swept)} shapes: {sum(r['python_s'] for r in swept):.1f} s of Python (trace, lower), "
        f"{sum(r['compile_cpu_s'] for r in swept):.1f} CPU-s of XLA compiling"
    )
    return write_result(args.out, result)


if __name__ == "__main__":
    main()
