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
