"""A second robot format is one reader and one manifest: episodes kept as .npz files run through oxe_tom.

``NpzRobotSource`` below is the whole reader (a folder per dataset, a file per episode with its
camera frames, actions and instruction), and ``MANIFEST`` its manifest. A real run (local Ray)
plans its episodes with oxe_tom's planner, reads the frames through the reader on the workers,
tracks, marks, renders and tokenises them into rows of oxe_tom's schema; RLDS is nowhere in it.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from magma_data.config import RunConfig
from magma_data.pipelines import load_pipeline, shard_features
from magma_data.runner import RunOptions, run
from magma_data.sources import open_source, parse_manifest
from magma_data.sources.base import ClipProblem
from magma_data.sources.openvla import STATISTICS_FILE, DatasetStatistics
from magma_data.sources.robot import EpisodeAddress, EpisodeUnreadable, RobotEpisode, RobotSource
from magma_data.sources.sample import MovingObject, SceneSpec, render_scene


class NpzRobotSource(RobotSource):
    """``<root>/<dataset>/<episode>.npz``, each with ``frames`` [T, H, W, 3] uint8 (the camera),
    ``actions`` [T, 7] float32 (already in OpenVLA's convention) and ``instruction``."""

    def __init__(self, root: Path, name: str, camera: str = "frames"):
        self.root, self.name, self.camera = Path(root).resolve(), name, camera

    def _episodes(self, dataset: str) -> list[Path]:
        return sorted((self.root / dataset).glob("*.npz"))

    def clips(self) -> Iterator[RobotEpisode | ClipProblem]:
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for index, path in enumerate(self._episodes(folder.name)):
                episode_id = f"{folder.name}/train/{index:06d}"
                with np.load(path) as stored:
                    actions, instruction = stored["actions"].astype(np.float32), str(stored["instruction"])
                if not instruction:
                    yield ClipProblem(f"{self.name}/{episode_id}", "EpisodeWithoutInstruction", "no instruction",
                                      str(folder))
                    continue
                yield RobotEpisode(episode_id=episode_id, dataset=folder.name, dataset_path=str(folder),
                                   split="train", episode_index=index, instruction=instruction,
                                   image_key=self.camera, num_steps=len(actions), actions=actions,
                                   steps=np.arange(len(actions)))

    def frames(self, episode: EpisodeAddress, steps: np.ndarray) -> np.ndarray:
        path = self._episodes(Path(episode.dataset_path).name)[episode.episode_index]
        with np.load(path) as stored:
            frames = stored[episode.image_key]
        if steps.max() >= len(frames):
            raise EpisodeUnreadable(f"{path} has {len(frames)} steps, not {steps.max() + 1}")
        return frames[steps]

    def dataset_statistics(self, dataset: str) -> DatasetStatistics:
        actions = [np.load(path)["actions"].astype(np.float32) for path in self._episodes(dataset)]
        return DatasetStatistics.of(actions, self.fingerprint(dataset))

    def fingerprint(self, dataset: str) -> str:
        names = "".join(f"{p.name}:{p.stat().st_size};" for p in self._episodes(dataset))
        return hashlib.sha256(names.encode()).hexdigest()[:16]


MANIFEST = f"""
description: robot episodes as .npz files (a test's reader)
reader: {__name__}:NpzRobotSource
pipeline: oxe_tom
options: {{camera: frames}}
defaults:
  plan: {{window_len: 8, window_stride: 3}}
  decode: {{height: 64}}
  camera: {{force: false, global_motion_px: 1.0}}
  marks: {{frame_pos: first, moving_threshold_px: 1.0, moving_clusters: [2, 4], static_clusters: [4, 9]}}
  render: {{style: robot, speed_threshold: 1.0, min_points_divisor: null}}
"""


def _write_episode(path: Path, steps: int, instruction: str, seed: int) -> None:
    scene = SceneSpec(width=80, height=60, num_frames=steps, seed=seed,
                      objects=(MovingObject((0.0, 0.0), 12, (2.0, 1.0), (220, 60, 60), "box"),))
    actions = np.random.default_rng(seed).uniform(-1, 1, (steps, 7)).astype(np.float32)
    actions[:, 6] = np.arange(steps) % 2  # the gripper: 1 open, 0 closed
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, frames=render_scene(scene).frames, actions=actions, instruction=instruction)


@pytest.fixture
def npz_root(tmp_path) -> Path:
    root = tmp_path / "episodes"
    _write_episode(root / "toy_arm" / "a.npz", 12, "put the red box on the left", seed=1)
    _write_episode(root / "toy_arm" / "b.npz", 5, "push the box", seed=2)
    _write_episode(root / "toy_arm" / "c.npz", 6, "", seed=3)
    return root


def test_a_robot_reader_and_a_manifest_make_oxe_tom_rows(npz_root, tmp_path, monkeypatch):
    import ray.cloudpickle

    manifest = parse_manifest("npz_robot", MANIFEST)
    monkeypatch.setattr("magma_data.runner.load_manifest", lambda name: manifest)  # as if in manifests/
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test
    try:
        config = RunConfig(pipeline=manifest.pipeline, source="npz_robot").with_overrides(manifest.defaults)
        config = config.with_overrides({"track": {"tracker": "lk", "grid_size": 4}})
        summary = run(config, RunOptions(output=tmp_path / "out", root=npz_root, num_cpus=2, progress=False))
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])

    assert summary.windows_planned == 4 + 2 + 1  # steps 0, 3, 6, 9 and 0, 3; the episode without text
    table = pq.read_table(sorted((tmp_path / "out" / "data" / "npz_robot").glob("train-*.parquet")))
    assert table.schema.names == list(shard_features(load_pipeline("oxe_tom"), config))
    rows = table.to_pylist()
    errors = pq.read_table(sorted((tmp_path / "out" / "errors").glob("npz_robot-*.parquet"))).to_pylist()
    assert len(rows) + len(errors) == 7 and "EpisodeWithoutInstruction" in {e["error_class"] for e in errors}
    row = next(r for r in rows if r["clip_id"] == "toy_arm/train/000000" and r["frame_index"] == 9)
    assert row["frame_indices"] == [9, 10, 11, 11, 11, 11, 11, 11]  # clamped at the episode's end
    assert (row["image_width"], row["image_height"], row["video_path"]) == (64, 64, "toy_arm")  # relative to --root
    assert row["conversations"][1]["value"] == "<action>" * 7 and len(row["action_token_ids"]) == 7
    assert row["tracker"] == "lk" and len(row["tracks"]) == 8
    assert (tmp_path / "out" / STATISTICS_FILE).is_file()  # the statistics over every episode, kept


def test_check_reports_the_readers_episodes(npz_root, monkeypatch):
    from magma_data.check import run_check

    monkeypatch.setattr("magma_data.check.load_manifest", lambda name: parse_manifest(name, MANIFEST))
    report = run_check("npz_robot", npz_root, window_len=8)
    assert report.unit_kind == "episodes" and isinstance(open_source(parse_manifest("npz_robot", MANIFEST), npz_root),
                                                         RobotSource)
    assert (report.units, report.clips, report.videos, report.windows, report.short_episodes) == (3, 2, 1, 6, 1)
    assert report.problems == {"EpisodeWithoutInstruction": 1}
