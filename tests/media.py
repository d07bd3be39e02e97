"""Stand-ins for the team's real clips, made by the tests: the media a clone of the repository alone has.

The team keeps five real clips in ``../shared/videos`` beside the checkout (CoTracker's demo clips
and a clip of Magma's), which are not the repository's to copy. Where they are absent, the tests
run on these: synthetic scenes with the properties the tests rely on, under the same names, at the
real clips' sizes, frame rates and lengths:

- ``apple.mp4`` (1296x720, 10 fps, 50 frames): the camera moves around a still object (pan and roll);
- ``bear.mp4`` (854x480, 30 fps, 82 frames): the camera pans to follow a moving object;
- ``cat.mp4`` (368x480, portrait, 20 fps, 87 frames): a small handheld drift around a moving object;
- ``paragliding.mp4`` (854x480, 30 fps, 70 frames): strong camera motion (fast pan and zoom);
- ``robot_pick_up_chip_bag.mp4`` (320x256, 10 fps, 19 frames, fewer than one 24-frame window): a
  still camera on a moving gripper and a bag, with numbered red marks drawn on it as Magma draws them.

They are rendered with the sample source's scene renderer and encoded as H.264 with PyAV, as the
sample source makes its clips, so they hold nothing of anyone else's (no licence of their own).
``python tests/media.py DIR`` writes them to DIR (benchmarks can take them as ``--videos DIR``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from magma_data.sources.sample import MovingObject, SceneSpec, render_scene, write_video
from magma_data.stages.render import draw_marks, mark_font

#: file name -> scene, for each of ../shared/videos' clips
STAND_INS: dict[str, SceneSpec] = {
    "apple.mp4": SceneSpec(width=1296, height=720, num_frames=50, fps=10.0, pan=(5.0, 0.5), roll_deg=0.1,
                           objects=(MovingObject((60, 20), 120, (0.0, 0.0), (200, 40, 40)),), seed=11),
    "bear.mp4": SceneSpec(width=854, height=480, num_frames=82, fps=30.0, pan=(3.0, 0.0),
                          objects=(MovingObject((-40, 60), 70, (3.0, 0.2), (120, 80, 40)),), seed=12),
    "cat.mp4": SceneSpec(width=368, height=480, num_frames=87, fps=20.0, pan=(0.4, -0.3), roll_deg=0.03,
                         objects=(MovingObject((0, 40), 60, (-0.8, 1.2), (230, 200, 170)),), seed=13),
    "paragliding.mp4": SceneSpec(width=854, height=480, num_frames=70, fps=30.0, pan=(8.0, -2.0), zoom=1.004,
                                 objects=(MovingObject((100, -120), 40, (6.0, -1.0), (240, 200, 30), "box"),),
                                 seed=14),
    "robot_pick_up_chip_bag.mp4": SceneSpec(width=320, height=256, num_frames=19, fps=10.0,
                                            objects=(MovingObject((-60, -50), 28, (3.0, 2.5), (90, 90, 100), "box"),
                                                     MovingObject((40, 40), 30, (0.0, 0.0), (40, 160, 220))),
                                            seed=15),
}
#: Where Magma-style marks are drawn in the robot stand-in (x, y in its pixels), as its visualisation shows them.
ROBOT_MARKS = np.array([[100, 78], [200, 168], [250, 60], [60, 200]], np.float32)


def write_stand_ins(folder: Path) -> Path:
    """Every stand-in clip in ``folder`` (kept when already there); returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, spec in STAND_INS.items():
        path = folder / name
        if path.exists():
            continue
        frames = render_scene(spec).frames
        if name.startswith("robot"):
            font = mark_font(spec.width)
            frames = np.stack([np.asarray(draw_marks(Image.fromarray(frame), np.arange(1, len(ROBOT_MARKS) + 1),
                                                     ROBOT_MARKS, font)) for frame in frames])
        write_video(frames, path, spec.fps)
    return folder


