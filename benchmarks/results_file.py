"""benchmarks/RESULTS.md: one section per benchmark, replaced in place when the benchmark runs again."""

from __future__ import annotations

import subprocess
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def git_commit() -> str:
    """The commit being measured, so every figure names the code it came from."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def replace_section(title: str, body: str, path: Path = RESULTS) -> str:
    """Write ``## title`` + body into ``path``, replacing that section if it is there already."""
    section = f"## {title}\n\n{body.strip()}\n"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    heading = f"## {title}\n"
    if heading in text:
        head, _, rest = text.partition(heading)
        following = rest.find("\n## ")
        text = head + section + (rest[following:] if following >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
    return section


def append_to_section(title: str, block: str, intro: str = "", path: Path = RESULTS) -> None:
    """Add ``block`` (a ``###`` run of a benchmark) at the end of section ``## title``, made with ``intro``
    when absent, so that runs of one benchmark on several inputs stand together."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    heading = f"## {title}\n"
    if heading not in text:
        text = text.rstrip("\n") + f"\n\n{heading}\n" + (f"{intro.strip()}\n" if intro else "")
    start = text.index(heading) + len(heading)
    end = text.find("\n## ", start)
    end = len(text) if end == -1 else end + 1
    before, after = text[:end].rstrip("\n"), text[end:]
    path.write_text(f"{before}\n\n{block.strip()}\n" + (f"\n{after}" if after else ""))
