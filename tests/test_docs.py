"""The facts the code relies on are in the repository: every citation names a file of docs/ (or the
README) and a section it has, and no citation points outside the repository."""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CITED = re.compile(r"(docs/[\w-]+\.md|README\.md)")
SECTION = re.compile(r"§\s*([^,;)\n`\"]+)")
#: What the code cited before its facts moved into docs/ (files beside the repository).
OUTSIDE = re.compile(r"(?<![\w/-])(magma\.md|cotracker3\.md|DESIGN\.md|ENVIRONMENT\.md|datasets-and-peers\.md)"
                     r"|shared/reference|\.\./shared/(ENVIRONMENT|DESIGN|STYLE|reference|scripts)")


#: Folders that are no part of the repository's text (what .gitignore keeps out), and docs/ itself.
SKIPPED = {".git", ".venv", "__pycache__", ".pytest_cache", "out", "build", ".official", "docs"}
TEXT = {".py", ".md", ".txt", ".toml", ".yaml", ".sh", ""}


def repository_text_files() -> list[Path]:
    """The repository's own text files (a copy without .git too), but this one, whose patterns are no citations."""
    found = []
    for folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [name for name in subfolders if name not in SKIPPED and not name.endswith(".egg-info")]
        found += [Path(folder) / name for name in files if Path(name).suffix in TEXT]
    return sorted(path for path in found if path != Path(__file__).resolve())


def headings(doc: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in doc.read_text(encoding="utf-8").splitlines() if line.startswith("## ")]


def test_every_citation_names_a_docs_file_and_a_section_it_has():
    sections = {f"docs/{doc.name}": headings(doc) for doc in (REPO / "docs").glob("*.md")}
    sections["README.md"] = headings(REPO / "README.md")
    problems = []
    for path in repository_text_files():
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
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}" for path in repository_text_files()
             for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
             if OUTSIDE.search(line)]
    assert not found, "\n".join(found)
