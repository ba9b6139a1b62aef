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


def ray_importers(directory: Path) -> list[str]:
    """The modules of `directory` that import ray (at module level or inside functions)."""
    found = []
    for path in sorted(directory.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            if any(name == "ray" or name.startswith("ray.") for name in names):
                found.append(path.name)
                break
    return found


def test_only_one_module_of_train_imports_ray():
    # The loop, the plan and the console take plain values; train/ray_world.py is where they meet Ray.
    assert ray_importers(REPO / "raytune_st" / "train") == ["ray_world.py"]
