"""Robot episodes, whatever their format: what the robot pipeline (``oxe_tom``) reads from a source.

A robot source yields ``RobotEpisode`` units (where the episode is, its instruction, its actions
after its dataset's standardisation and the steps they belong to), reads the camera frames of any
of an episode's steps on a worker (``frames``), and computes each dataset's action statistics
over all of its episodes (``dataset_statistics``, with a ``fingerprint`` that names the data they
came from, so stored statistics are reused only for the same data). Open-X RLDS
(``magma_data.sources.oxe``) is one implementation; another format is one reader module that
subclasses ``RobotSource`` and one manifest naming it with ``pipeline: oxe_tom``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from magma_data.sources.base import ClipProblem, Source
from magma_data.sources.openvla import DatasetStatistics


class EpisodeUnreadable(Exception):
    """The frames of an episode's steps cannot be read (the dataset changed since planning, or is damaged)."""


@dataclass(frozen=True)
class EpisodeAddress:
    """Where an episode's frames are: what a planned robot window's row carries to find them."""

    dataset_path: str  # the dataset's folder (rows: video_path)
    split: str
    episode_index: int  # position in the split
    image_key: str  # the camera


@dataclass(frozen=True, eq=False)
class RobotEpisode:
    """One episode: where it is, what it asks for, and what the robot did at each step.

    ``actions`` are after the dataset's standardisation, which may drop steps (Bridge drops its
    first and last): ``steps`` maps each of them to its step in the stored episode, where its
    frame is.
    """

    episode_id: str  # "<dataset>/<split>/<index:06d>", unique and stable within the source
    dataset: str
    dataset_path: str  # absolute, inside the source root
    split: str
    episode_index: int  # position in the split
    instruction: str
    image_key: str  # observation key of the camera to track
    num_steps: int  # standardised steps
    actions: np.ndarray = field(repr=False)  # float32 [num_steps, 7]: xyz delta, rotation delta, gripper (1 open)
    steps: np.ndarray = field(repr=False)  # int64 [num_steps]: each one's step in the stored episode
    image_size: tuple[int, int] | None = None  # (height, width) from the dataset's features, when fixed
    tom: bool = True  # False where Magma skips SoM/ToM (berkeley_cable_routing, kuka)

    @property
    def address(self) -> EpisodeAddress:
        return EpisodeAddress(self.dataset_path, self.split, self.episode_index, self.image_key)


@runtime_checkable
class RobotSource(Source, Protocol):
    """A source of robot episodes (see the module docstring). It travels to the workers that read
    frames, so it holds nothing that cannot be pickled but caches it rebuilds there."""

    unit_kind: ClassVar[str] = "episodes"

    def clips(self) -> Iterator[RobotEpisode | ClipProblem]:
        """Every episode of every dataset and split, in a stable order; problems as ``ClipProblem``."""
        ...

    def frames(self, episode: EpisodeAddress, steps: np.ndarray) -> np.ndarray:
        """RGB uint8 [len(steps), H, W, 3]: the camera frame of each of the episode's ``steps`` (steps
        of the stored episode, as ``RobotEpisode.steps`` numbers them); ``EpisodeUnreadable`` when
        they cannot be read."""
        ...

    def dataset_statistics(self, dataset: str) -> DatasetStatistics:
        """The action statistics over every episode of every split of ``dataset``, after standardisation."""
        ...

    def fingerprint(self, dataset: str) -> str:
        """Names the content of ``dataset``'s files (the statistics' ``fingerprint``)."""
        ...
