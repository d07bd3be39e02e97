"""Open-X-Embodiment read in place: RLDS episodes, each a unit of (dataset, episode, step) windows
(docs/sources.md §Open-X-Embodiment).

Layout (as ``gsutil -m cp -r gs://gresearch/robotics/<dataset>`` leaves it; ``--root`` holds the
dataset folders, or is one dataset's version folder)::

    <dataset>/<version>/dataset_info.json, features.json, <dataset>-train.tfrecord-00000-of-00064 ...

Episodes are not video files, so this source is a ``RobotSource`` (``magma_data.sources.robot``):
it yields ``RobotEpisode`` units, the episode's address in the RLDS dataset, its instruction, its
length, the camera to track and its actions after OpenVLA's standardisation of its dataset
(``magma_data.sources.openvla``). No frame is kept here; ``frames`` reads a window's frames later,
on a worker (the robot frames stage). ``dataset_statistics`` reads every episode of a dataset for
its action statistics. Reading needs TensorFlow and tensorflow-datasets (``pip install magma-data[oxe]``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from magma_data.sources.base import ClipProblem, PathEscapesRoot, resolve_inside
from magma_data.sources.openvla import (
    ActionLayoutError,
    DatasetStatistics,
    rlds_fingerprint,
    standardization,
    standardize,
)
from magma_data.sources.robot import EpisodeAddress, EpisodeUnreadable, RobotEpisode, RobotSource

#: Magma's primary camera per dataset of the oxe_magic_soup mixture (docs/magma-data-format.md §Open-X mixture); others use "image".
PRIMARY_IMAGE_KEYS = {
    "bridge_orig": "image_0",
    "bridge_dataset": "image_0",
    "taco_play": "rgb_static",
    "roboturk": "front_rgb",
    "viola": "agentview_rgb",
    "language_table": "rgb",
}

#: Where datasets keep the instruction, first match wins (fractal and kuka keep it in the observation,
#: language_table as Unicode code points padded with zeros).
INSTRUCTION_KEYS = ("language_instruction", "observation/natural_language_instruction", "observation/instruction")

MISSING_EXTRA = (
    "reading Open-X-Embodiment (RLDS TFRecord) needs TensorFlow and tensorflow-datasets; "
    "install them with `pip install 'magma-data[oxe]'`"
)


def import_tfds():
    """tensorflow_datasets with TensorFlow, or an ImportError that says how to install them."""
    try:
        import tensorflow as tf  # noqa: F401  (TFRecord reading needs the real TensorFlow)
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(MISSING_EXTRA) from error
    tf.config.set_visible_devices([], "GPU")  # the GPU belongs to the tracker, never to the reader
    return tfds


def _lookup(nested: Mapping, path: str):
    for part in path.split("/"):
        if not isinstance(nested, Mapping) or part not in nested:
            return None
        nested = nested[part]
    return nested


class OpenXSource(RobotSource):
    """RLDS episodes of the Open-X datasets under ``root``; see the module docstring."""

    def __init__(
        self,
        root: Path,
        name: str,
        datasets: Sequence[str] = (),
        splits: Sequence[str] = ("train",),
        image_keys: Mapping[str, str] = PRIMARY_IMAGE_KEYS,
        default_image_key: str = "image",
        no_tom_datasets: Sequence[str] = ("berkeley_cable_routing", "kuka"),
        standard_datasets: Sequence[str] = (),
        max_episodes: int | None = None,
    ):
        """
        Args:
            root: folder of ``<dataset>/<version>/`` folders, or one such version folder.
            name: the source's name (its manifest's); it begins every unit id.
            datasets: dataset folder names to read; empty = every dataset found.
            splits: RLDS splits to read, when the dataset has them.
            image_keys: camera to track per dataset; ``default_image_key`` for the rest.
            no_tom_datasets: datasets whose episodes get the action turn only (as in Magma).
            standard_datasets: datasets outside OpenVLA's registry whose actions already follow its
                convention (7-D EEF deltas, gripper 1 = open, 0 = closed), taken as they are.
            max_episodes: read at most this many episodes per dataset and split (quick looks); the
                action statistics still cover every episode.
        """
        self.root = Path(root).resolve()
        self.name = name
        self.datasets = tuple(datasets)
        self.splits = tuple(splits)
        self.image_keys = dict(image_keys)
        self.default_image_key = default_image_key
        self.no_tom_datasets = set(no_tom_datasets)
        self.standard_datasets = frozenset(standard_datasets)
        self.max_episodes = max_episodes
        self._images = _EpisodeImages()
        if not self.root.is_dir():
            raise FileNotFoundError(f"--root {self.root} is not a directory; point it at the Open-X download")

    def builder_dirs(self) -> list[tuple[str, Path | ClipProblem]]:
        """(dataset name, its newest version folder), sorted by name; the root itself if it is one."""
        if (self.root / "dataset_info.json").is_file():
            return [(self.root.parent.name, self.root)]
        found = []
        names = self.datasets or sorted(p.name for p in self.root.iterdir() if p.is_dir())
        for name in names:
            try:
                folder = resolve_inside(self.root, name)
            except PathEscapesRoot as error:
                found.append((name, ClipProblem(f"{self.name}/{name}", "PathEscapesRoot", str(error))))
                continue
            versions = sorted(
                (v for v in folder.glob("*/dataset_info.json")), key=lambda p: _version_key(p.parent.name)
            )
            if versions:
                found.append((name, versions[-1].parent))
            elif self.datasets:  # asked for by name, so its absence is a problem, not a stray folder
                found.append((name, ClipProblem(f"{self.name}/{name}", "DatasetMissing",
                                                f"{folder} has no <version>/dataset_info.json; download the "
                                                f"dataset (gsutil -m cp -r gs://gresearch/robotics/{name} ...)")))
        if not found:
            raise FileNotFoundError(
                f"no RLDS dataset under {self.root} (expected <dataset>/<version>/dataset_info.json); "
                "point --root at the folder holding the Open-X dataset folders"
            )
        return found

    def clips(self) -> Iterator[RobotEpisode | ClipProblem]:
        """Every episode of every dataset and split, in a stable order (the source protocol's method)."""
        tfds = import_tfds()
        for name, folder in self.builder_dirs():
            if isinstance(folder, ClipProblem):
                yield folder
                continue
            yield from self._dataset_episodes(tfds, name, folder)

    def _dataset_episodes(self, tfds, name: str, folder: Path) -> Iterator[RobotEpisode | ClipProblem]:
        unit = f"{self.name}/{name}"
        try:
            standardization(name, self.standard_datasets)
        except ValueError as error:
            yield ClipProblem(unit, "DatasetNotSupported", str(error), str(folder))
            return
        try:
            builder = tfds.builder_from_directory(str(folder))
            steps = builder.info.features["steps"]
        except Exception as error:  # a broken or partial download must not stop the other datasets
            yield ClipProblem(unit, "DatasetUnreadable",
                              f"{folder}: tensorflow-datasets cannot open it ({type(error).__name__}: {error}); "
                              "re-download the dataset", str(folder))
            return
        image_key = self.image_keys.get(name, self.default_image_key)
        cameras = steps["observation"] if "observation" in steps.keys() else {}
        if image_key not in cameras.keys():
            images = [k for k, f in cameras.items() if isinstance(f, tfds.features.Image)]
            yield ClipProblem(unit, "ImageKeyMissing",
                              f"{name} has no observation/{image_key}; its cameras are {images}; set the reader "
                              f"option image_keys: {{{name}: <one of them>}}", str(folder))
            return
        shape = cameras[image_key].shape
        image_size = (int(shape[0]), int(shape[1])) if shape[0] and shape[1] else None
        for split, index, steps in _episode_steps(tfds, builder, self.splits, self.max_episodes):
            yield self._episode(name, folder, split, index, steps, image_key, image_size)

    def _episode(self, name, folder, split, index, steps, image_key, image_size):
        episode_id = f"{name}/{split}/{index:06d}"
        unit = f"{self.name}/{episode_id}"
        if steps is None:
            return ClipProblem(unit, "EmptyEpisode", f"episode {episode_id} has no steps", str(folder))
        try:
            standardized = standardize(name, steps, self.standard_datasets)
        except ActionLayoutError as error:
            return ClipProblem(unit, "ActionLayout",
                               f"{name}: {error}; OpenVLA's standardisation of {name} cannot read this episode "
                               "(is the dataset the mixture's version?)", str(folder))
        if not len(standardized.actions):
            return ClipProblem(unit, "EmptyEpisode", f"episode {episode_id} has no step left after {name}'s "
                                                     "standardisation", str(folder))
        instruction, problem = _instruction(steps, unit, str(folder))
        if problem:
            return problem
        return RobotEpisode(
            episode_id=episode_id, dataset=name, dataset_path=str(folder), split=split, episode_index=index,
            instruction=instruction, image_key=image_key, num_steps=len(standardized.actions),
            actions=standardized.actions, steps=standardized.steps, image_size=image_size,
            tom=name not in self.no_tom_datasets,
        )

    def frames(self, episode: EpisodeAddress, steps: np.ndarray) -> np.ndarray:
        """The camera images of ``steps`` (RLDS steps), decoded; an episode's windows arrive together,
        so the encoded images of the last episode read are kept."""
        encoded = self._images.of(episode)
        steps = np.asarray(steps)
        if steps.max() >= len(encoded):
            raise EpisodeUnreadable(f"episode has {len(encoded)} steps, the window wants step {steps.max()}; "
                                    "the dataset changed since planning: re-run the plan")
        return np.stack([_decode(encoded[i]) for i in steps])

    def builder_dir(self, dataset: str) -> Path:
        """The version folder the reader takes ``dataset`` from."""
        folders = {name: folder for name, folder in self.builder_dirs() if not isinstance(folder, ClipProblem)}
        if dataset not in folders:
            raise FileNotFoundError(f"no RLDS dataset {dataset!r} under {self.root}")
        return folders[dataset]

    def dataset_statistics(self, dataset: str) -> DatasetStatistics:
        """Action statistics over every episode of every split of ``dataset``, as OpenVLA computes them:
        after standardisation, episodes without instruction included, ``max_episodes`` ignored."""
        tfds = import_tfds()
        folder = self.builder_dir(dataset)
        builder = tfds.builder_from_directory(str(folder))
        episodes = []
        for _, _, steps in _episode_steps(tfds, builder, tuple(builder.info.splits), None):
            if steps is None:
                continue
            try:
                episodes.append(standardize(dataset, steps, self.standard_datasets).actions)
            except ActionLayoutError:  # its windows are error rows; it has no actions to count
                continue
        episodes = [actions for actions in episodes if len(actions)]
        if not episodes:
            raise ValueError(f"{dataset} has no episode with actions; nothing to compute its statistics from")
        return DatasetStatistics.of(episodes, self.fingerprint(dataset))

    def fingerprint(self, dataset: str) -> str:
        return rlds_fingerprint(self.builder_dir(dataset))


def _episode_steps(tfds, builder, splits, max_episodes: int | None):
    """(split, index, steps as NumPy arrays or None when empty) of each episode, images left encoded."""
    cameras = builder.info.features["steps"]["observation"]
    skip_images = {"steps": {"observation": {k: tfds.decode.SkipDecoding() for k, f in cameras.items()
                                             if isinstance(f, tfds.features.Image)}}}
    for split in splits:
        if split not in builder.info.splits:
            continue
        selection = split if max_episodes is None else f"{split}[:{max_episodes}]"
        dataset = builder.as_dataset(split=selection, shuffle_files=False, decoders=skip_images)
        for index, episode in enumerate(dataset):
            yield split, index, all_steps(episode["steps"])


class _EpisodeImages:
    """The encoded camera images of the last episode read, and the builders opened: a worker's cache,
    left behind when the source is pickled (TensorFlow's objects do not travel)."""

    def __init__(self):
        self.builders: dict[str, object] = {}
        self.episode: tuple[EpisodeAddress, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def of(self, episode: EpisodeAddress) -> np.ndarray:
        if self.episode is None or self.episode[0] != episode:
            self.episode = (episode, self._read(episode))
        return self.episode[1]

    def _read(self, episode: EpisodeAddress) -> np.ndarray:
        tfds = import_tfds()
        if episode.dataset_path not in self.builders:
            self.builders[episode.dataset_path] = tfds.builder_from_directory(episode.dataset_path)
        builder = self.builders[episode.dataset_path]
        cameras = builder.info.features["steps"]["observation"]
        skip = {"steps": {"observation": {k: tfds.decode.SkipDecoding() for k, f in cameras.items()
                                          if isinstance(f, tfds.features.Image)}}}
        index = episode.episode_index
        dataset = builder.as_dataset(split=f"{episode.split}[{index}:{index + 1}]", shuffle_files=False, decoders=skip)
        for stored in dataset:
            steps = all_steps(stored["steps"])
            if steps is None:
                break
            return np.asarray(steps["observation"][episode.image_key])
        raise EpisodeUnreadable(f"{episode.dataset_path} {episode.split}[{index}] has no steps; the dataset changed "
                                "since planning")


def _decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise EpisodeUnreadable("a step's image is not a readable JPEG/PNG; the episode is damaged")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def all_steps(steps_dataset) -> dict | None:
    """An episode's ``steps`` dataset as one dict of NumPy arrays with a leading step axis; None if empty."""
    import tensorflow as tf

    try:
        batched = steps_dataset.batch(1 << 30).get_single_element()
    except tf.errors.InvalidArgumentError:  # "Dataset was empty"
        return None
    return tf.nest.map_structure(lambda tensor: tensor.numpy(), batched)


def _instruction(steps, unit: str, where: str) -> tuple[str, ClipProblem | None]:
    """The episode's first non-empty instruction; a problem when there is none or it is not UTF-8."""
    for key in INSTRUCTION_KEYS:
        values = _lookup(steps, key)
        if values is None:
            continue
        values = np.asarray(values)
        if np.issubdtype(values.dtype, np.integer):  # code points, zero-padded (language_table)
            values = np.array([_from_code_points(row) for row in values.reshape(len(values), -1)], dtype=object)
        for raw in values.reshape(-1):
            raw = raw if isinstance(raw, bytes) else bytes(raw)
            if not raw.strip():
                continue
            try:
                return raw.decode("utf-8").strip(), None
            except UnicodeDecodeError:
                return "", ClipProblem(unit, "TextNotUtf8",
                                       f"instruction {raw!r:.120} is not UTF-8; the dataset's text is damaged", where)
    return "", ClipProblem(unit, "EpisodeWithoutInstruction",
                           f"no step has a non-empty {' or '.join(INSTRUCTION_KEYS)}; Magma skips unlabeled "
                           "episodes (skip_unlabeled)", where)


def _from_code_points(points: np.ndarray) -> bytes:
    ends = np.flatnonzero(points == 0)
    return "".join(chr(int(c)) for c in points[: ends[0] if len(ends) else len(points)]).encode()


def _version_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else -1 for part in name.split("."))
