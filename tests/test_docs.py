"""The facts the code relies on are in the repository: every citation names a file of docs/ (or the
README) and a section it has, and no citation points outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CITED = re.compile(r"(docs/[\w-]+\.md|README\.md)")
SECTION = re.compile(r"§\s*([^,;)\n`\"]+)")
#: What the code cited before its facts moved into docs/ (files beside the repository).
OUTSIDE = re.compile(r"(?<![\w/-])(magma\.md|cotracker3\.md|DESIGN\.md|ENVIRONMENT\.md|datasets-and-peers\.md)"
                     r"|shared/reference|\.\./shared/(ENVIRONMENT|DESIGN|STYLE|reference|scripts)")


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    files = [REPO / name for name in names  # docs/ itself, and this file's patterns, are not citations
             if not name.startswith("docs/") and REPO / name != Path(__file__).resolve() and (REPO / name).is_file()]
    return [path for path in files if path.suffix in {".py", ".md", ".txt", ".toml", ".yaml", ".sh", ""}]


def headings(doc: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in doc.read_text(encoding="utf-8").splitlines() if line.startswith("## ")]


def test_every_citation_names_a_docs_file_and_a_section_it_has():
    sections = {f"docs/{doc.name}": headings(doc) for doc in (REPO / "docs").glob("*.md")}
    sections["README.md"] = headings(REPO / "README.md")
    problems = []
    for path in tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        cited = CITED.findall(text)
        for name in cited:
            if name not in sections:
                problems.append(f"{path.relative_to(REPO)} cites {name}, which does not exist")
        known = [heading for name in set(cited) if name in sections for heading in sections[name]]
        for match in SECTION.finditer(text):
            if not cited:
                problems.append(f"{path.relative_to(REPO)}: §{match.group(1)} cites no docs/ file")
            elif not any(match.group(1).strip().startswith(heading) for heading in known):
                problems.append(f"{path.relative_to(REPO)}: §{match.group(1).strip()} is no section of "
                                f"{', '.join(sorted(set(cited)))}")
    assert not problems, "\n".join(problems)


def test_no_citation_points_outside_the_repository():
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}" for path in tracked_text_files()
             for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
             if OUTSIDE.search(line)]
    assert not found, "\n".join(found)
