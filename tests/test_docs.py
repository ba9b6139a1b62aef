"""The documentation: docs/config.md matches the code, the README stays short, links resolve.

No Ray: rendering docs/config.md imports the jobs' config classes only.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README_MAX_LINES = 350
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])


def _generator():
    """scripts/gen_config_docs.py as a module (scripts/ is not a package)."""
    path = REPO / "scripts" / "gen_config_docs.py"
    spec = importlib.util.spec_from_file_location("gen_config_docs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_docs_are_current():
    generator = _generator()
    written = generator.OUTPUT.read_text(encoding="utf-8") if generator.OUTPUT.exists() else ""
    assert written == generator.render(), (
        "docs/config.md does not match the config classes: run python scripts/gen_config_docs.py and commit the result"
    )


def test_config_docs_list_every_job_and_key():
    from raytune_st.config import describe
    from raytune_st.registry import JOBS

    text = _generator().render()
    for name, job in JOBS.items():
        assert f"\n## {name}\n" in text
        for key, _, _ in describe(job.load()[0]):
            assert f"| `{key}` |" in text, f"{name}: {key} missing"


def test_readme_is_short():
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail into docs/"


def _without_code_blocks(text: str) -> str:
    return re.sub(r"^[ \t]*(```|~~~).*?^[ \t]*\1[^\n]*$", "", text, flags=re.S | re.M)


def _prose(text: str) -> str:
    """`text` without code blocks and inline code: a link or heading there is not one."""
    return re.sub(r"`[^`\n]*`", "", _without_code_blocks(text))


def _anchors(text: str) -> set[str]:
    """The ids GitHub gives a Markdown file's headings."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", _without_code_blocks(text), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(path: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", _prose(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_relative_links_point_to_existing_files(path):
    broken = []
    for link in _links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # https:, mailto:, ...
            continue
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text(encoding="utf-8")):
            broken.append(f"{link} (no heading #{anchor} in {file.relative_to(REPO)})")
    assert not broken, f"{path.relative_to(REPO)}: broken links: {', '.join(broken)}"


def test_the_link_check_sees_links():
    assert any(link.startswith("docs/") for link in _links(REPO / "README.md"))
    assert _anchors("# A `b` c\n## 1. Two / three\n## 1. Two / three\n```\n# not a heading\n```\n") == {
        "a-b-c", "1-two--three", "1-two--three-1",
    }
