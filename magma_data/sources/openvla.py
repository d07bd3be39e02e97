"""OpenVLA's RLDS conventions for robot actions, in NumPy: per-dataset standardisation and BOUNDS_Q99.

Magma's robot targets come from OpenVLA's RLDS pipeline (``prismatic/vla/datasets/rlds``, copied
into Magma's ``data/openx/datasets/rlds``; docs/magma-data-format.md §Open-X mixture): each dataset of the ``oxe_magic_soup`` mixture has a
standardisation transform (``oxe/transforms.py``) that turns its steps into 7-D EEF actions
(xyz delta, rotation delta, gripper with 1 = open and 0 = closed); per-dataset statistics over
every episode of every split after that transform (``utils/data_utils.get_dataset_statistics``,
stored as ``dataset_statistics.json``); and BOUNDS_Q99 normalisation
``clip(2 (a - q01) / (q99 - q01 + 1e-8) - 1, -1, 1)`` on the dimensions of the mask (all but the
gripper), with dimensions whose minimum equals their maximum set to 0.

The transforms are rewritten here over NumPy steps (the reader decodes episodes without a
TensorFlow graph); each keeps OpenVLA's name, and the primitives (``rel2abs_gripper``,
``binarize_gripper``, ``invert_gripper``) follow OpenVLA's TensorFlow scans step for step.
Two mixture datasets convert quaternions with ``tensorflow_graphics`` and are refused
(``UNSUPPORTED``) rather than guessed at. A dataset outside the mixture whose actions already
follow the convention is taken as it is only when the user names it (reader option
``standard_datasets``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from magma_data.magma_text import ACTION_DIMENSIONS

#: OpenVLA's ``oxe_magic_soup`` mixture (``oxe/mixtures.py``), the robot data of Magma's pretraining.
OXE_MAGIC_SOUP = (
    "fractal20220817_data", "kuka", "bridge_orig", "taco_play", "jaco_play", "berkeley_cable_routing", "roboturk",
    "viola", "berkeley_autolab_ur5", "toto", "language_table", "stanford_hydra_dataset_converted_externally_to_rlds",
    "austin_buds_dataset_converted_externally_to_rlds", "nyu_franka_play_dataset_converted_externally_to_rlds",
    "furniture_bench_dataset_converted_externally_to_rlds", "ucsd_kitchen_dataset_converted_externally_to_rlds",
    "austin_sailor_dataset_converted_externally_to_rlds", "austin_sirius_dataset_converted_externally_to_rlds",
    "dlr_edan_shared_control_converted_externally_to_rlds", "iamlab_cmu_pickup_insert_converted_externally_to_rlds",
    "utaustin_mutex", "berkeley_fanuc_manipulation", "cmu_stretch",
)

#: Mixture datasets this reader does not standardise, and why.
UNSUPPORTED = {
    name: "its OpenVLA transform turns quaternion actions into Euler angles with tensorflow_graphics "
          "(euler.from_quaternion), whose convention is not reproduced here"
    for name in ("furniture_bench_dataset_converted_externally_to_rlds",
                 "iamlab_cmu_pickup_insert_converted_externally_to_rlds")
}

#: OpenVLA's action normalisation mask for EEF_POS actions: every dimension but the gripper.
NORMALIZATION_MASK = (True,) * 6 + (False,)


class ActionLayoutError(ValueError):
    """A dataset's steps do not have the layout its standardisation reads."""


@dataclass(frozen=True)
class Standardized:
    """An episode after its dataset's transform: 7-D actions, and the RLDS step each one belongs to."""

    actions: np.ndarray  # float32 [T', 7]
    steps: np.ndarray  # int64 [T']: index of each kept step in the RLDS episode


# -- OpenVLA's gripper primitives (utils/data_utils.py) --------------------------------------------

def rel2abs_gripper(actions: np.ndarray) -> np.ndarray:
    """Relative gripper actions (+1 close, -1 open, 0 keep) -> absolute (1 open, 0 closed).

    Before the first command the gripper is taken to be in the opposite state of that command
    (open when the episode never commands it), as OpenVLA assumes.
    """
    actions = np.asarray(actions, np.float64).reshape(-1)
    thresholded = np.where(actions < -0.1, 1, np.where(actions > 0.1, -1, 0))
    start = -thresholded[int(np.argmax(thresholded != 0))] if len(thresholded) else 0
    carry = start or 1
    absolute = np.empty(len(thresholded))
    for i, command in enumerate(thresholded):
        carry = command if command != 0 else carry
        absolute[i] = carry
    return (absolute / 2 + 0.5).astype(np.float32)


