"""Miniature copies of the real datasets, in their native layouts, with the awkward rows real
metadata has: a missing video, a zero-length narration window, empty and non-UTF-8 text,
non-ASCII text that must be kept, and a path that escapes the root.

Videos are tiny real files (H.264 mp4, VP9 webm) so probing and decoding run the real code.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from magma_data.sources.sample import SceneSpec, MovingObject, render_scene, write_video

NOT_UTF8 = "@@NOT_UTF8@@"  # replaced by a raw 0xff byte when a metadata file is written


def frames(num_frames: int = 32, width: int = 64, height: int = 48, seed: int = 0,
           speed: float = 0.6, radius: float = 0.2) -> np.ndarray:
    """A small textured scene with one moving object (``speed`` px/frame, ``radius`` x height),
    so trackers have something to follow."""
    spec = SceneSpec(
        width=width, height=height, num_frames=num_frames, pan=(0.3, 0.0), seed=seed,
        objects=(MovingObject((-width / 6, 0), height * radius, (speed, speed / 3), (220, 40, 40)),),
    )
    return render_scene(spec).frames


def mp4(path: Path, num_frames: int = 32, fps: float = 4.0, width: int = 64, height: int = 48) -> Path:
    write_video(frames(num_frames, width, height), path, fps)
    return path


def webm(path: Path, num_frames: int = 24, fps: float = 12.0, width: int = 64, height: int = 48) -> Path:
    """VP9 in WebM, as SSv2 ships; the container stores no frame count."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="webm") as container:
        stream = container.add_stream("libvpx-vp9", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames(num_frames, width, height):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_json(path: Path, data) -> Path:
    """JSON as the official files are (UTF-8, non-ASCII unescaped); NOT_UTF8 becomes a 0xff byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, ensure_ascii=False, indent=1)
    path.write_bytes(text.encode("utf-8").replace(NOT_UTF8.encode(), b"\xff"))
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    path.write_bytes(path.read_bytes().replace(NOT_UTF8.encode(), b"\xff"))
    return path


# --- Ego4D ---------------------------------------------------------------------------------------

def _ego4d_video(uid: str, fps: float = 4.0, num_frames: int = 32, stereo: bool = False) -> dict:
    return {
        "video_uid": uid,
        "duration_sec": num_frames / fps,
        "is_stereo": stereo,
        "split_em": None, "split_fho": "train", "split_av": None,
        "video_metadata": {"fps": fps, "num_frames": num_frames, "width": 64, "height": 48,
                           "video_duration_sec": num_frames / fps},
    }


def _narrations(*items: tuple[float | None, str]) -> dict:
    return {"narrations": [
        {"timestamp_sec": t, "timestamp_frame": None if t is None else int(t * 4),
         "narration_text": text, "annotation_uid": "pass-uid"}
        for t, text in items
    ], "summaries": []}


def ego4d_miniature(root: Path, video_size: tuple[int, int] = (64, 48)) -> Path:
    """``v2/`` as the Ego4D CLI leaves it: ego4d.json, annotations/narration.json, full_scale/*.mp4."""
    for uid in ("vid-a", "vid-c", "vid-stereo"):
        mp4(root / "full_scale" / f"{uid}.mp4", width=video_size[0], height=video_size[1])
    write_json(root / "ego4d.json", {"date": "2022-01-01", "version": "v2", "videos": [
        _ego4d_video("vid-a"), _ego4d_video("vid-c"), _ego4d_video("vid-missing"),
        _ego4d_video("vid-stereo", stereo=True), _ego4d_video("../../outside"),
    ]})
    write_json(root / "annotations" / "narration.json", {
        "vid-a": {
            "narration_pass_1": _narrations((0.0, "#C C opens the drawer"),
                                            (4.0, "#C C puts the café cup on the 瓶 shelf")),
            "narration_pass_2": _narrations((1.0, "#C C opens a drawer")),
        },
        "vid-c": {"narration_pass_1": _narrations(
            (0.0, "#C C understands the recipe"),        # kept: "stand" inside a word
            (2.0, "#C C walks along the sidewalk"),      # dropped: Magma's idle-verb filter
            (3.0, ""),                                   # empty text
            (4.0, "#C C lifts a #unsure"),               # zero-length: next narration at the same time
            (4.0, "#C C wipes the sidewalk"),            # kept: "walk" inside a word
            (6.0, f"#C C opens the {NOT_UTF8} tap"),     # not UTF-8
            (None, "#C C dries the cup"),                # no timestamp
            (7.5, "#C C closes the tap"),                # 0.5 s to the video's end: under Magma's 1 s
        )},
        "vid-missing": {"narration_pass_1": _narrations((1.0, "#C C cuts a tomato"))},
        "vid-stereo": {"narration_pass_1": _narrations((1.0, "#C C cuts a tomato"))},
        "vid-unknown": {"narration_pass_1": _narrations((1.0, "#C C cuts a tomato"))},
        "../../outside": {"narration_pass_1": _narrations((1.0, "#C C cuts a tomato"))},
    })
    return root


def ego4d_filtered_only(root: Path) -> Path:
    """An Ego4D ``v2/`` whose only narrations that yield no window are dropped by Magma's rules."""
    mp4(root / "full_scale" / "vid-a.mp4", width=128, height=96)
    write_json(root / "ego4d.json", {"date": "2022-01-01", "version": "v2", "videos": [_ego4d_video("vid-a")]})
    write_json(root / "annotations" / "narration.json", {"vid-a": {"narration_pass_1": _narrations(
        (0.0, "#C C opens the drawer"),      # 0-4 s: one window of 16 frames at 4 fps
        (4.0, "#C C walks to the door"),     # Magma's idle-verb filter
        (7.5, "#C C closes the drawer"),     # 0.5 s to the video's end: under Magma's 1 s
    )}})
    return root


#: Where the second scene of ``ego4d_with_a_cut``'s video starts.
EGO4D_CUT = 40


def ego4d_with_a_cut(root: Path) -> Path:
    """An Ego4D ``v2/`` of one 30 fps video of two different scenes (a hard cut at ``EGO4D_CUT``) and
    one narration spanning all of it (96 frames, 3.2 s)."""
    scenes = np.concatenate([frames(EGO4D_CUT, 128, 96, seed=0), frames(96 - EGO4D_CUT, 128, 96, seed=7)])
    write_video(scenes, root / "full_scale" / "vid-cut.mp4", 30.0)
    write_json(root / "ego4d.json", {"date": "2022-01-01", "version": "v2",
                                     "videos": [_ego4d_video("vid-cut", fps=30.0, num_frames=96)]})
    write_json(root / "annotations" / "narration.json", {"vid-cut": {"narration_pass_1": _narrations(
        (0.0, "#C C opens the drawer"),
    )}})
    return root


# --- EPIC-KITCHENS-100 ---------------------------------------------------------------------------

EPIC_COLUMNS = ["narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
                "stop_timestamp", "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun",
                "noun_class", "all_nouns", "all_noun_classes"]


def _epic_row(nid, participant, video, start, stop, narration, start_frame=0, stop_frame=0):
    verb, _, noun = narration.partition(" ")
    return [nid, participant, video, start, start, stop, start_frame, stop_frame, narration, verb, 0,
            noun, 0, f"['{noun}']", "[0]"]


def epic_miniature(root: Path) -> Path:
    """Downloader output plus the annotations clone; two native frame rates (4 and 8 fps)."""
    mp4(root / "EPIC-KITCHENS" / "P01" / "videos" / "P01_01.MP4", num_frames=32, fps=4.0)
    mp4(root / "EPIC-KITCHENS" / "P02" / "videos" / "P02_101.MP4", num_frames=32, fps=8.0)
    notes = root / "epic-kitchens-100-annotations"
    write_csv(notes / "EPIC_100_video_info.csv", ["video_id", "duration", "fps", "resolution"], [
        ["P01_01", 8.0, 4.0, "64x48"], ["P02_101", 4.0, 8.0, "64x48"], ["P03_01", 8.0, 59.94, "1920x1080"],
    ])
    # frame columns count ~60 fps RGB dumps, as in the real CSVs: the reader must ignore them
    write_csv(notes / "EPIC_100_train.csv", EPIC_COLUMNS, [
        _epic_row("P01_01_0", "P01", "P01_01", "00:00:00.00", "00:00:04.00", "open drawer", 1, 240),
        _epic_row("P01_01_1", "P01", "P01_01", "00:00:04.50", "00:00:04.50", "take cup", 270, 270),
        _epic_row("P01_01_2", "P01", "P01_01", "00:00:05.00", "00:00:06.00", "", 300, 360),
        _epic_row("P01_01_3", "P01", "P01_01", "00:00:04.00", "00:00:08.00", "pour café into 瓶", 240, 480),
        _epic_row("P01_01_4", "P01", "P01_01", "00:00:01.00", "00:00:0x", "wash cup"),
        _epic_row("P03_01_0", "P03", "P03_01", "00:00:01.00", "00:00:03.00", "cut tomato"),
        _epic_row("P09_01_0", "P09", "P09_01", "00:00:01.00", "00:00:03.00", "cut onion"),
        _epic_row("P01_01_5", "../../..", "P01_01", "00:00:01.00", "00:00:03.00", "cut onion"),
    ])
    write_csv(notes / "EPIC_100_validation.csv", EPIC_COLUMNS, [
        _epic_row("P02_101_0", "P02", "P02_101", "00:00:00.50", "00:00:03.50", "stir pot", 30, 210),
        _epic_row("P02_101_1", "P02", "P02_101", "00:00:01.00", "00:00:02.00", f"stir {NOT_UTF8} pot"),
    ])
    return root


# --- Something-Something v2 ----------------------------------------------------------------------

def ssv2_miniature(root: Path) -> Path:
    for video_id in ("1001", "1002", "1003", "1005", "1006"):
        webm(root / "20bn-something-something-v2" / f"{video_id}.webm")
    write_json(root / "something-something-v2-labels.json", {
        "Putting something on a surface": "0", "Moving something and something closer to each other": "1",
        "Holding something": "2",
    })
    write_json(root / "something-something-v2-train.json", [
        {"id": "1001", "label": "putting a cup on a surface", "template": "Putting [something] on a surface",
         "placeholders": ["a cup"]},
        {"id": "1002", "label": "moving café cup and 瓶 closer to each other",
         "template": "Moving [something] and [something] closer to each other", "placeholders": ["café cup", "瓶"]},
        {"id": "1004", "label": "holding a pen", "template": "Holding [something]", "placeholders": ["a pen"]},
        {"id": "../../1001", "label": "holding a pen", "template": "Holding [something]", "placeholders": ["a pen"]},
        {"id": "1005", "label": "juggling", "template": "Juggling [something]", "placeholders": ["balls"]},
    ])
    write_json(root / "something-something-v2-validation.json", [
        {"id": "1003", "label": "holding", "template": "Holding [something]", "placeholders": [NOT_UTF8]},
        {"id": "1006", "label": "", "template": "Holding [something]", "placeholders": []},
    ])
    return root
