"""How the package's modules import each other: by public names only. No Ray, nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(REPO / "raytune_st").rglob("*.py"), *(REPO / "jobs").glob("*.py"), *(REPO / "benchmarks").glob("*.py")])


def private_imports(path: Path, root: Path = REPO) -> list[str]:
    """`from raytune_st.x import _name` anywhere in a file (module level or inside a function)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("raytune_st"):
            found += [f"{path.relative_to(root)}:{node.lineno} {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    return found


def test_no_module_imports_another_modules_private_names():
    found = [line for path in SOURCES for line in private_imports(path)]
    assert found == [], "make these public (or move the code where it is used):\n" + "\n".join(found)


def test_a_private_import_inside_a_function_is_seen(tmp_path):
    (tmp_path / "m.py").write_text("import os\n\ndef f():\n    from raytune_st.data.sources import Source, _hidden\n")
    assert private_imports(tmp_path / "m.py", tmp_path) == ["m.py:4 raytune_st.data.sources._hidden"]


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """module -> the raytune_st modules it imports, at module level or inside functions."""
    modules = {}
    for path in (root / "raytune_st").rglob("*.py"):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("raytune_st"):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    graph[name].add(target if target in modules else node.module)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in modules)
        graph[name] &= set(modules) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (each holds an import circle)."""
    order, low, stack, found = {}, {}, [], []

    def visit(node: str) -> None:
        order[node] = low[node] = len(order)
        stack.append(node)
        for other in graph[node]:
            if other not in order:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], order[other])
        if low[node] == order[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return found


# `raytune_st.train(config)` and `raytune_st.tune(config)`: the job packages are also callable
# (JobPackage), so the root package imports them and they import it. Known; the only one left.
CALLABLE_PACKAGES = ["raytune_st", "raytune_st.train", "raytune_st.tune"]


def test_no_import_circles_between_modules():
    assert [group for group in cycles(import_graph()) if group != CALLABLE_PACKAGES] == []


def test_a_circle_through_a_lazy_import_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