def binarize_gripper(actions: np.ndarray) -> np.ndarray:
    """Continuous gripper actions -> 0 / 1: values between 0.05 and 0.95 take the state reached after them."""
    actions = np.asarray(actions, np.float32).reshape(-1)
    opened, closed = actions > 0.95, actions < 0.05
    binary = np.empty(len(actions), np.float32)
    carry = actions[-1] if len(actions) else 0.0
    for i in reversed(range(len(actions))):
        if opened[i] or closed[i]:
            carry = float(opened[i])
        binary[i] = carry
    return binary


def invert_gripper(actions: np.ndarray) -> np.ndarray:
    return (1 - np.asarray(actions, np.float32)).astype(np.float32)


# -- per-dataset transforms (oxe/transforms.py) -----------------------------------------------------

def _column(value: np.ndarray) -> np.ndarray:
    """A per-step scalar or [T, 1] array as [T, 1] float32."""
    value = np.asarray(value, np.float32)
    return value.reshape(len(value), -1)[:, :1]


def _key(steps: Mapping, path: str) -> np.ndarray:
    node = steps
    for part in path.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            raise ActionLayoutError(f"the steps have no {path}")
        node = node[part]
    return np.asarray(node)


def _all(steps: Mapping, actions: np.ndarray) -> Standardized:
    return Standardized(np.asarray(actions, np.float32), np.arange(len(actions), dtype=np.int64))


def _world_rotation(steps: Mapping, gripper: np.ndarray) -> Standardized:
    return _all(steps, np.concatenate([_key(steps, "action/world_vector"), _key(steps, "action/rotation_delta"),
                                       gripper], axis=1))


def rt1(steps: Mapping) -> Standardized:
    """fractal20220817_data, kuka, berkeley_autolab_ur5: relative gripper made absolute."""
    return _world_rotation(steps, rel2abs_gripper(_key(steps, "action/gripper_closedness_action"))[:, None])


def jaco_play(steps: Mapping) -> Standardized:
    world = _key(steps, "action/world_vector")
    gripper = rel2abs_gripper(_key(steps, "action/gripper_closedness_action"))[:, None]
    return _all(steps, np.concatenate([world, np.zeros_like(world), gripper], axis=1))


def cable_routing(steps: Mapping) -> Standardized:
    world = _key(steps, "action/world_vector")
    return _world_rotation(steps, np.zeros((len(world), 1), np.float32))


def inverted_closedness(steps: Mapping) -> Standardized:
    """roboturk, viola: absolute closedness clipped to [0, 1] and inverted."""
    return _world_rotation(steps, invert_gripper(np.clip(_column(_key(steps, "action/gripper_closedness_action")), 0, 1)))


def toto(steps: Mapping) -> Standardized:
    return _world_rotation(steps, _column(_key(steps, "action/open_gripper")))


def taco_play(steps: Mapping) -> Standardized:
    action = _key(steps, "action/rel_actions_world").astype(np.float32)
    return _all(steps, np.concatenate([action[:, :6], np.clip(action[:, -1:], 0, 1)], axis=1))


def language_table(steps: Mapping) -> Standardized:
    action = _key(steps, "action").astype(np.float32)  # 2-D planar motion; the gripper stays open
    zeros = np.zeros_like(action)
    return _all(steps, np.concatenate([action, zeros, zeros, np.ones_like(action[:, :1])], axis=1))


def _tensor(steps: Mapping) -> np.ndarray:
    action = _key(steps, "action")
    if action.ndim != 2:
        raise ActionLayoutError(f"the actions are {action.shape}, expected [steps, dims]")
    return action.astype(np.float32)


def inverted_gripper(steps: Mapping) -> Standardized:
    """stanford_hydra, dlr_edan_shared_control: the last dimension inverted."""
    action = _tensor(steps)
    return _all(steps, np.concatenate([action[:, :6], invert_gripper(action[:, -1:])], axis=1))


def clipped_inverted_gripper(steps: Mapping) -> Standardized:
    """austin_buds, austin_sailor, austin_sirius, utaustin_mutex: the last dimension clipped to [0, 1] and inverted."""
    action = _tensor(steps)
    return _all(steps, np.concatenate([action[:, :6], invert_gripper(np.clip(action[:, -1:], 0, 1))], axis=1))


def nyu_franka_play(steps: Mapping) -> Standardized:
    action = _tensor(steps)
    return _all(steps, np.concatenate([action[:, -8:-2], np.clip(action[:, -2:-1], 0, 1)], axis=1))


