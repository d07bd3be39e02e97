"""The built-in ``sample`` source: small synthetic clips made on the fly, so the demo needs no data.

Each clip is a textured world seen by a camera that pans, zooms and rolls, with textured objects
that move on their own. Because the scene is synthetic, the generator also knows the truth
(which pixel belongs to which object, the camera's homography per frame); tests use that to
check that camera compensation and the moving/static split land where they should.

Clips are encoded as real H.264 files with PyAV so the demo runs the same decode path as real
data. They are written once into a cache folder (atomically) and reused.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from magma_data.sources.base import Clip, ClipProblem, Source

GENERATOR_VERSION = 2  # bump when the rendered pixels change, so caches are rebuilt


@dataclass(frozen=True)
class MovingObject:
    """A textured disc or box that moves in world coordinates, independent of the camera."""

    center: tuple[float, float]  # offset from the view centre at frame 0, world pixels
    radius: float
    velocity: tuple[float, float]  # world pixels per frame
    color: tuple[int, int, int]
    shape: str = "disc"  # "disc" | "box"


@dataclass(frozen=True)
class SceneSpec:
    width: int = 768
    height: int = 512
    num_frames: int = 48
    fps: float = 24.0
    pan: tuple[float, float] = (0.0, 0.0)  # camera translation, world pixels per frame
    zoom: float = 1.0  # scale factor per frame (1.01 = zoom in by 1 % a frame)
    roll_deg: float = 0.0  # rotation per frame
    objects: tuple[MovingObject, ...] = ()
    seed: int = 0


@dataclass
class SyntheticClip:
    frames: np.ndarray  # uint8 [T, H, W, 3] RGB
    labels: np.ndarray  # uint8 [T, H, W]: 0 background, k = objects[k - 1]
    world_to_image: np.ndarray  # float64 [T, 3, 3], the camera at each frame
    spec: SceneSpec = field(repr=False)


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Multi-scale coloured noise: corners at every scale, so point trackers have something to hold."""
    image = np.zeros((height, width, 3), np.float32)
    for cells, weight in ((6, 0.45), (24, 0.35), (96, 0.25), (384, 0.15)):
        grid = rng.random((max(2, height * cells // width), cells, 3)).astype(np.float32)
        image += weight * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    image -= image.min()
    image *= 255.0 / max(float(image.max()), 1e-6)
    return image.clip(0, 255).astype(np.uint8)


def _camera(spec: SceneSpec, t: int, world_size: tuple[int, int]) -> np.ndarray:
    """World -> image homography at frame ``t``: the view centre pans, then zoom and roll about it."""
    world_w, world_h = world_size
    cx = world_w / 2 + spec.pan[0] * t
    cy = world_h / 2 + spec.pan[1] * t
    scale = spec.zoom**t
    angle = np.deg2rad(spec.roll_deg * t)
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    to_view = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], np.float64)
    rotate_scale = np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]], np.float64)
    to_image = np.array([[1, 0, spec.width / 2], [0, 1, spec.height / 2], [0, 0, 1]], np.float64)
    return to_image @ rotate_scale @ to_view


def render_scene(spec: SceneSpec) -> SyntheticClip:
    """Render the clip and its ground truth (object label map and camera per frame)."""
    rng = np.random.default_rng(spec.seed)
    travel = np.abs(np.array(spec.pan)) * spec.num_frames
    world_w = int(spec.width * 1.6 + travel[0] * 2)
    world_h = int(spec.height * 1.6 + travel[1] * 2)
    world = _texture(rng, world_h, world_w)
    sprites = [_texture(rng, int(2 * o.radius), int(2 * o.radius)) for o in spec.objects]
    tints = [np.array(o.color, np.float32) for o in spec.objects]

    frames = np.empty((spec.num_frames, spec.height, spec.width, 3), np.uint8)
    labels = np.empty((spec.num_frames, spec.height, spec.width), np.uint8)
    cameras = np.empty((spec.num_frames, 3, 3), np.float64)
    for t in range(spec.num_frames):
        canvas = world.copy()
        label_canvas = np.zeros((world_h, world_w), np.uint8)
        for k, (obj, sprite, tint) in enumerate(zip(spec.objects, sprites, tints), start=1):
            cx = world_w / 2 + obj.center[0] + obj.velocity[0] * t
            cy = world_h / 2 + obj.center[1] + obj.velocity[1] * t
            _paste(canvas, label_canvas, sprite, tint, (cx, cy), obj, k)
        camera = _camera(spec, t, (world_w, world_h))
        size = (spec.width, spec.height)
        frames[t] = cv2.warpPerspective(canvas, camera, size, flags=cv2.INTER_LINEAR)
        labels[t] = cv2.warpPerspective(label_canvas, camera, size, flags=cv2.INTER_NEAREST)
        cameras[t] = camera
    return SyntheticClip(frames=frames, labels=labels, world_to_image=cameras, spec=spec)


