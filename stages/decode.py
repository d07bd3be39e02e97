"""Decode: read only the frames a window needs and resize them to the working height.

decord seeks straight to the window's frames; PyAV is the fallback for files decord cannot open
(AV1, some webm; docs/environment.md §Video decoding and encoding). Both return frames in display orientation: a phone video stored sideways with
a rotation in its container comes out upright, as a player shows it. Frames are resized to
``height`` pixels, aspect kept, with area averaging when shrinking. Decoded frames live only
until the track stage; rows downstream carry small things. Transient I/O errors are raised as
they are, so the stage runner retries them; anything else is a ``DecodeFailed`` naming both
backends' errors.

decord's C++ code and its bundled FFmpeg print to the process's stderr when a file is broken
("moov atom not found", "ERROR opening ..."), which no Python setting turns off; the same facts
reach the error rows through the exceptions. ``decord_reader`` therefore points file descriptor 2
at /dev/null while decord runs, unless the log shows INFO (``magma-data -v``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Literal

import cv2
import numpy as np
from annotated_types import Ge

from magma_data.sources.base import video_file
from magma_data.stages.base import TRANSIENT_ERRORS, Column, Row, Stage, StageError

#: A window's decoded frames and their size, as every frame reader (video, RLDS) adds them.
FRAMES = Column("frames", "uint8", ("T", "H", "W", 3), doc="RGB frames at the working height; dropped after tracking")
IMAGE_WIDTH = Column("image_width", "int32", doc="width of the working frames, image and som_image",
                     group="image size")
IMAGE_HEIGHT = Column("image_height", "int32", doc="height of the working frames, image and som_image",
                      group="image size")


@dataclass(frozen=True)
class DecodeConfig:
    height: Annotated[int, Ge(16)] = 512  # working height in pixels; width follows the aspect ratio (Magma: 512)
    backend: Literal["auto", "decord", "pyav"] = "auto"  # auto: decord, PyAV on failure


class DecodeFailed(StageError):
    pass


def resized_width(width: int, height: int, target_height: int) -> int:
    """Width at ``target_height`` with the aspect kept, rounded to an even number for video codecs."""
    return max(2, int(round(width * target_height / height / 2)) * 2)


def resize_frames(frames: np.ndarray, target_height: int) -> np.ndarray:
    """[T, H, W, 3] -> [T, target_height, W', 3]; area filter when shrinking, cubic when enlarging."""
    height, width = frames.shape[1:3]
    if height == target_height:
        return frames
    size = (resized_width(width, height, target_height), target_height)
    interpolation = cv2.INTER_AREA if target_height < height else cv2.INTER_CUBIC
    return np.stack([cv2.resize(frame, size, interpolation=interpolation) for frame in frames])


log = logging.getLogger(__name__)
_native_stderr_lock = threading.Lock()
_native_stderr_users = 0
_native_stderr_saved = -1


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 points at /dev/null inside; threads share one redirection (counted), so
    probes in a thread pool do not wait on each other. Python's own writes to stderr meanwhile are
    lost too, so the block should hold only the native call."""
    global _native_stderr_users, _native_stderr_saved
    if log.isEnabledFor(logging.INFO):
        yield
        return
    with _native_stderr_lock:
        if not _native_stderr_users:
            sys.stderr.flush()
            _native_stderr_saved = os.dup(2)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            os.close(null)
        _native_stderr_users += 1
    try:
        yield
    finally:
        with _native_stderr_lock:
            _native_stderr_users -= 1
            if not _native_stderr_users:
                os.dup2(_native_stderr_saved, 2)
                os.close(_native_stderr_saved)


def decord_reader(path: str):
    """decord's reader on ``path``, its C++ messages kept off the terminal."""
    import decord

    with native_stderr_silenced():
        return decord.VideoReader(path, num_threads=1)


class _DecordReader:
    def __init__(self, path: str):
        self.reader = decord_reader(path)

    def frames(self, indices: np.ndarray) -> np.ndarray:
        with native_stderr_silenced():
            return self.reader.get_batch(indices.tolist()).asnumpy()


class _PyAVReader:
    """Decodes forward from the first frame, counting frames, and keeps its place between windows.

    Frame numbers, as decord and the planner count them, stay right for variable frame rate
    video, where timestamps times the average rate would not. Windows of one video arrive in
    order, so going on from the last window costs nothing; a window behind the reader's place
    reopens the file. Frames are turned to display orientation, as decord returns them.
    """

    def __init__(self, path: str):
        self.path = path
        self.container = None
        self._reopen()

    def _reopen(self) -> None:
        import av

        self.close()
        self.container = av.open(self.path)
        self.decoded = self.container.decode(self.container.streams.video[0])
        self.position = 0  # number of the frame ``decoded`` yields next

    def frames(self, indices: np.ndarray) -> np.ndarray:
        wanted = {int(i) for i in indices}
        if min(wanted) < self.position:
            self._reopen()
        found: dict[int, np.ndarray] = {}
        last = max(wanted)
        while self.position <= last:
            frame = next(self.decoded, None)
            if frame is None:
                break
            if self.position in wanted:
                found[self.position] = _display_array(frame)
            self.position += 1
        missing = sorted(wanted - found.keys())
        if missing:
            raise DecodeFailed(f"frames {missing[:5]} not found in the stream (video ends early?)")
        return np.stack([found[int(i)] for i in indices])

    def close(self) -> None:
        if self.container is not None:
            self.container.close()


def _display_array(frame) -> np.ndarray:
    """RGB pixels as a player shows them: the container's rotation (display matrix) applied."""
    array = frame.to_ndarray(format="rgb24")
    rotation = int(getattr(frame, "rotation", 0) or 0)
    return np.ascontiguousarray(np.rot90(array, rotation // 90)) if rotation % 360 else array


class DecodeStage(Stage):
    """Decodes a window's frames from its video and resizes them to the working height."""

    name = "decode"
    columns = (FRAMES, IMAGE_WIDTH, IMAGE_HEIGHT)

    def __init__(self, config: DecodeConfig, roots: Sequence[str] = ()):
        """``roots``: the folders a row's relative ``video_path`` is under (``RunConfig.video_roots``)."""
        self.config, self.roots = config, tuple(roots)
        self._open: tuple[str, object] | None = None  # windows of one video arrive together

    def __call__(self, row: Row) -> Row:
        frames = self.read(row["video_path"], np.asarray(row["frame_indices"]))
        if frames.ndim != 4 or frames.shape[0] != len(row["frame_indices"]) or frames.shape[1] < 2:
            raise DecodeFailed(f"{row['video_path']}: decoded an unusable frame stack {frames.shape}")
        frames = resize_frames(frames, self.config.height)
        height, width = frames.shape[1:3]
        return {"frames": frames, "image_width": np.int32(width), "image_height": np.int32(height)}

    def read(self, path: str, indices: np.ndarray) -> np.ndarray:
        """Frames ``indices`` of ``path`` (a row's ``video_path``) at native size, [len(indices), H, W, 3] RGB."""
        backends = {"auto": ("decord", "pyav"), "decord": ("decord",), "pyav": ("pyav",)}[self.config.backend]
        file = str(video_file(path, self.roots))
        errors = []
        for backend in backends:
            try:
                return self._reader(file, backend).frames(indices)
            except TRANSIENT_ERRORS:
                self._drop()
                raise  # the file may be fine and its storage briefly not: the stage runner retries
            except Exception as error:  # try the next backend; report all if none works
                self._drop()
                errors.append(f"{backend}: {type(error).__name__}: {error}")
        raise DecodeFailed(f"{path}: cannot decode frames {indices[0]}..{indices[-1]} ({'; '.join(errors)})")

    def _reader(self, path: str, backend: str):
        key = f"{backend}:{path}"
        if self._open is None or self._open[0] != key:
            self._drop()
            self._open = (key, _DecordReader(path) if backend == "decord" else _PyAVReader(path))
        return self._open[1]

    def close(self) -> None:
        """Close the open video file, if any (a reader outside the pipeline, e.g. shot detection)."""
        self._drop()

    def _drop(self) -> None:
        """Forget the open reader, closing its file (PyAV holds one open per reader)."""
        if self._open is not None and hasattr(self._open[1], "close"):
            self._open[1].close()
        self._open = None
