"""A miniature of Magma's released traces (MagmaAI/Magma-Video-ToM) in its schema, written with
``datasets`` ``save_to_disk`` as the release is, and the user's own videos it was made from.

The videos: an Ego4D-style full video ``<uid>.mp4`` (8 s at 4 fps) whose segments the records
name as Magma does (``<uid>/start_{s}___end_{e}___...``), a segment that is its own file, and an
SSv2 clip; one record names an Ego4D video the user does not have, one asks for frames past its
video's end. Traces are in pixels of the frames resized to 512 high (682 x 512 for the 64 x 48
videos): a 15 x 15 grid, eight points of which move 8 px a frame to the right.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from datasets import Dataset, Features, List, Value

from source_fixtures import mp4

UID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
MISSING_UID = "ffffffff-0000-4000-8000-000000000000"
FPS, FRAMES, WIDTH, HEIGHT = 4.0, 32, 64, 48
TRACED = (682, 512)  # int(64 * 512 / 48), 512
T, GRID = 16, 15
MOVING = np.arange(8) * GRID  # the grid points that move: the first column's top eight

FEATURES = Features({
    "dataset_name": Value("string"), "video_name": Value("string"), "task_string": Value("string"),
    "trace": List(List(List(Value("float32")))), "trace_visibility": List(List(Value("bool"))),
    "frame_index": Value("int64"),
})

#: (folder, dataset_name, video_name, task, frame_index) per record, in order
RECORDS = (
    ("ego4d", "ego4d", f"{UID}/start_2.0___end_5.0___narr_3", "the person opens the drawer", 0),
    ("ego4d", "ego4d", f"{UID}_start_1.0___end_3.0___part_0", "the person picks up a cup", 2),
    ("ego4d", "ego4d", f"{MISSING_UID}/start_0.0___end_2.0___narr_0", "the person washes a plate", 0),
    ("ego4d", "ego4d", f"{UID}/start_6.0___end_8.0___narr_9", "the person closes the drawer", 4),  # past the end
    ("ego4d", "ego4d", "segments/clip_a", "the person stirs the pot", 1),  # the segment is its own file
    ("sthv2", "sthv2", "12345", "Pushing a cup from left to right", 3),
)


def released_trace(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """[T, 225, 2] float32 in 682 x 512 pixels and [T, 225] visibility: a grid, eight points moving right."""
    xs = np.linspace(TRACED[0] / 64, TRACED[0] - TRACED[0] / 64, GRID)
    ys = np.linspace(TRACED[0] / 64, TRACED[1] - TRACED[0] / 64, GRID)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    trace = np.repeat(grid[None], T, axis=0).astype(np.float32)
    trace[:, MOVING, 0] += (8.0 + seed) * np.arange(T)[:, None]
    visibility = np.ones((T, GRID * GRID), bool)
    visibility[T // 2:, -1] = False  # one point lost halfway
    return trace, visibility


def release_miniature(root: Path) -> tuple[Path, Path]:
    """(the release folder with ego4d/ and sthv2/, the folder of the user's videos)."""
    release, videos = root / "Magma-Video-ToM", root / "videos"
    mp4(videos / "ego4d" / f"{UID}.mp4", num_frames=FRAMES, fps=FPS, width=WIDTH, height=HEIGHT)
    mp4(videos / "segments" / "clip_a.mp4", num_frames=20, fps=FPS, width=WIDTH, height=HEIGHT)
    mp4(videos / "ssv2" / "12345.mp4", num_frames=24, fps=12.0, width=WIDTH, height=HEIGHT)
    by_folder: dict[str, list[dict]] = {}
    for seed, (folder, dataset, video_name, task, frame_index) in enumerate(RECORDS):
        trace, visibility = released_trace(seed)
        by_folder.setdefault(folder, []).append({
            "dataset_name": dataset, "video_name": video_name, "task_string": task, "trace": trace.tolist(),
            "trace_visibility": visibility.tolist(), "frame_index": frame_index})
    for folder, records in by_folder.items():
        Dataset.from_list(records, features=FEATURES).save_to_disk(str(release / folder))
    return release, videos
