"""The package's import graph: no circles, no import from a lower layer up to a higher
one, and no package import made inside a function (they hide circles).

Layers, bottom up (a module may import modules of its own layer or below, never
above; inside a layer the graph must still be acyclic):

    1  errors, registry, fileio, cache, interrupt   errors, registries, files, signals
    2  config                                   field metadata, validation through hooks
    3  components: codes, decoders, compressors, feedback, stragglers, tasks, data, presets, schedules
    4  step, engine, reference
    5  grid, plan, program, costs, store, results, sweep, distributed
    6  tables, plots, report, testing, tuning (tuning needs tables' divergence rule and F − F*)
    7  experiment (its modules), bench
    8  cli
    9  coco_jax itself (the public API in __init__)

The walk reads every module's source with `ast` (module-level and nested imports,
`import a.b`, `from a import b`, relative imports); nothing is imported.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = "coco_jax"
ROOT = pathlib.Path(__file__).resolve().parent.parent / PACKAGE

# Module (or module prefix, ending in ".") -> layer.
LAYERS = {
    "errors": 1,
    "registry": 1,
    "fileio": 1,
    "interrupt": 1,
    "cache": 1,
    "config": 2,
    "coding": 3,
    "cyclic_mds": 3,
    "decoders": 3,
    "compressors": 3,
    "feedback": 3,
    "stragglers": 3,
    "tasks": 3,
    "data": 3,
    "datasets": 3,
    "partition": 3,
    "presets": 3,
    "schedules": 3,
    "step": 4,
    "engine": 4,
    "reference": 4,
    "grid": 5,
    "plan": 5,
    "program": 5,
    "costs": 5,
    "store": 5,
    "results": 5,
    "sweep": 5,
    "distributed": 5,
    "tables": 6,
    "plots": 6,
    "report": 6,
    "testing": 6,
    "tuning": 6,
    "experiment": 7,
    "experiment.": 7,
    "bench": 7,
    "bench.": 7,
    "cli": 8,
}
TOP = 9  # the package itself: `coco_jax/__init__.py`


def modules() -> dict[str, pathlib.Path]:
    """Dotted name (without the package prefix; "" for the package) -> file."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def layer_of(name: str) -> int:
    if name == "":
        return TOP
    if name in LAYERS:
        return LAYERS[name]
    for prefix, layer in LAYERS.items():
        if prefix.endswith(".") and name.startswith(prefix):
            return layer
    raise KeyError(name)


def _resolve(name: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute dotted target of a relative `from . import x` in module `name`."""
    base = name.split(".") if name else []
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports(name: str, path: pathlib.Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported package module, line, made inside a function or class) of one module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nested: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            for inner in ast.walk(node):
                if inner is not node:
                    nested.add(id(inner))
    type_checking: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                for sub in ast.walk(inner):
                    type_checking.add(id(sub))
    out = []
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue  # typing only: never executed
        targets: list[str] = []  # absolute dotted names
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                mod = ".".join(filter(None, [PACKAGE, _resolve(name, node, path.name == "__init__.py")]))
            else:
                mod = node.module or ""
            # `from pkg import x` imports the module pkg.x where x is one, else pkg
            targets = [
                f"{mod}.{a.name}" if f"{mod}.{a.name}"[len(PACKAGE) + 1 :] in known else mod
                for a in node.names
            ]
        for t in targets:
            if t != PACKAGE and not t.startswith(PACKAGE + "."):
                continue
            rel = t[len(PACKAGE) + 1 :]
            while rel and rel not in known:  # `import pkg.a.b.C`-like names: the module part
                rel = rel.rpartition(".")[0]
            item = (rel, node.lineno, id(node) in nested)
            if rel != name and item not in out:
                out.append(item)
    return out


def graph() -> tuple[dict[str, list[tuple[str, int, bool]]], dict[str, pathlib.Path]]:
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items()}, mods


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _show(name: str) -> str:
    return PACKAGE + ("." + name if name else "")


def test_every_module_has_a_layer():
    missing = [_show(n) for n in modules() if n and _layer_or_none(n) is None]
    assert not missing, f"modules without a layer in tests/test_layers.py LAYERS: {missing}"


def _layer_or_none(name: str) -> int | None:
    try:
        return layer_of(name)
    except KeyError:
        return None


def test_no_import_circles():
    g, _ = graph()
    edges = {n: {t for t, _, _ in targets} for n, targets in g.items()}
    # the package __init__ runs first whenever a submodule is imported; that is not an
    # import edge of the submodule (and edges *into* "" are upward, caught below)
    cycles = _cycles(edges)
    assert not cycles, "import circles: " + "; ".join(" <-> ".join(map(_show, c)) for c in cycles)


def test_no_upward_imports():
    g, mods = graph()
    bad = []
    for name, targets in g.items():
        here = _layer_or_none(name)
        if here is None:
            continue
        for target, line, _ in targets:
            there = _layer_or_none(target)
            if there is not None and there > here:
                rel = mods[name].relative_to(ROOT.parent)
                bad.append(
                    f"{rel}:{line} {_show(name)} (layer {here}) imports {_show(target)} (layer {there})"
                )
    assert not bad, "imports from a lower layer up to a higher one:\n" + "\n".join(bad)


def test_no_package_imports_inside_functions():
    g, mods = graph()
    bad = [
        f"{mods[name].relative_to(ROOT.parent)}:{line} imports {_show(target)} inside a function"
        for name, targets in g.items()
        for target, line, nested in targets
        if nested
    ]
    assert not bad, "package imports made inside functions (move them to the module top):\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from coco_jax import config\n", [("config", 1, False)]),
        ("from coco_jax.config import FIELDS\n", [("config", 1, False)]),
        ("import coco_jax.step as s\n", [("step", 1, False)]),
        ("def f():\n    from coco_jax.plots import x\n", [("plots", 2, True)]),
        ("import coco_jax as cj\n", [("", 1, False)]),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from coco_jax.plan import Group\n", []),
    ],
)
def test_the_walk_reads_imports(tmp_path, source, expected):
    """The checker itself: every import form maps to the right module, line and place."""
    path = tmp_path / "mod.py"
    path.write_text(source)
    assert imports("errors", path, set(LAYERS) | {"plots", "step", "config", "plan"}) == expected


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
