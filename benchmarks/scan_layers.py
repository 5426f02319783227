"""Layers under ``nn.scan`` (``model.scan_layers``) against the Python loop: compile time and step time.

    python benchmarks/scan_layers.py [--repeats 3] [--steps 30] [--quick]
                                     [--out benchmarks/results/scan_layers_<backend>.json]

At the sweep's shapes (batch 8 x seq 128, byte vocabulary 256, rotary positions, head size 16:
L2-d32, L2-d48, L3-d64, L4-d80) and at d_model 256 x 6 layers, in one process with JAX's
persistent compilation cache off, for each shape:

- compile: ``--repeats`` times, the programs of both layouts built afresh (alternating which
  goes first): trace + lower + XLA compile of the train step, the init and the evaluation
  (wall seconds; what a sweep pays once per shape);
- step: the compiled steps of both layouts timed in ``--windows`` alternating windows of
  ``--steps`` steps each (so both see the same machine).

The machine may be shared and noisy, so the layouts are compared as ratios (scanned / loop):
of each repeat's compiles and of each pair of windows, medians over them. ``--quick``: one
compile of each layout and two windows of 5 steps. Prints a table and writes JSON with the
machine record.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.record import result_path, write_result  # noqa: E402
from scaling import host_memory  # noqa: E402

SHAPES = ((2, 32), (2, 48), (3, 64), (4, 80), (6, 256))  # (n_layer, d_model); head size 16


def _config(n_layer: int, d_model: int, scan: bool):
    from scaling.config import Config, DataConfig, ModelConfig, TrainConfig

    model = ModelConfig(
        n_layer=n_layer,
        d_model=d_model,
        n_head=d_model // 16,
        seq_len=128,
        vocab_size=256,
        position="rotary",
        scan_layers=scan,
    )
    return Config(model=model, data=DataConfig(tokenizer="byte"), train=TrainConfig(batch_size=8, progress=False))


def _compile(cfg, mesh) -> tuple[object, dict]:
    """The programs of one layout, and the seconds to build them: the train step (trace, lower,
    compile), the init (compile and run) and the evaluation (trace, lower, compile)."""
    from scaling.train import ShapePrograms

    t0 = time.perf_counter()
    programs = ShapePrograms(cfg, mesh, total_steps=1000)
    programs.compile_step()
    t1 = time.perf_counter()
    state = programs.init_state()
    t2 = time.perf_counter()
    programs._program("eval", programs._build_eval)
    t3 = time.perf_counter()
    return (programs, state), {
        "compile_s": t3 - t0,
        "step_compile_s": t1 - t0,
        "init_s": t2 - t1,
        "eval_compile_s": t3 - t2,
    }


def _window(programs, state, batch, steps: int):
    """(state, seconds per train step) over ``steps`` steps, each waited for."""
    import jax

    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = programs.train_step(state, batch)
        jax.block_until_ready(metrics["loss"])
    return state, (time.perf_counter() - t0) / steps


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="train steps per timed window")
    p.add_argument("--windows", type=int, default=6, help="timed windows of each layout")
    p.add_argument("--quick", action="store_true", help="one compile of each layout, two windows of 5 steps")
    p.add_argument("--out", default=None, help="default: benchmarks/results/scan_layers_<backend>.json")
    args = p.parse_args(argv)
    host_memory.apply()  # the allocator policy the training CLIs set
    if args.quick:
        args.repeats, args.windows, args.steps = 1, 2, 5

    import jax
    import numpy as np

    jax.config.update("jax_enable_compilation_cache", False)
    from scaling.model import training_attention
    from scaling.sharding import make_mesh, mesh_shape

    rows = []
    for n_layer, d_model in SHAPES:
        per = {False: [], True: []}
        built = {}
        for r in range(args.repeats):  # compile both layouts afresh, alternating which goes first
            for scan in (False, True) if r % 2 == 0 else (True, False):
                cfg = _config(n_layer, d_model, scan)
                mesh = make_mesh(mesh_shape(cfg.mesh, jax.device_count()))
                built[scan], cost = _compile(cfg, mesh)
                per[scan].append(cost)
        # step time: the last compiled programs of both layouts in alternating windows
        batch = jax.device_put(
            np.random.default_rng(0).integers(0, 256, (8, 129), dtype=np.int32), built[False][0].batch_sharding
        )
        states = {scan: _window(*built[scan], batch, 2)[0] for scan in built}  # warm-up
        step = {False: [], True: []}  # seconds per step of each window
        for w in range(args.windows):
            for scan in (False, True) if w % 2 == 0 else (True, False):
                states[scan], seconds = _window(built[scan][0], states[scan], batch, args.steps)
                step[scan].append(seconds)
        compile_ratio = statistics.median(s["compile_s"] / lp["compile_s"] for lp, s in zip(per[False], per[True]))
        step_ratio = statistics.median(s / lp for lp, s in zip(step[False], step[True]))
        med = {
            scan: {
                "compile_s": statistics.median(c["compile_s"] for c in per[scan]),
                "step_s": statistics.median(step[scan]),
            }
            for scan in per
        }
        rows.append(
            {
                "shape": f"L{n_layer}-d{d_model}",
                "n_layer": n_layer,
                "d_model": d_model,
                "attention": training_attention(_config(n_layer, d_model, False).model),
                "loop": med[False],
                "scan": med[True],
                "compile_ratio": compile_ratio,
                "step_ratio": step_ratio,
                "compiles": {"loop": per[False], "scan": per[True]},
                "windows_s": {"loop": step[False], "scan": step[True]},
            }
        )
        row = rows[-1]
        print(
            f"{row['shape']:>9} compile {med[False]['compile_s']:6.2f} s loop, {med[True]['compile_s']:6.2f} s scan "
            f"(x{row['compile_ratio']:.2f}); step {1e3 * med[False]['step_s']:7.2f} ms loop, "
            f"{1e3 * med[True]['step_s']:7.2f} ms scan (x{row['step_ratio']:.2f})",
            flush=True,
        )
    result = {
        "backend": jax.default_backend(),
        "batch": 8,
        "seq_len": 128,
        "vocab": 256,
        "head_dim": 16,
        "position": "rotary",
        "repeats": args.repeats,
        "windows": args.windows,
        "steps": args.steps,
        "rows": rows,
    }
    return write_result(args.out or result_path("scan_layers"), result)


if __name__ == "__main__":
    main()