def drop_last_dimension(steps: Mapping) -> Standardized:
    """ucsd_kitchen, cmu_stretch: an 8-D action whose last dimension is not the robot's."""
    return _all(steps, _tensor(steps)[:, :-1])


def berkeley_fanuc(steps: Mapping) -> Standardized:
    """No gripper action is stored: the gripper state, inverted, stands in for it."""
    return _all(steps, np.concatenate([_tensor(steps), invert_gripper(_key(steps, "observation/state")[:, 6:7])],
                                      axis=1))


def bridge_orig(steps: Mapping) -> Standardized:
    """Bridge V2 from the project website: the first step (an all-zero action) is dropped, the
    gripper binarised, and actions relabelled as the state change they reached, which drops the
    last step too."""
    action, state = _tensor(steps)[1:], _key(steps, "observation/state").astype(np.float32)[1:]
    if len(action) < 2:
        raise ActionLayoutError(f"a Bridge episode needs at least 3 steps, this one has {len(action) + 1}")
    gripper = binarize_gripper(action[:, -1])
    movement = state[1:, :6] - state[:-1, :6]
    return Standardized(np.concatenate([movement, gripper[:-1, None]], axis=1).astype(np.float32),
                        np.arange(1, len(action), dtype=np.int64))


def standard(steps: Mapping) -> Standardized:
    """A dataset already in the convention (named by the user): 7-D tensor actions as stored."""
    return _all(steps, _tensor(steps))


#: Dataset name -> its standardisation (OpenVLA's ``OXE_STANDARDIZATION_TRANSFORMS`` for the mixture).
STANDARDIZE: dict[str, Callable[[Mapping], Standardized]] = {
    "fractal20220817_data": rt1,
    "kuka": rt1,
    "bridge_orig": bridge_orig,
    "bridge_dataset": bridge_orig,  # the project website's name, before OpenVLA's renaming
    "taco_play": taco_play,
    "jaco_play": jaco_play,
    "berkeley_cable_routing": cable_routing,
    "roboturk": inverted_closedness,
    "viola": inverted_closedness,
    "berkeley_autolab_ur5": rt1,
    "toto": toto,
    "language_table": language_table,
    "stanford_hydra_dataset_converted_externally_to_rlds": inverted_gripper,
    "austin_buds_dataset_converted_externally_to_rlds": clipped_inverted_gripper,
    "nyu_franka_play_dataset_converted_externally_to_rlds": nyu_franka_play,
    "ucsd_kitchen_dataset_converted_externally_to_rlds": drop_last_dimension,
    "austin_sailor_dataset_converted_externally_to_rlds": clipped_inverted_gripper,
    "austin_sirius_dataset_converted_externally_to_rlds": clipped_inverted_gripper,
    "dlr_edan_shared_control_converted_externally_to_rlds": inverted_gripper,
    "utaustin_mutex": clipped_inverted_gripper,
    "berkeley_fanuc_manipulation": berkeley_fanuc,
    "cmu_stretch": drop_last_dimension,
}


def standardization(dataset: str, standard_datasets: frozenset[str] = frozenset()) -> Callable[[Mapping], Standardized]:
    """The transform of ``dataset``, or a ValueError that says why there is none and what to do."""
    if dataset in STANDARDIZE:
        return STANDARDIZE[dataset]
    if dataset in standard_datasets:
        return standard
    if dataset in UNSUPPORTED:
        raise ValueError(f"{dataset} is not supported: {UNSUPPORTED[dataset]}; leave it out with the reader "
                         "option datasets")
    raise ValueError(
        f"{dataset} has no OpenVLA standardisation; supported: {', '.join(sorted(STANDARDIZE))}. If its actions "
        "already are 7-D EEF deltas with the gripper 1 = open, 0 = closed, name it in the reader option "
        "standard_datasets; otherwise leave it out with the reader option datasets")


def standardize(dataset: str, steps: Mapping, standard_datasets: frozenset[str] = frozenset()) -> Standardized:
    """The episode's 7-D actions after its dataset's transform; ``ActionLayoutError`` when they are not 7-D."""
    result = standardization(dataset, standard_datasets)(steps)
    if result.actions.ndim != 2 or result.actions.shape[1] != ACTION_DIMENSIONS:
        raise ActionLayoutError(f"the transform gives actions of shape {result.actions.shape}, not [steps, 7]")
    return result


