"""The package's layers, and that imports only point down them (an import-linter contract, as a
test): a module may import from its own layer or the ones below, never above, and no chain of
imports (lazy ones inside functions included) comes back to where it started."""

from __future__ import annotations

import ast
from pathlib import Path

import autocompress

PACKAGE = Path(autocompress.__file__).parent
# Lowest first. The package's __init__ (the public API) and cli/ sit on top of everything.
LAYERS = [
    {"errors", "files", "version", "zoo"},
    {"core"},
    {"techniques"},
    {"train"},
    {"hardware"},
    {"search"},
    {"export"},
    {"cli"},
]
MAX_LINES = 340  # "no module over about 300 lines"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        out |= {c for c in candidates if c in modules and c != name}
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] == "__main__":
        return None  # the package's own __init__: the public API, above every layer
    for index, members in enumerate(LAYERS):
        if parts[1] in members:
            return index
    raise AssertionError(f"{module} is in no layer: add its folder to LAYERS in {__file__}")


def test_imports_only_point_down_the_layers():
    modules = _modules()
    upward = []
    for name, path in modules.items():
        here = _layer(name)
        for target in _imports(name, path, modules):
            there = _layer(target)
            if here is not None and (there is None or there > here):
                upward.append(f"{name} -> {target}")
    assert not upward, "imports that point up the layers: " + "; ".join(sorted(upward))


def test_no_import_cycle():
    modules = _modules()
    graph = {name: {t for t in _imports(name, path, modules) if _layer(t) is not None}
             for name, path in modules.items() if _layer(name) is not None}
    # A package's __init__ re-exports its modules; a module importing from its own package's
    # __init__ is no cycle of meaning, so edges into an ancestor package are left out.
    graph = {n: {t for t in targets if not n.startswith(t + ".")} for n, targets in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_modules_stay_small():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by idea): {long}"
