"""The package's layers, checked: imports point down, and no module imports itself back.

`dqar_bench/` is regrouped by layer (docs/architecture.md). This reads every module's
imports (at any depth, inside functions too: a lazy import is still a dependency) and fails
on an import from a higher layer or on a cycle between modules, naming them, so the plan
stays visible in the tree as it grows.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dqar_bench"
LAYERS = ["core", "measure", "model", "strategy", "strategies", "config", "views", "runs"]
"""Lowest first; a module outside them (cli, testing, the package's own API) stands above all."""


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports. `from pkg import sub` counts `pkg.sub` alone
    where `sub` is a module (the package's own import of its submodules is not a cycle)."""
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                if len(subs) < len(node.names) and node.module in modules:
                    targets.add(node.module)
                targets |= subs
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names} & modules.keys()
        edges[name] = targets - {name, "dqar_bench"}
    return edges


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_is_in_a_layer_or_above_them() -> None:
    top = {m for m in _modules() if _layer(m) == len(LAYERS) and m.count(".") > 0}
    assert top <= {"dqar_bench.cli", "dqar_bench.testing", "dqar_bench.__main__"}, top


def test_imports_point_down_the_layers() -> None:
    edges = _imports(_modules())
    upward = [f"{m} imports {t}" for m, ts in edges.items() for t in sorted(ts) if _layer(t) > _layer(m)]
    assert not upward, "\n".join(upward)


def test_no_module_imports_itself_back() -> None:
    assert _cycles(_imports(_modules())) == []


def test_the_checks_would_catch_an_upward_import_and_a_cycle() -> None:
    assert _layer("dqar_bench.core.errors") < _layer("dqar_bench.runs.runner") < _layer("dqar_bench.cli")
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
