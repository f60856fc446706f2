"""The package's shape, read from the source with `ast`: imports run downwards only, no circles,
rich and typer stay in cli/ and ui/, the CLI builds no tables, few flat modules, and the public
API (new and old import paths) resolves."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tjdkit"

# Bottom to top: a part may import its own layer and the layers below it, never one above.
LAYERS = [
    ("errors", "fileio", "recipes", "config", "kernels"),  # shared ground
    ("data",),
    ("heads",),
    ("decoding",),
    ("models",),
    ("factorize",),
    ("evaluation",),
    ("tnot",),
    ("training",),
    ("bench", "chat", "tjd"),
    ("ui",),
    ("cli",),
    ("__main__",),
]
LEVEL = {part: level for level, parts in enumerate(LAYERS) for part in parts}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> list[tuple[str, str]]:
    """(imported module or name, what was named) for every import statement, lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(f"{node.module}.{alias.name}", alias.name) for alias in node.names]
    return found


def _owner(dotted: str) -> str:
    """The tjdkit module a dotted import resolves to (`tjdkit.heads.build_head` -> `tjdkit.heads`)."""
    while dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted


def _part(module: str) -> str:
    """The top-level part of tjdkit a module belongs to: `tjdkit.decoding.verify` -> `decoding`."""
    return module.split(".")[1] if "." in module else "tjdkit"


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for target, _ in _imports(path):
            if target.split(".")[0] == "tjdkit" and _owner(target) != name:
                edges[name].add(_owner(target))
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_between_modules():
    assert _cycles(_edges()) == []


def test_no_import_circle_between_packages():
    parts: dict[str, set[str]] = defaultdict(set)
    for source, targets in _edges().items():
        parts[_part(source)] |= {_part(target) for target in targets if _part(target) != _part(source)}
    assert _cycles(parts) == []


def test_imports_run_downwards_only():
    """data and models never import factorize, config never imports tnot, and so on for every layer."""
    assert set(LEVEL) | {"tjdkit"} >= {_part(name) for name in MODULES}, "a new part of tjdkit needs a place in LAYERS"
    upward = []
    for source, path in MODULES.items():
        for target, named in _imports(path):
            if target.split(".")[0] != "tjdkit":
                continue
            owner = _owner(target)
            if _part(owner) == "tjdkit":  # the package face: only its version is taken from below it
                if _part(source) != "tjdkit" and named != "__version__":
                    upward.append(f"{source} -> tjdkit.{named}")
                continue
            if _part(source) != "tjdkit" and LEVEL[_part(owner)] > LEVEL[_part(source)]:
                upward.append(f"{source} -> {owner}")
    assert upward == []


def test_rich_and_typer_only_in_cli_and_ui():
    offenders = [
        name for name, path in MODULES.items()
        if _part(name) not in ("cli", "ui")
        and any(target.split(".")[0] in ("rich", "typer") for target, _ in _imports(path))
    ]
    assert offenders == []
    assert not [name for name, path in MODULES.items()
                if _part(name) == "ui" and any(t.split(".")[0] == "typer" for t, _ in _imports(path))]


def test_cli_builds_no_tables_progress_or_traces():
    """cli/ parses and hands results to ui/: rich's builders appear only there."""
    builders = ("rich.table", "rich.progress", "rich.text", "rich.console.Group", "rich.panel", "rich.live")
    offenders = [
        f"{name}: {target}"
        for name, path in MODULES.items() if _part(name) == "cli"
        for target, _ in _imports(path) if target.startswith(builders)
    ]
    assert offenders == []


def test_at_most_five_flat_modules():
    flat = sorted(path.name for path in PACKAGE.glob("*.py") if path.name != "__init__.py")
    assert len(flat) <= 5, flat


@pytest.mark.parametrize("path, name", [
    ("tjdkit.decoding", "generate"),  # import paths users wrote before the packages moved
    ("tjdkit.heads", "build_head"),
    ("tjdkit.tnot", "enable_tnot"),
    ("tjdkit.models", "load_model"),
    ("tjdkit.bench", "run_bench"),
    ("tjdkit.chat", "ChatSession"),
])
def test_old_import_paths_keep_working(path, name):
    assert callable(getattr(importlib.import_module(path), name))


def test_public_api_resolves_every_name():
    import tjdkit

    for name in tjdkit.__all__:
        assert getattr(tjdkit, name) is not None, name
    assert tjdkit.generate is importlib.import_module("tjdkit.decoding").generate
    with pytest.raises(AttributeError):
        tjdkit.no_such_name  # noqa: B018


def test_importing_tjdkit_loads_no_torch():
    code = "import sys, tjdkit, tjdkit.cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