def joined_video(parts: list[tuple[Path, int, int]], output: Path) -> Path:
    """Frames ``[start, end)`` of each ``(video, start, end)`` one after the other, as one H.264 file at
    the first video's size and rate: a hard cut at every join (``end`` None: to the video's end)."""
    import av
    import cv2

    frames, size, fps = [], None, None
    for path, start, end in parts:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = fps or float(stream.average_rate)
            decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        taken = decoded[start:end]
        assert len(taken) == (end if end is not None else len(decoded)) - start, f"{path} is too short for {parts}"
        size = size or (taken[0].shape[1], taken[0].shape[0])
        frames += [cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in taken]
    write_video(np.stack(frames), output, fps=fps)
    return output


#: ``shaky_join_video``: the frames of the first video a hand-held camera jolts (28, held to 31), then shakes
#: (32 to 38), and the frame at which the second video starts.
JOLT, SHAKE, JOIN = (28, 32), (32, 39), 45


def shaky_join_video(first: Path, second: Path, output: Path) -> Path:
    """``first``'s frames 0-44, shaken as a hand-held camera shakes a few frames before the join, then all of
    ``second``'s, as one H.264 file at ``first``'s size and rate.

    A shaken frame is zoomed in by 25 %, moved by 8 % of the frame's size and darkened to 40 % (an exposure
    swing); frames 28-31 hold the jolt, 32-38 alternate between shaken and steady, 39-44 are steady again.
    PySceneDetect's content score is over its threshold 27 at 28 and at every frame from 32 to 38 (the real
    clips and the stand-ins alike: 33-35 and 57-59), under 10 elsewhere, and about 51 at the join.
    """
    import av
    import cv2

    def frames_of(path: Path) -> list[np.ndarray]:
        with av.open(str(path)) as container:
            return [frame.to_ndarray(format="rgb24") for frame in container.decode(container.streams.video[0])]

    def shaken(frame: np.ndarray) -> np.ndarray:
        height, width = frame.shape[:2]
        zoom, shift = 1.25, 0.08
        matrix = np.float32([[zoom, 0, (1 - zoom) * width / 2 + shift * width],
                             [0, zoom, (1 - zoom) * height / 2 + shift * height]])
        return (cv2.warpAffine(frame, matrix, (width, height), borderMode=cv2.BORDER_REFLECT) * 0.4).astype(np.uint8)

    with av.open(str(first)) as container:
        fps = float(container.streams.video[0].average_rate)
    steady = frames_of(first)[:JOIN]
    height, width = steady[0].shape[:2]
    frames = [shaken(frame) if JOLT[0] <= index < JOLT[1] or (SHAKE[0] <= index < SHAKE[1] and index % 2) else frame
              for index, frame in enumerate(steady)]
    frames += [cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA) for frame in frames_of(second)]
    write_video(np.stack(frames), output, fps=fps)
    return output


#: Where ``curation_folder``'s joined clip cuts: bear frames 0-49, paragliding frames 0-19, bear frames 50-81.
CUTS = (50, 70)


def curation_folder(videos: Path, root: Path) -> Path:
    """A folder source for the curation rules, from ``videos`` (the real clips or the stand-ins): the
    joined clip with hard cuts at ``CUTS`` and its text, a cat clip with text, an apple clip without."""
    import shutil

    root.mkdir(parents=True, exist_ok=True)
    joined_video([(videos / "bear.mp4", 0, CUTS[0]), (videos / "paragliding.mp4", 0, CUTS[1] - CUTS[0]),
                  (videos / "bear.mp4", CUTS[0], None)], root / "joined.mp4")
    (root / "joined.txt").write_text("a bear walks over the rocks, then a paraglider flies")
    shutil.copy(videos / "cat.mp4", root / "cat.mp4")
    (root / "cat.txt").write_text("a cat looks around")
    shutil.copy(videos / "apple.mp4", root / "apple.mp4")  # no text
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/media.py DIR")
    print(write_stand_ins(Path(sys.argv[1])))