# -- statistics and BOUNDS_Q99 ---------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetStatistics:
    """One dataset's action statistics, as OpenVLA's ``dataset_statistics.json`` holds them.

    ``fingerprint`` names the RLDS files they were computed from, so a stored file is reused only
    for the same data.
    """

    mean: np.ndarray
    std: np.ndarray
    max: np.ndarray
    min: np.ndarray
    q01: np.ndarray
    q99: np.ndarray
    num_transitions: int
    num_trajectories: int
    fingerprint: str
    mask: tuple[bool, ...] = NORMALIZATION_MASK  # the dimensions ``normalize`` scales

    @classmethod
    def of(cls, episodes: list[np.ndarray], fingerprint: str, mask: tuple[bool, ...] = NORMALIZATION_MASK
           ) -> DatasetStatistics:
        """Over the standardised actions of every episode of the dataset."""
        actions = np.concatenate(episodes).astype(np.float32)
        return cls(actions.mean(0), actions.std(0), actions.max(0), actions.min(0),
                   np.quantile(actions, 0.01, axis=0), np.quantile(actions, 0.99, axis=0),
                   len(actions), len(episodes), fingerprint, tuple(mask))

    def normalize(self, action: np.ndarray) -> np.ndarray:
        """BOUNDS_Q99 where the mask says, the rest as it is; dimensions that never change are 0."""
        action = np.asarray(action, np.float64)
        scaled = np.clip(2 * (action - self.q01) / (self.q99 - self.q01 + 1e-8) - 1, -1, 1)
        normalized = np.where(np.asarray(self.mask), scaled, action)
        return np.where(self.min == self.max, 0.0, normalized).astype(np.float32)

    def to_json(self) -> dict:
        names = ("mean", "std", "max", "min", "q01", "q99")
        action = {name: np.asarray(getattr(self, name), np.float64).tolist() for name in names}
        return {"action": {**action, "mask": list(self.mask)}, "num_transitions": self.num_transitions,
                "num_trajectories": self.num_trajectories, "fingerprint": self.fingerprint}

    @classmethod
    def from_json(cls, data: dict) -> DatasetStatistics:
        action = data["action"]
        arrays = {name: np.asarray(action[name], np.float64) for name in ("mean", "std", "max", "min", "q01", "q99")}
        return cls(**arrays, num_transitions=int(data["num_transitions"]),
                   num_trajectories=int(data["num_trajectories"]), fingerprint=str(data["fingerprint"]),
                   mask=tuple(bool(m) for m in action["mask"]))


def rlds_fingerprint(builder_dir: Path) -> str:
    """Names an RLDS dataset's content: its metadata and the names and sizes of its record files."""
    digest = hashlib.sha256()
    for path in sorted(Path(builder_dir).iterdir()):
        if path.is_file():
            digest.update(f"{path.name}\x00{path.stat().st_size}\x00".encode())
            if path.suffix == ".json":
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


STATISTICS_FILE = "dataset_statistics.json"


class StatisticsFile:
    """Per-dataset statistics, computed once over all of a dataset's episodes and kept in ``path``.

    Entries are computed on first use (``compute(dataset)``), so a run that plans a few windows of
    one dataset reads only that dataset in full; an entry whose fingerprint no longer matches the
    data is computed again. Every entry carries the run's normalisation ``mask``, as OpenVLA's
    file does. ``path`` None keeps them in memory (``magma-data check``).
    """

    def __init__(self, path: Path | None, compute: Callable[[str], DatasetStatistics],
                 fingerprint: Callable[[str], str], mask: tuple[bool, ...] = NORMALIZATION_MASK):
        self.path, self.compute, self.fingerprint, self.mask = path, compute, fingerprint, tuple(mask)
        stored = json.loads(path.read_text()) if path is not None and path.exists() else {}
        self.entries = {name: DatasetStatistics.from_json(data) for name, data in stored.items()}
        self.checked: set[str] = set()  # entries known to match the data, in this process

    def __getitem__(self, dataset: str) -> DatasetStatistics:
        if dataset not in self.checked:
            entry = self.entries.get(dataset)
            if entry is None or entry.fingerprint != self.fingerprint(dataset):
                entry = self.compute(dataset)
            if entry is not self.entries.get(dataset) or entry.mask != self.mask:
                self.entries[dataset] = dataclasses.replace(entry, mask=self.mask)
                self._save()
            self.checked.add(dataset)
        return self.entries[dataset]

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.partial")
        data = {name: entry.to_json() for name, entry in sorted(self.entries.items())}
        partial.write_text(json.dumps(data, indent=2))
        partial.replace(self.path)
