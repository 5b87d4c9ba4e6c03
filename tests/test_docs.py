"""Code comments cite docs/method.md and docs/architecture.md by section title: every cited title exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITATION = re.compile(r'(method|architecture)\.md, "([^"]+)"')


def _headings(name: str) -> set[str]:
    text = (ROOT / "docs" / name).read_text(encoding="utf-8")
    return {m.group(1).strip() for m in re.finditer(r"^#+ (.+)$", text, re.MULTILINE)}


def _citations() -> list[tuple[str, str, str]]:
    found = []
    for folder in ("src", "tests", "benchmarks", "examples", "docs"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".md") and path.is_file():
                for m in CITATION.finditer(path.read_text(encoding="utf-8")):
                    found.append((str(path.relative_to(ROOT)), f"{m.group(1)}.md", m.group(2)))
    return found


def test_every_cited_section_exists():
    headings = {name: _headings(name) for name in ("method.md", "architecture.md")}
    cited = _citations()
    assert cited, "no citations found: the pattern or the paths are wrong"
    missing = [c for c in cited if c[2] not in headings[c[1]]]
    assert not missing, f"cited sections missing from docs/: {missing}"


def test_no_comment_points_outside_the_repository():
    bad = re.compile(r"DESIGN §|\(issue \d+\)|this machine|this CPU")
    offenders = [
        str(p.relative_to(ROOT))
        for p in sorted((ROOT / "src").rglob("*.py"))
        if bad.search(p.read_text(encoding="utf-8"))
    ]
    assert not offenders, f"comments citing a document, issue or machine outside the repository: {offenders}"
