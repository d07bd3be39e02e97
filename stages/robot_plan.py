"""Robot plan: every step of an episode starts a window of the steps that follow it.

Magma-OXE-ToM traces, for each frame of an episode, that frame and the ones after it; near the
end the indices are clamped to the last step, so a window repeats the final frame rather than
getting shorter (the OpenVLA future-observation gather). Rows carry the episode's address in
its dataset (``video_path``, ``split``, ``episode_index``, ``image_key``: what ``RobotSource.frames``
is asked with), the step's standardised action, its dataset's statistics and the action
normalised with them (BOUNDS_Q99, ``magma_data.sources.openvla``); frames are read later.

Statistics cover every episode of a dataset whatever ``--limit`` plans, so a step's action tokens
do not depend on how much of the dataset a run takes. Steps count standardised steps (Bridge
drops its first and last); ``frame_index`` and ``frame_indices`` are steps of the stored episode.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from magma_data.magma_text import ACTION_DIMENSIONS
from magma_data.sources.base import ClipProblem
from magma_data.sources.openvla import DatasetStatistics
from magma_data.sources.robot import RobotEpisode
from magma_data.stages.base import Column
from magma_data.stages.plan import PLAN_COLUMNS, PlanConfig, sample_id_for

#: A robot window's columns before any stage: the video planner's, and the episode's place and action.
ROBOT_PLAN_COLUMNS = PLAN_COLUMNS + (
    Column("dataset", "string", doc="the Open-X dataset", group="robot"),
    Column("split", "string", doc="the RLDS split", group="robot"),
    Column("episode_index", "int64", doc="the episode's position in its split", group="robot"),
    Column("image_key", "string", doc="the observation key of the camera tracked", group="robot"),
    Column("tom", "bool", doc="Magma trains this dataset on SoM/ToM too (false: the action turn only)",
           group="robot"),
    Column("action", "float32", (ACTION_DIMENSIONS,), group="robot",
           doc="the step's action after OpenVLA's standardisation: xyz delta, rotation delta, gripper (1 open)"),
    Column("action_q01", "float32", (ACTION_DIMENSIONS,), doc="the dataset's 1st percentile of each action dimension",
           group="robot"),
    Column("action_q99", "float32", (ACTION_DIMENSIONS,), doc="the dataset's 99th percentile of each action dimension",
           group="robot"),
    Column("action_normalized", "float32", (ACTION_DIMENSIONS,), group="robot",
           doc="the action in [-1, 1] (BOUNDS_Q99 with the dataset's statistics; the gripper as it is)"),
)


def future_indices(step: int, num_steps: int, window_len: int) -> np.ndarray:
    """``step, step+1, ...`` for ``window_len`` steps, clamped at the episode's last step."""
    return np.minimum(step + np.arange(window_len), num_steps - 1).astype(np.int64)


def episode_windows(episode: RobotEpisode, source: str, config: PlanConfig, statistics: DatasetStatistics) -> list[dict]:
    """One row per window start (every ``window_stride`` standardised steps) of one episode."""
    rows = []
    for step in range(0, episode.num_steps, config.window_stride):
        frame = int(episode.steps[step])
        rows.append({
            "unit_id": f"{source}/{episode.episode_id}/{frame:06d}",
            "sample_id": sample_id_for(source, episode.episode_id, frame, config),
            "source": source,
            "video_uid": episode.episode_id,
            "clip_id": episode.episode_id,
            "video_path": episode.dataset_path,
            "task": episode.instruction,
            "frame_index": frame,
            "frame_indices": episode.steps[future_indices(step, episode.num_steps, config.window_len)],
            "fps": 0.0,  # robot windows count steps; RLDS records no frame rate
            "window_fps": 0.0,
            "window_len": config.window_len,
            "dataset": episode.dataset,
            "split": episode.split,
            "episode_index": episode.episode_index,
            "image_key": episode.image_key,
            "tom": episode.tom,
            "action": episode.actions[step].astype(np.float32),
            "action_q01": statistics.q01.astype(np.float32),
            "action_q99": statistics.q99.astype(np.float32),
            "action_normalized": statistics.normalize(episode.actions[step]),
        })
    return rows


def plan_episodes(units: Iterable[RobotEpisode | ClipProblem], source: str, config: PlanConfig,
                  statistics: Mapping[str, DatasetStatistics], limit: int | None = None) -> list[dict]:
    """All units of a robot source in order: window rows, and dropped units for its problems.

    ``statistics`` gives each dataset's statistics over all its episodes (``StatisticsFile``
    computes them on first use), so ``limit`` only decides how many windows are planned.
    """
    rows: list[dict] = []
    for unit in units:
        if isinstance(unit, ClipProblem):
            rows.append(unit.planned(source))
        else:
            rows.extend(episode_windows(unit, source, config, statistics[unit.dataset]))
        if limit is not None and len(rows) >= limit:
            break
    return rows[:limit] if limit is not None else rows
