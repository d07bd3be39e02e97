"""Robot frames: read a robot window's frames from its episode, the robot twin of ``decode``.

The source reads them (``RobotSource.frames``: Open-X RLDS decodes only the window's JPEG/PNG
images of an episode it read once); the stage stretches them to a square of ``height`` pixels as
Magma's robot data is (its loader works on the 512x512 frame: the ``oxe`` manifest's default, see
there).
"""

from __future__ import annotations

import cv2
import numpy as np

from magma_data.sources.base import video_file
from magma_data.sources.robot import EpisodeAddress, RobotSource
from magma_data.stages.base import Row, Stage
from magma_data.stages.decode import FRAMES, IMAGE_HEIGHT, IMAGE_WIDTH, DecodeConfig


class RobotFramesStage(Stage):
    """Reads a robot window's frames through its source as squares of ``config.height`` pixels: the decode stage's columns."""

    name = "robot_frames"
    columns = (FRAMES, IMAGE_WIDTH, IMAGE_HEIGHT)

    def __init__(self, config: DecodeConfig, source: RobotSource | None):
        """``source``: the reader the windows were planned from; None where the stages are only listed (columns)."""
        self.config, self.source = config, source

    def __call__(self, row: Row) -> Row:
        if self.source is None:
            raise RuntimeError("the robot frames stage was made without its source; pass the RobotSource the windows "
                               "were planned from")
        # rows name the dataset folder relative to the source's root (video_path)
        dataset_path = str(video_file(str(row["video_path"]), self.source.video_roots()))
        episode = EpisodeAddress(dataset_path, str(row["split"]), int(row["episode_index"]), str(row["image_key"]))
        size = self.config.height
        frames = np.stack([_square(frame, size) for frame in self.source.frames(episode, np.asarray(row["frame_indices"]))])
        return {"frames": frames, "image_width": np.int32(size), "image_height": np.int32(size)}


def _square(image: np.ndarray, size: int) -> np.ndarray:
    """Stretch to ``size`` x ``size`` (Magma resizes robot frames without keeping the aspect)."""
    if image.shape[:2] == (size, size):
        return image
    shrink = size < max(image.shape[:2])
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
