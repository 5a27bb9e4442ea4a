"""The code goes one way: no import cycles in compressor/, the kernels know nothing above them, one module talks to
the Hub.

The import graph is read from the source with `ast`, imports inside functions included: a lazy import that only
hides a cycle from the interpreter is still a cycle here. Importing `a.b.c` from outside package `a.b` also runs
`a/b/__init__.py` and `a/__init__.py` first, so those count as imported too.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "compressor"
#: what compressor/ops/ may import from the toolkit: itself and the error type, nothing that knows models or passes
OPS_MAY_IMPORT = ("compressor.ops", "compressor.errors")
#: the one module that calls the Hub's download functions and reads its offline setting
HUB_MODULE = "compressor.loaders.hub_files"
HUB_CALLS = {"hf_hub_download", "snapshot_download", "is_offline_mode"}


def module_files() -> dict[str, Path]:
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _imported_names(module: str, path: Path, tree: ast.AST) -> set[str]:
    """Dotted names `module` imports (a module, or a name inside one), absolute."""
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module
            names.update(f"{origin}.{alias.name}" for alias in node.names)
            names.add(origin)
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the toolkit modules importing it runs (targets, and the packages above them it enters)."""
    files = module_files()
    graph = {}
    for module, path in files.items():
        edges = set()
        for name in _imported_names(module, path, ast.parse(path.read_text(), str(path))):
            if not name.startswith("compressor"):
                continue
            while name not in files:  # `from a.b import name` imports a.b
                name = name.rpartition(".")[0]
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                entered = ".".join(parts[:depth])
                if entered in files and not (module + ".").startswith(entered + ".") and entered != module:
                    edges.add(entered)
            edges.discard(module)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_imports_inside_functions_and_the_packages_they_enter():
    graph = import_graph()
    assert "compressor.architectures" in graph["compressor.loaders.hf_models"]  # imported inside functions
    assert "compressor.loaders" in graph["compressor.sources"]  # the package __init__ a submodule import runs
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_compressor_has_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_kernels_import_nothing_above_them():
    graph = import_graph()
    above = {module: sorted(target for target in targets if not target.startswith(OPS_MAY_IMPORT))
             for module, targets in graph.items() if module.startswith("compressor.ops")}
    assert not {module: targets for module, targets in above.items() if targets}


def test_only_hub_files_calls_the_hub_or_reads_the_offline_setting():
    callers = {}
    for module, path in module_files().items():
        tree = ast.parse(path.read_text(), str(path))
        used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)} | \
            {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)} | \
            {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
        reads_variable = any(isinstance(node, ast.Constant) and node.value == "HF_HUB_OFFLINE"
                             for node in ast.walk(tree))
        if used & HUB_CALLS or reads_variable:
            callers[module] = sorted(used & HUB_CALLS) + (["'HF_HUB_OFFLINE'"] if reads_variable else [])
    assert set(callers) == {HUB_MODULE}, callers
