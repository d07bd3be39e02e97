"""A miniature Open-X download: RLDS datasets written by tensorflow-datasets in the official
episode/steps layout (TFRecord shards, dataset_info.json, features.json), with the awkward
episodes real data has; and two hand-made episodes in the RT-1 and Bridge layouts whose action
tokens are worked out by hand (``golden_miniature``). Import only after
``pytest.importorskip("tensorflow_datasets")``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from source_fixtures import frames

HEIGHT, WIDTH = 48, 64
NOT_UTF8 = b"pick up the \xff cup"


def _step(image: np.ndarray, t: int, num_steps: int, action, instruction, camera_key: str = "image") -> dict:
    return {
        "observation": {camera_key: image, "wrist_image": np.zeros_like(image),
                        "state": np.full(8, t, np.float32)},
        "action": action,
        "reward": float(t == num_steps - 1),
        "discount": 1.0,
        "is_first": t == 0,
        "is_last": t == num_steps - 1,
        "is_terminal": t == num_steps - 1,
        **instruction,
    }


def _observation(camera_key: str, **extra) -> tfds.features.FeaturesDict:
    image = tfds.features.Image(shape=(HEIGHT, WIDTH, 3), encoding_format="jpeg")
    return tfds.features.FeaturesDict({camera_key: image, "wrist_image": image,
                                       "state": tfds.features.Tensor(shape=(8,), dtype=np.float32), **extra})


def _episode_features(steps: dict) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "steps": tfds.features.Dataset({
            **steps,
            "reward": tfds.features.Scalar(dtype=np.float32),
            "discount": tfds.features.Scalar(dtype=np.float32),
            "is_first": np.bool_, "is_last": np.bool_, "is_terminal": np.bool_,
        }),
        "episode_metadata": tfds.features.FeaturesDict({"file_path": tfds.features.Text()}),
    })


#: The folder the tabletop dataset is written to: a mixture dataset whose standardisation keeps
#: the tensor actions and only clips and inverts the gripper.
TABLETOP = "utaustin_mutex"

#: episodes of ``TABLETOP``: (length, instruction bytes); actions sweep [-1.2, 1.2] so clipping shows
TABLETOP_EPISODES = (
    (20, "pick up the café cup and put it in the 瓶".encode()),
    (6, b""),  # no instruction: Magma skips unlabeled episodes
    (5, NOT_UTF8),
    (3, b"push the block left"),
)


def tabletop_action(t: int, num_steps: int) -> np.ndarray:
    value = -1.2 + 2.4 * t / max(num_steps - 1, 1)
    return np.array([value, value / 2, -value, 0.1, -0.1, 0.0, float(t % 2)], np.float32)


class ToyTabletop(tfds.core.GeneratorBasedBuilder):
    """A language-conditioned tabletop dataset in the converted-dataset layout (7-D tensor actions)."""

    VERSION = tfds.core.Version("0.1.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=_episode_features({
            "observation": _observation("image"),
            "action": tfds.features.Tensor(shape=(7,), dtype=np.float32),
            "language_instruction": tfds.features.Text(),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for index, (num_steps, instruction) in enumerate(TABLETOP_EPISODES):
            video = frames(num_steps, WIDTH, HEIGHT, seed=index, speed=1.5, radius=0.3)  # a robot arm's pace
            yield f"episode_{index}", {
                "steps": [_step(video[t], t, num_steps, tabletop_action(t, num_steps),
                                {"language_instruction": instruction}) for t in range(num_steps)],
                "episode_metadata": {"file_path": f"episode_{index}"},
            }


def _rt1_info(builder, **extra_actions) -> tfds.core.DatasetInfo:
    """RT-1's layout: dict actions (world_vector, rotation_delta, gripper_closedness_action, and
    ``extra_actions``) and the instruction inside the observation."""
    vector = lambda n: tfds.features.Tensor(shape=(n,), dtype=np.float32)  # noqa: E731
    return tfds.core.DatasetInfo(builder=builder, features=_episode_features({
        "observation": _observation("image", natural_language_instruction=tfds.features.Text()),
        "action": tfds.features.FeaturesDict({"world_vector": vector(3), "rotation_delta": vector(3),
                                              "gripper_closedness_action": vector(1), **extra_actions}),
    }))


class FractalMini(tfds.core.GeneratorBasedBuilder):
    """RT-1 layout: dict actions and the instruction inside the observation."""

    VERSION = tfds.core.Version("0.1.0")

    def _info(self):
        return _rt1_info(self, terminate_episode=tfds.features.Tensor(shape=(3,), dtype=np.int32))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        num_steps, video = 4, frames(4, WIDTH, HEIGHT, seed=9)
        steps = []
        for t in range(num_steps):
            step = _step(video[t], t, num_steps, {
                "world_vector": np.full(3, 0.1 * t, np.float32), "rotation_delta": np.zeros(3, np.float32),
                "gripper_closedness_action": np.ones(1, np.float32), "terminate_episode": np.zeros(3, np.int32),
            }, {})
            step["observation"]["natural_language_instruction"] = b"open the top drawer"
            steps.append(step)
        yield "episode_0", {"steps": steps, "episode_metadata": {"file_path": "episode_0"}}


class ViolaMini(tfds.core.GeneratorBasedBuilder):
    """Named like a mixture dataset whose primary camera (agentview_rgb) it lacks."""

    VERSION = tfds.core.Version("0.1.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=_episode_features({
            "observation": _observation("image"),
            "action": tfds.features.Tensor(shape=(7,), dtype=np.float32),
            "language_instruction": tfds.features.Text(),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        video = frames(2, WIDTH, HEIGHT)
        yield "episode_0", {"steps": [_step(video[t], t, 2, np.zeros(7, np.float32),
                                            {"language_instruction": b"stack the bowls"}) for t in range(2)],
                            "episode_metadata": {"file_path": "episode_0"}}


#: Steps of the golden RT-1 episode; world_vector x = step / 128, so its 1st and 99th percentiles
#: are exactly 1/128 and 99/128.
RT1_GOLDEN_STEPS = 101
#: The RT-1 gripper command per step: close at 10, open at 50, no command elsewhere.
RT1_GRIPPER_COMMANDS = {10: 1.0, 50: -1.0}


class Rt1Golden(tfds.core.GeneratorBasedBuilder):
    """One RT-1 episode: x rises 1/128 a step, y is constant, z falls, no rotation, relative gripper."""

    VERSION = tfds.core.Version("0.1.0")

    def _info(self):
        return _rt1_info(self)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        num_steps = RT1_GOLDEN_STEPS
        video = frames(num_steps, WIDTH, HEIGHT, seed=3)
        steps = []
        for t in range(num_steps):
            step = _step(video[t], t, num_steps, {
                "world_vector": np.array([t / 128, 0.25, -t / 128], np.float32),
                "rotation_delta": np.zeros(3, np.float32),
                "gripper_closedness_action": np.array([RT1_GRIPPER_COMMANDS.get(t, 0.0)], np.float32),
            }, {})
            step["observation"]["natural_language_instruction"] = b"Pick the Coke can"
            steps.append(step)
        yield "episode_0", {"steps": steps, "episode_metadata": {"file_path": "episode_0"}}


#: Steps of the golden Bridge episode; its standardisation keeps steps 1 .. 101.
BRIDGE_GOLDEN_STEPS = 103


def bridge_gripper(t: int) -> float:
    """Open, then a half-open step before closing, closed, a step in between, open again."""
    if t == 0:
        return 0.0  # Bridge's first step has an all-zero action
    if t <= 30 or t >= 73:
        return 1.0
    return {31: 0.5, 32: 0.5, 33: 0.5, 71: 0.6, 72: 0.6}.get(t, 0.0)


def bridge_state(t: int) -> np.ndarray:
    """x moves 0.5 a step (a constant: normalised to 0), y moves t / 128 from step t to t + 1."""
    return np.array([0.5 * t, t * (t - 1) / 2 / 128, 0, 0, 0, 0, 0], np.float32)


class BridgeGolden(tfds.core.GeneratorBasedBuilder):
    """One Bridge V2 episode (the project website's layout): 7-D actions, 7-D state, camera image_0."""

    VERSION = tfds.core.Version("0.1.0")

    def _info(self):
        image = tfds.features.Image(shape=(HEIGHT, WIDTH, 3), encoding_format="jpeg")
        return tfds.core.DatasetInfo(builder=self, features=_episode_features({
            "observation": tfds.features.FeaturesDict({
                "image_0": image, "state": tfds.features.Tensor(shape=(7,), dtype=np.float32)}),
            "action": tfds.features.Tensor(shape=(7,), dtype=np.float32),
            "language_instruction": tfds.features.Text(),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        num_steps = BRIDGE_GOLDEN_STEPS
        video = frames(num_steps, WIDTH, HEIGHT, seed=4)
        steps = []
        for t in range(num_steps):
            action = np.zeros(7, np.float32) if t == 0 else np.array([9, 9, 9, 0, 0, 0, bridge_gripper(t)], np.float32)
            steps.append({
                "observation": {"image_0": video[t], "state": bridge_state(t)},
                "action": action, "reward": float(t == num_steps - 1), "discount": 1.0,
                "is_first": t == 0, "is_last": t == num_steps - 1, "is_terminal": t == num_steps - 1,
                "language_instruction": b"put the spoon in the pot",
            })
        yield "episode_0", {"steps": steps, "episode_metadata": {"file_path": "episode_0"}}


def _write(root: Path, datasets) -> Path:
    for builder_class, folder in datasets:
        staging = root / ".staging"
        builder = builder_class(data_dir=str(staging))
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(verify_ssl=False))
        shutil.move(str(staging / builder.name), str(root / folder))
        shutil.rmtree(staging)
    return root


def oxe_miniature(root: Path) -> Path:
    """``<root>/<dataset>/0.1.0/`` for the tabletop dataset, fractal20220817_data and viola."""
    return _write(root, ((ToyTabletop, TABLETOP), (FractalMini, "fractal20220817_data"), (ViolaMini, "viola")))


def golden_miniature(root: Path) -> Path:
    """``<root>/<dataset>/0.1.0/`` for the golden RT-1 episode (fractal20220817_data) and Bridge episode
    (bridge_orig)."""
    return _write(root, ((Rt1Golden, "fractal20220817_data"), (BridgeGolden, "bridge_orig")))
