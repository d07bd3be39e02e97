"""Shared fixtures: the sample clips beside the project, and an isolated cache for rendered clips."""

from __future__ import annotations

import os
from pathlib import Path

import av  # noqa: F401  (before decord: see below)
import pytest

# PyAV must load its FFmpeg before decord loads the copy it bundles: with decord first, PyAV's
# libvpx encoder fails to open, and the SSv2 miniatures are VP9 .webm files the tests write.

REPO = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = REPO.parent / "shared" / "videos"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Rendered sample clips go to a temporary cache, never the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    if not SHARED_VIDEOS.is_dir():
        pytest.fail(f"the sample clips are missing: expected them in {SHARED_VIDEOS} (../shared/videos)")
    return SHARED_VIDEOS
