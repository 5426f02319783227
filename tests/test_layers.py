"""The layer contract of the code base, checked by parsing every import (those inside functions too,
and ``importlib.import_module("...")`` with a literal name) of scaling/, experiments/, analysis/
and benchmarks/:

- a module imports only modules of its own layer or a lower one (a module's layer is that of the
  longest dotted prefix of its name in LAYERS);
- the project's modules import each other without a cycle;
- ``scaling.laws`` loads no JAX, so fits run anywhere;
- importing ``scaling.config`` and building a Config load neither JAX nor a project module above L1;
- no module of scaling/ is over MAX_LINES lines.

The layers::

    L9  experiments.*, analysis.*, benchmarks.*             command lines, plots, measurements
    L8  scaling.sweep                                       parse, noise, spec, hparams, families, plan, show,
                                                            calibrate, execute, results, baseline, diagnose, fit,
                                                            pilot
    L7  scaling.inference, scaling.difficulty,              decoding, loading runs; model-scored curricula;
        scaling.finetune                                    fine-tuning (tasks, LoRA, heads, the run)
    L6  scaling.train                                       optimizer, step, programs, the run loop
    L5  scaling.evaluation, scaling.run_dir, scaling.run_curves, scaling.checkpoint, scaling.compile_cache
    L4  scaling.data                                        corpus, embedded corpora, preparing corpora, token
                                                            caches, batches, curriculum sampler
    L3  scaling.model                                       the GPT, attention kernels
    L2  scaling.tokenizer, scaling.flops, scaling.sharding, scaling.laws
    L1  scaling.fields, scaling.config, scaling.config_parse, scaling.curriculum_config, scaling.io,
        scaling.download, scaling.finetune_config
    L0  scaling.errors, scaling.paths
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import REPO

ROOTS = ("scaling", "experiments", "analysis", "benchmarks")
MAX_LINES = 400
JAX = ("jax", "jaxlib", "flax", "optax", "orbax")

LAYERS = {
    "scaling.errors": 0,
    "scaling.paths": 0,
    "scaling.machine": 0,
    "scaling.host_memory": 0,
    "scaling.fields": 1,
    "scaling.config": 1,
    "scaling.config_parse": 1,
    "scaling.curriculum_config": 1,
    "scaling.finetune_config": 1,
    "scaling.io": 1,
    "scaling.download": 1,
    "scaling.tokenizer": 2,
    "scaling.flops": 2,
    "scaling.sharding": 2,
    "scaling.laws": 2,
    "scaling.schedule": 2,
    "scaling.model": 3,
    "scaling.data": 4,
    "scaling.evaluation": 5,
    "scaling.run_dir": 5,
    "scaling.run_curves": 5,
    "scaling.checkpoint": 5,
    "scaling.compile_cache": 5,
    "scaling.train": 6,
    "scaling.inference": 7,
    "scaling.difficulty": 7,
    "scaling.finetune": 7,
    "scaling.sweep": 8,
    "experiments": 9,
    "analysis": 9,
    "benchmarks": 9,
}


def module_files() -> dict[str, Path]:
    """Every project module by dotted name (a package by its ``__init__``)."""
    out = {}
    for root in ROOTS:
        for p in sorted((REPO / root).rglob("*.py")):
            parts = p.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = p
    return out


MODULES = module_files()


def layer_of(name: str) -> int | None:
    if name == "scaling":  # the package itself (an empty __init__), not a prefix for its modules
        return 0
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        prefix = ".".join(parts[:k])
        if prefix in LAYERS:
            return LAYERS[prefix]
    return None


def _resolve(module: str, name: str | None) -> str:
    """``from module import name``: the submodule when it is one, else the module."""
    if name and f"{module}.{name}" in MODULES:
        return f"{module}.{name}"
    return module


def _absolute(importer: str, level: int, module: str | None) -> str:
    is_package = MODULES[importer].name == "__init__.py"
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports_of(name: str) -> Iterator[tuple[str, int]]:
    """(imported module, line) of every import statement and literal ``import_module`` call."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(name, node.level, node.module) if node.level else node.module
            for a in node.names:
                yield _resolve(module, a.name), node.lineno
        elif isinstance(node, ast.Call):
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if (
                fname in ("import_module", "__import__")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                yield node.args[0].value, node.lineno


def is_project(module: str) -> bool:
    return module.split(".")[0] in ROOTS


def project_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        for target, _ in imports_of(m):
            if is_project(target) and target != m:
                graph[m].add(target if target in MODULES else _nearest_module(target))
    return graph


def _nearest_module(name: str) -> str:
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in MODULES:
            return ".".join(parts[:k])
    return name


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in graph:
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    out.append(sorted(comp))
    return out


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if layer_of(m) is None]
    assert not missing, f"modules of no layer (add them to LAYERS): {missing}"