def _paste(canvas, label_canvas, sprite, tint, center, obj: MovingObject, label: int) -> None:
    """Composite a tinted textured sprite into the world at ``center`` (sub-pixel via warpAffine)."""
    size = sprite.shape[0]
    shift = np.array([[1, 0, center[0] - size / 2], [0, 1, center[1] - size / 2]], np.float32)
    world_size = (canvas.shape[1], canvas.shape[0])
    shape_mask = np.zeros((size, size), np.uint8)
    if obj.shape == "box":
        shape_mask[:] = 1
    else:
        cv2.circle(shape_mask, (size // 2, size // 2), size // 2, 1, thickness=-1)
    mask = cv2.warpAffine(shape_mask, shift, world_size, flags=cv2.INTER_NEAREST) > 0
    coloured = (0.45 * sprite.astype(np.float32) + 0.55 * tint).clip(0, 255).astype(np.uint8)
    moved = cv2.warpAffine(coloured, shift, world_size, flags=cv2.INTER_LINEAR)
    canvas[mask] = moved[mask]
    label_canvas[mask] = label


#: libx264's options: one thread and no macroblock tree. With the tree (x264's default), the same
#: frames encoded twice in one process decoded differently (up to 34 grey levels), depending on
#: what the process had encoded before; without it, every encode of them is the same.
X264_OPTIONS = {"crf": "16", "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}


def write_video(frames: np.ndarray, path: Path, fps: float) -> None:
    """Encode RGB frames as H.264 (yuv420p) with PyAV, atomically (temporary name, then rename);
    the same frames give the same file, whatever the process encoded before."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with av.open(str(partial), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = X264_OPTIONS
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    partial.replace(path)


#: The demo's clips: (clip id, task, scene). Camera motion, independent objects, and one static shot.
SAMPLE_SCENES: tuple[tuple[str, str, SceneSpec], ...] = (
    (
        "pan_right_ball",
        "follow the red ball as the camera pans",
        SceneSpec(
            pan=(6.0, 0.0),
            objects=(MovingObject((-120, 40), 56, (3.5, -0.5), (220, 40, 40)),),
            seed=1,
        ),
    ),
    (
        "zoom_two_boxes",
        "slide the blue box left and lift the green box",
        SceneSpec(
            zoom=1.006,
            roll_deg=0.08,
            objects=(
                MovingObject((140, 60), 50, (-4.0, 0.0), (40, 80, 220), "box"),
                MovingObject((-160, -20), 44, (0.5, -3.0), (40, 200, 70), "box"),
            ),
            seed=2,
        ),
    ),
    (
        "static_camera_disc",
        "push the yellow disc down",
        SceneSpec(objects=(MovingObject((0, -80), 60, (1.0, 4.0), (230, 210, 40)),), seed=3),
    ),
    (
        "tilt_still_scene",
        "look around the table",
        SceneSpec(pan=(0.0, 3.0), roll_deg=-0.05, seed=4),
    ),
)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "magma-data" / f"sample-v{GENERATOR_VERSION}"


class SampleSource(Source):
    """Synthetic clips for the demo; ``root`` is where the rendered videos are cached, ``name`` the manifest's."""

    def __init__(self, root: Path | None, name: str):
        self.root = Path(root) if root else default_cache_dir()
        self.name = name

    def clips(self) -> Iterator[Clip | ClipProblem]:
        for clip_id, task, spec in SAMPLE_SCENES:
            path = self.root / f"{clip_id}.mp4"
            if not path.exists():
                write_video(render_scene(spec).frames, path, spec.fps)
            yield Clip(
                clip_id=clip_id,
                video_uid=clip_id,
                video_path=str(path),
                task=task,
                fps=spec.fps,
                num_frames=spec.num_frames,
            )
