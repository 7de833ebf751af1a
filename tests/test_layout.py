"""The house's picture: imports run one way, and no module imports itself back in a circle.

Layers, lowest first: models; runners' shared helpers (errors, paths, files, signals, yaml_input,
database); tracking; train and report; study and doctor; analysis; commands; the cli. A module
imports from its own package or a lower layer, never up, and the graph of every import (at the
top of a module or inside a function) has no cycle.
"""
import ast
from pathlib import Path

from conftest import REPO

LAYERS = [("models",), ("runners.errors", "runners.paths", "runners.files", "runners.signals",
                        "runners.yaml_input", "runners.database", "runners"),
          ("runners.tracking",), ("runners.train", "runners.report"), ("runners.study", "runners.doctor"),
          ("runners.analysis",), ("runners.commands",), ("runners.cli",)]


def _modules() -> dict[str, Path]:
    out = {}
    for root in ("models", "runners"):
        for path in (REPO / root).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _layer(module: str) -> int:
    best = None
    for rank, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if module == p or module.startswith(p + "."):
                if best is None or len(p) > best[1]:
                    best = (rank, len(p))
    assert best is not None, module
    return best[0]


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_imports_run_one_way_and_have_no_circle():
    modules = _modules()
    graph = {m: _imports(m, p, set(modules)) for m, p in modules.items()}
    upward = [(m, t) for m, ts in graph.items() for t in ts
              if _package(m) != _package(t) and _layer(t) > _layer(m) and t != "runners"]
    assert not upward, f"imports that run back up: {upward}"
    # no cycle (Tarjan-free: depth-first search with colours)
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                raise AssertionError(f"import circle: {' -> '.join(stack[stack.index(t):] + [t])}")
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m)
