"""The package's shape: no module imports another that imports it back (at any depth, counting
imports inside functions and for type checking), and importing llmzip leaves its host alone."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import llmzip

PACKAGE = Path(llmzip.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The llmzip modules `path` imports anywhere in it."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            found |= {f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names}
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports(p, modules) for p in paths}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        state[module] = 2
        path.pop()
        return None

    return next((found for module in sorted(graph) if module not in state and (found := visit(module))), None)


def test_no_module_imports_itself_back():
    graph = import_graph()
    assert len(graph) > 30 and graph["llmzip.compressor"] >= {"llmzip.batches", "llmzip.cluster"}
    assert "llmzip.compressor" not in graph["llmzip.cluster"]
    assert cycle(graph) is None, " -> ".join(cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_importing_llmzip_leaves_the_process_alone():
    """No environment variable set and no signal handler installed by importing any module; the
    command line's settings come from tune_process()."""
    code = """
import os, pkgutil, importlib, signal
signals = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
environment, handlers = dict(os.environ), [signal.getsignal(s) for s in signals]
import llmzip
for module in pkgutil.walk_packages(llmzip.__path__, "llmzip."):
    if module.name != "llmzip.__main__":
        importlib.import_module(module.name)
assert dict(os.environ) == environment, set(os.environ.items()) ^ set(environment.items())
assert [signal.getsignal(s) for s in signals] == handlers
llmzip.tune_process()
assert os.environ["GOMP_SPINCOUNT"] == "10000"
"""
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
