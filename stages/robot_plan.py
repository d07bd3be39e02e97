"""Robot plan: every step of an episode starts a window of the steps that follow it.

Magma-OXE-ToM traces, for each frame of an episode, that frame and the ones after it; near the
end the indices are clamped to the last step, so a window repeats the final frame rather than
getting shorter (the OpenVLA future-observation gather). Rows carry the episode's address in
its RLDS dataset, the step's action and the dataset's action bounds; frames are read later.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from magma_data.magma_text import ACTION_DIMENSIONS
from magma_data.sources.base import ClipProblem
from magma_data.sources.oxe import RobotEpisode
from magma_data.stages.action_tokens import ActionBounds, action_bounds
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
    Column("action", "float32", (ACTION_DIMENSIONS,), doc="the step's action: xyz delta, rotation delta, gripper", group="robot"),
    Column("action_q01", "float32", (ACTION_DIMENSIONS,), doc="the dataset's 1st percentile of each action dimension",
           group="robot"),
    Column("action_q99", "float32", (ACTION_DIMENSIONS,), doc="the dataset's 99th percentile of each action dimension",
           group="robot"),
)


def future_indices(step: int, num_steps: int, window_len: int) -> np.ndarray:
    """``step, step+1, ...`` for ``window_len`` steps, clamped at the episode's last step."""
    return np.minimum(step + np.arange(window_len), num_steps - 1).astype(np.int64)


def episode_windows(episode: RobotEpisode, source: str, config: PlanConfig, bounds: ActionBounds) -> list[dict]:
    """One row per window start (every ``window_stride`` steps) of one episode."""
    rows = []
    for step in range(0, episode.num_steps, config.window_stride):
        rows.append({
            "unit_id": f"{source}/{episode.episode_id}/{step:06d}",
            "sample_id": sample_id_for(source, episode.episode_id, step, config),
            "source": source,
            "video_uid": episode.episode_id,
            "clip_id": episode.episode_id,
            "video_path": episode.builder_dir,
            "task": episode.instruction,
            "frame_index": step,
            "frame_indices": future_indices(step, episode.num_steps, config.window_len),
            "fps": 0.0,  # robot windows count steps; RLDS records no frame rate
            "window_fps": 0.0,
            "window_len": config.window_len,
            "dataset": episode.dataset,
            "split": episode.split,
            "episode_index": episode.episode_index,
            "image_key": episode.image_key,
            "tom": episode.tom,
            "action": episode.actions[step].astype(np.float32),
            "action_q01": bounds.low,
            "action_q99": bounds.high,
        })
    return rows


def plan_episodes(units: Iterable[RobotEpisode | ClipProblem], source: str, config: PlanConfig,
                  limit: int | None = None) -> list[dict]:
    """All units of a robot source in order: window rows, and dropped units for its problems.

    Action bounds are per dataset, over the episodes planned (all of them unless ``limit`` stops
    the reading early), as OpenVLA computes its normalisation statistics.
    """
    taken: list[RobotEpisode | ClipProblem] = []
    planned = 0
    for unit in units:
        taken.append(unit)
        planned += 1 if isinstance(unit, ClipProblem) else -(-unit.num_steps // config.window_stride)
        if limit is not None and planned >= limit:
            break
    bounds = action_bounds([u for u in taken if isinstance(u, RobotEpisode)])
    rows: list[dict] = []
    for unit in taken:
        if isinstance(unit, ClipProblem):
            rows.append(unit.planned(source))
        else:
            rows.extend(episode_windows(unit, source, config, bounds[unit.dataset]))
    return rows[:limit] if limit is not None else rows
