"""Imports inside vlft point one way: each module imports only from its own layer or the ones below, and no
module imports itself back through others. Every import counts, also those inside functions."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vlft"

# Lowest first. A module belongs to the longest prefix that names it; the root package "vlft" names only itself.
LAYERS = [
    # the package root holds only the version and config re-exports
    ("vlft", "vlft.config", "vlft.ranks", "vlft.markdown"),
    ("vlft.models.base", "vlft.models.contract"),  # what a family hands over, written down
    ("vlft.data",),  # records, datasets, collators: they see a bundle, never a family
    ("vlft.models", "vlft.adapters"),  # the families and the registry; which layers get DoRA
    ("vlft.runs",),  # a finished run's directory, loaded
    ("vlft.eval",),
    ("vlft.train",),  # training evaluates as it goes
    ("vlft.merge", "vlft.analyze", "vlft.compare", "vlft.sweep", "vlft.serve"),
    ("vlft.cli",),
]


def layer_of(module: str) -> int:
    best = max(((len(prefix), i) for i, prefixes in enumerate(LAYERS) for prefix in prefixes
                if module == prefix or (prefix != "vlft" and module.startswith(prefix + "."))), default=None)
    assert best is not None, f"{module} is in no layer; add it to LAYERS"
    return best[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The vlft modules ``path`` imports; `from vlft.x import y` counts as vlft.x.y when that is a module."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(paths)) for name, path in paths.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
                  for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_a_higher_layer():
    assert upward_imports(import_graph()) == []


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_the_checks_catch_what_they_are_for():
    graph = {"vlft.data.base": {"vlft.train.run"}, "vlft.train.run": {"vlft.eval.vqa"},
             "vlft.eval.vqa": {"vlft.train.run"}, "vlft.config": set()}
    assert upward_imports(graph) == ["vlft.data.base (layer 2) imports vlft.train.run (layer 6)",
                                     "vlft.eval.vqa (layer 5) imports vlft.train.run (layer 6)"]
    assert cycles(graph) == [["vlft.eval.vqa", "vlft.train.run"]]
    with pytest.raises(AssertionError, match="vlft.newthing is in no layer"):
        layer_of("vlft.newthing")


def test_relative_and_function_level_imports_are_seen(tmp_path, monkeypatch):
    pkg = tmp_path / "vlft" / "eval"
    pkg.mkdir(parents=True)
    (tmp_path / "vlft" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from ..train import run\n    from . import b\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "vlft")
    assert imported_modules(pkg / "a.py", {"vlft.train.run", "vlft.eval.b", "vlft.train"}) == {
        "vlft.train", "vlft.train.run", "vlft.eval.b"}


def test_the_library_imports_without_the_command_line_layers():
    code = ("import sys, vlft.eval.run_eval, vlft.models, vlft.data.dataset; "
            "print(sorted(m for m in sys.modules if m.startswith(('vlft.train', 'vlft.cli', 'vlft.serve'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