def test_imports_point_to_the_same_or_a_lower_layer():
    bad = []
    for m in MODULES:
        for target, line in imports_of(m):
            if not is_project(target):
                continue
            lm, lt = layer_of(m), layer_of(target)
            if lt is not None and lm is not None and lt > lm:
                bad.append(f"{MODULES[m].relative_to(REPO)}:{line}: {m} (L{lm}) imports {target} (L{lt})")
    assert not bad, "imports of a higher layer:\n" + "\n".join(bad)


def _bound_names(module: str) -> set[str]:
    """Names a module binds at its top level (definitions, assignments, imports)."""
    names = set()
    for node in ast.parse(MODULES[module].read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def test_every_imported_name_exists():
    """``from scaling import attention`` after attention moved into scaling.model would fail only
    when the importing module is loaded; here it fails for every module at once."""
    bad = []
    for m in MODULES:
        for node in ast.walk(ast.parse(MODULES[m].read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            module = _absolute(m, node.level, node.module) if node.level else node.module
            if not is_project(module):
                continue
            if module not in MODULES:
                bad.append(f"{MODULES[m].relative_to(REPO)}:{node.lineno}: no module {module}")
                continue
            for a in node.names:
                if a.name != "*" and f"{module}.{a.name}" not in MODULES and a.name not in _bound_names(module):
                    bad.append(f"{MODULES[m].relative_to(REPO)}:{node.lineno}: {module} has no {a.name}")
    assert not bad, "imports of names that do not exist:\n" + "\n".join(bad)


def test_no_import_cycle_among_project_modules():
    graph = project_graph()
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    assert not cycles, "modules that import each other (strongly connected components):\n" + "\n".join(
        " ".join(c) for c in cycles
    )


def _laws_modules() -> list[str]:
    return [m for m in MODULES if m == "scaling.laws" or m.startswith("scaling.laws.")]


def test_laws_load_no_jax():
    graph = project_graph()
    seen, todo = set(), _laws_modules()
    assert "scaling.laws" in todo
    while todo:
        m = todo.pop()
        if m not in seen and m in MODULES:
            seen.add(m)
            todo.extend(graph[m])
    loads = sorted(f"{m} imports {t}" for m in seen for t, _ in imports_of(m) if t.split(".")[0] in JAX)
    assert not loads, "the laws load JAX:\n" + "\n".join(loads)


def test_importing_the_config_and_building_one_loads_nothing_above_it():
    code = (
        "import sys, scaling.config; scaling.config.Config(); "
        "print(' '.join(m for m in sys.modules if m.split('.')[0] in ('scaling', 'jax', 'flax', 'optax', "
        "'orbax', 'numpy')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": ""},
    )
    assert proc.returncode == 0, proc.stderr
    loaded = proc.stdout.split()
    assert [m for m in loaded if not m.startswith("scaling")] == []
    assert [m for m in loaded if layer_of(m) is None or layer_of(m) > 1] == []


def _over() -> list[str]:
    return sorted(
        f"{p.relative_to(REPO)} ({n})"
        for m, p in MODULES.items()
        if m.startswith("scaling") and (n := len(p.read_text().splitlines())) > MAX_LINES
    )


def test_no_module_of_the_library_is_over_max_lines():
    assert _over() == []
