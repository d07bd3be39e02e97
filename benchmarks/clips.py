"""Where the benchmarks find their clips: ``--videos DIR``, or the first folder of ``VIDEO_DIRS``.

The figures in RESULTS.md were measured on the team's real clips (CoTracker's demo clips and one
of Magma's: apple, bear, cat, paragliding, robot_pick_up_chip_bag), which live beside the
checkout in ``../shared/videos`` and are not the repository's to copy; ``.official/videos`` is
where a copy travels with a checkout to a GPU machine. Anywhere else, pass ``--videos``: any
folder of clips under those names, e.g. the tests' synthetic stand-ins from
``python tests/media.py DIR`` (figures on stand-ins measure the code, not those clips).
Only the standard library is imported, so a GPU machine's own Python reads this.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VIDEO_DIRS = (REPO.parent / "shared" / "videos", REPO / ".official" / "videos")


def find_videos(folder: Path | None = None) -> Path:
    """``folder`` when given, else the first of ``VIDEO_DIRS`` that exists."""
    if folder is not None:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"--videos {folder} is not a folder")
        return Path(folder)
    for candidate in VIDEO_DIRS:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"no clips in {' or '.join(map(str, VIDEO_DIRS))}; pass --videos DIR, a folder of apple.mp4, bear.mp4, "
        "cat.mp4, paragliding.mp4 (e.g. stand-ins written by `python tests/media.py DIR`)"
    )


def shown(folder: Path) -> str:
    """``folder`` as the results name it: relative to the checkout where it lies beside it."""
    folder = Path(folder).resolve()
    return f"../{folder.relative_to(REPO.parent)}" if folder.is_relative_to(REPO.parent) else str(folder)
