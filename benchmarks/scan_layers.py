"""Layers under ``nn.scan`` (``model.scan_layers``) against the Python loop: compile time and step time.

    python benchmarks/scan_layers.py [--repeats 3] [--steps 30] [--quick]
                                     [--out benchmarks/results/scan_layers_<backend>.json]

At the sweep's shapes (batch 8 x seq 128, byte vocabulary 256, rotary positions, head size 16:
L2-d32, L2-d48, L3-d64, L4-d80) and at d_model 256 x 6 layers, in one process with JAX's
persistent compilation cache off. Each repeat, for each shape, builds the programs of both
layouts afresh (alternating which goes first) and times:

- compile: trace + lower + XLA compile of the train step, the init and the evaluation (wall
  seconds; what a sweep pays once per shape);
- step: the median wall time of ``--steps`` train steps after two warm-up steps.

The machine may be shared and noisy, so the layouts are compared as ratios (scanned / loop)
within a repeat, and the table gives the medians over repeats. ``--quick`` takes one repeat of
10 steps. Prints a table and writes JSON with the machine record.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.record import result_path, write_result  # noqa: E402

SHAPES = ((2, 32), (2, 48), (3, 64), (4, 80), (6, 256))  # (n_layer, d_model); head size 16


def _config(n_layer: int, d_model: int, scan: bool):
    from scaling.config import Config, DataConfig, ModelConfig, TrainConfig
    model = ModelConfig(n_layer=n_layer, d_model=d_model, n_head=d_model // 16, seq_len=128, vocab_size=256,
                        position="rotary", scan_layers=scan)
    return Config(model=model, data=DataConfig(tokenizer="byte"), train=TrainConfig(batch_size=8, progress=False))


def _measure(cfg, mesh, steps: int) -> dict:
    """Compile seconds (train step, init, evaluation) and the median train-step seconds of one layout."""
    import jax
    import numpy as np

    from scaling.train import ShapePrograms
    t0 = time.perf_counter()
    programs = ShapePrograms(cfg, mesh, total_steps=1000)
    programs.compile_step()
    t1 = time.perf_counter()
    state = programs.init_state()
    t2 = time.perf_counter()
    programs._program("eval", programs._build_eval)
    t3 = time.perf_counter()
    rng = np.random.default_rng(0)
    times = []
    for i in range(steps + 2):
        batch = jax.device_put(rng.integers(0, 256, (8, 129), dtype=np.int32), programs.batch_sharding)
        s = time.perf_counter()
        state, metrics = programs.train_step(state, batch)
        jax.block_until_ready(metrics["loss"])
        if i >= 2:
            times.append(time.perf_counter() - s)
    return {"compile_s": t3 - t0, "step_compile_s": t1 - t0, "init_s": t2 - t1, "eval_compile_s": t3 - t2,
            "step_s": statistics.median(times), "loss": float(metrics["loss"])}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--quick", action="store_true", help="one repeat of 10 steps")
    p.add_argument("--out", default=None, help="default: benchmarks/results/scan_layers_<backend>.json")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.steps = 1, 10

    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    from scaling.model import training_attention
    from scaling.sharding import make_mesh, mesh_shape

    rows = []
    for n_layer, d_model in SHAPES:
        per = {False: [], True: []}
        for r in range(args.repeats):
            for scan in ((False, True) if r % 2 == 0 else (True, False)):
                cfg = _config(n_layer, d_model, scan)
                mesh = make_mesh(mesh_shape(cfg.mesh, jax.device_count()))
                per[scan].append(_measure(cfg, mesh, args.steps))
        ratio = {k: statistics.median(s[k] / lp[k] for lp, s in zip(per[False], per[True]))
                 for k in ("compile_s", "step_s")}
        med = {scan: {k: statistics.median(m[k] for m in per[scan]) for k in per[scan][0]} for scan in per}
        rows.append({"shape": f"L{n_layer}-d{d_model}", "n_layer": n_layer, "d_model": d_model,
                     "attention": training_attention(_config(n_layer, d_model, False).model),
                     "loop": med[False], "scan": med[True],
                     "compile_ratio": ratio["compile_s"], "step_ratio": ratio["step_s"],
                     "repeats": {"loop": per[False], "scan": per[True]}})
        row = rows[-1]
        print(f"{row['shape']:>9} compile {med[False]['compile_s']:6.2f} s loop, {med[True]['compile_s']:6.2f} s scan "
              f"(x{row['compile_ratio']:.2f}); step {1e3 * med[False]['step_s']:7.2f} ms loop, "
              f"{1e3 * med[True]['step_s']:7.2f} ms scan (x{row['step_ratio']:.2f})", flush=True)
    result = {"backend": jax.default_backend(), "batch": 8, "seq_len": 128, "vocab": 256, "head_dim": 16,
              "position": "rotary", "repeats": args.repeats, "steps": args.steps, "rows": rows}
    return write_result(args.out or result_path("scan_layers"), result)


if __name__ == "__main__":
    main()
