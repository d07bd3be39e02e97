"""Shared fixtures: the clips tests run pipelines on, and an isolated cache for rendered clips.

The team keeps real clips in ``../shared/videos`` beside the checkout; a clone of the repository
alone has none, and gets stand-ins rendered by ``media.py`` with the properties the tests rely on.
"""

from __future__ import annotations

import os
from pathlib import Path

import av  # noqa: F401  (before decord: see below)
import pytest

# PyAV must load its FFmpeg before decord loads the copy it bundles: with decord first, PyAV's
# libvpx encoder fails to open, and the SSv2 miniatures are VP9 .webm files the tests write
# (docs/environment.md §Video decoding and encoding).

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
def generated_videos(tmp_path_factory) -> Path:
    """Stand-ins for the real clips, under their names (``media.STAND_INS``), rendered once a session."""
    from media import write_stand_ins

    return write_stand_ins(tmp_path_factory.mktemp("stand-in-videos"))


@pytest.fixture(scope="session")
def video_clips(request) -> Path:
    """A folder of five clips: the real ones (``../shared/videos``) when the checkout has them beside it,
    else the generated stand-ins: camera motion, a portrait clip, a robot scene shorter than 24 frames."""
    if SHARED_VIDEOS.is_dir():
        return SHARED_VIDEOS
    return request.getfixturevalue("generated_videos")
