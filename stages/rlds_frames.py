"""RLDS frames: read a robot window's frames from its episode, the robot twin of ``decode``.

Open-X images are stored encoded (JPEG/PNG) inside each episode's TFRecord example. The stage
reads the episode through tensorflow-datasets with image decoding skipped, decodes only the
window's frames with OpenCV, and stretches them to a square of ``height`` pixels as Magma's robot
data is (its loader works on the 512x512 frame: the ``oxe`` manifest's default, see there). Windows
of one episode arrive together, so the last episode read is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from magma_data.sources.base import video_file
from magma_data.sources.oxe import all_steps, import_tfds
from magma_data.stages.base import Row, Stage, StageError
from magma_data.stages.decode import FRAMES, IMAGE_HEIGHT, IMAGE_WIDTH, DecodeConfig


class EpisodeUnreadable(StageError):
    pass


class RldsFramesStage(Stage):
    """Reads a robot window's frames as squares of ``config.height`` pixels: the decode stage's columns."""

    name = "rlds_frames"
    columns = (FRAMES, IMAGE_WIDTH, IMAGE_HEIGHT)

    def __init__(self, config: DecodeConfig, roots: Sequence[str] = ()):
        """``roots``: the folder a row's relative ``video_path`` (its RLDS dataset folder) is under."""
        self.config, self.roots = config, tuple(roots)
        self._builders: dict[str, object] = {}
        self._episode: tuple[tuple, np.ndarray] | None = None  # (address, encoded images [T])

    def __call__(self, row: Row) -> Row:
        encoded = self._images(str(row["video_path"]), str(row["split"]), int(row["episode_index"]),
                               str(row["image_key"]))
        indices = np.asarray(row["frame_indices"])
        if indices.max() >= len(encoded):
            raise EpisodeUnreadable(f"episode has {len(encoded)} steps, the window wants step {indices.max()}; "
                                    "the dataset changed since planning: re-run the plan")
        size = self.config.height
        frames = np.stack([_square(_decode(encoded[i]), size) for i in indices])
        return {"frames": frames, "image_width": np.int32(size), "image_height": np.int32(size)}

    def _images(self, builder_dir: str, split: str, index: int, image_key: str) -> np.ndarray:
        address = (builder_dir, split, index, image_key)
        if self._episode is None or self._episode[0] != address:
            self._episode = (address, self._read_episode(*address))
        return self._episode[1]

    def _read_episode(self, builder_dir: str, split: str, index: int, image_key: str) -> np.ndarray:
        tfds = import_tfds()
        if builder_dir not in self._builders:
            self._builders[builder_dir] = tfds.builder_from_directory(str(video_file(builder_dir, self.roots)))
        builder = self._builders[builder_dir]
        cameras = builder.info.features["steps"]["observation"]
        skip = {"steps": {"observation": {k: tfds.decode.SkipDecoding() for k, f in cameras.items()
                                          if isinstance(f, tfds.features.Image)}}}
        dataset = builder.as_dataset(split=f"{split}[{index}:{index + 1}]", shuffle_files=False, decoders=skip)
        for episode in dataset:
            steps = all_steps(episode["steps"])
            if steps is None:
                break
            return np.asarray(steps["observation"][image_key])
        raise EpisodeUnreadable(f"{builder_dir} {split}[{index}] has no steps; the dataset changed since planning")


def _decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise EpisodeUnreadable("a step's image is not a readable JPEG/PNG; the episode is damaged")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _square(image: np.ndarray, size: int) -> np.ndarray:
    """Stretch to ``size`` x ``size`` (Magma resizes robot frames without keeping the aspect)."""
    if image.shape[:2] == (size, size):
        return image
    shrink = size < max(image.shape[:2])
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
