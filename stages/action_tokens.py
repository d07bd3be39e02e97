"""Action tokens: the robot's 7-D action as Magma's 7 action tokens, and the action turn.

OpenVLA's scheme, which Magma reuses (magma.md §9.4, reference §4): each dimension but the
gripper is normalised with the dataset's 1st/99th percentiles to [-1, 1] (BOUNDS_Q99), clipped,
and put into one of 256 uniform bins on [-1, 1]; bin ``d`` (1..256) is token ``vocab_size - d``,
the last 256 ids of the Llama-3 base vocabulary. The gripper keeps its dataset's own scale,
clipped to [-1, 1] (OpenVLA's per-dataset gripper transforms are not reproduced; the raw action
and the bounds are stored, so training can re-tokenise). The turn (§8.4) asks what the robot
should do and answers with 7 ``<action>`` placeholders that the trainer swaps for the ids.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from annotated_types import Ge, Len

from magma_data.magma_text import ACTION_DIMENSIONS, action_turn

from .base import Column, Row, Stage, StageError
from .render import CONVERSATIONS

@dataclass(frozen=True)
class ActionConfig:
    """How actions become tokens (defaults: OpenVLA/Magma with the Llama-3 tokenizer)."""

    #: uniform bins on [-1, 1]
    bins: Annotated[int, Ge(2)] = 256
    #: the tokenizer's base vocabulary size; token id = vocab_size - bin (Llama-3: 128000)
    vocab_size: Annotated[int, Ge(2)] = 128000
    #: which of the 7 dimensions are normalised with the dataset's bounds (the gripper is not)
    normalize: Annotated[tuple[bool, ...], Len(ACTION_DIMENSIONS, ACTION_DIMENSIONS)] = (True,) * 6 + (False,)


@dataclass(frozen=True)
class ActionBounds:
    low: np.ndarray  # float32 [7], 1st percentile per dimension
    high: np.ndarray  # float32 [7], 99th percentile per dimension


def action_bounds(episodes: Sequence) -> dict[str, ActionBounds]:
    """Per dataset, the 1st and 99th percentile of every action dimension over its episodes."""
    actions = defaultdict(list)
    for episode in episodes:
        actions[episode.dataset].append(episode.actions)
    bounds = {}
    for dataset, parts in actions.items():
        low, high = np.quantile(np.concatenate(parts), [0.01, 0.99], axis=0)
        bounds[dataset] = ActionBounds(low.astype(np.float32), high.astype(np.float32))
    return bounds


def normalize_action(action: np.ndarray, low: np.ndarray, high: np.ndarray, mask: Sequence[bool]) -> np.ndarray:
    """BOUNDS_Q99: ``clip(2 (a - q01) / (q99 - q01) - 1, -1, 1)`` where masked; others clipped only."""
    action = np.asarray(action, np.float64)
    scaled = 2 * (action - low) / (high - low + 1e-8) - 1
    return np.clip(np.where(np.asarray(mask), scaled, action), -1, 1).astype(np.float32)


def action_token_ids(normalized: np.ndarray, config: ActionConfig) -> np.ndarray:
    """[-1, 1] values -> token ids ``vocab_size - digitize(a, linspace(-1, 1, bins))``."""
    edges = np.linspace(-1, 1, config.bins)
    bins = np.digitize(np.clip(normalized, -1, 1), edges)  # 1..bins
    return (config.vocab_size - bins).astype(np.int32)


class ActionTokensStage(Stage):
    """Tokenises the step's action and puts the action turn first.

    The action turn refers to ``image`` (the raw frame), the SoM/ToM turn after it to
    ``som_image``. Datasets Magma trains on actions only (``tom`` false) keep just the action turn.
    """

    name = "action_tokens"
    columns = (
        Column("action_normalized", "float32", (ACTION_DIMENSIONS,), doc="the action in [-1, 1] (BOUNDS_Q99)",
               group="robot"),
        Column("action_token_ids", "int32", (ACTION_DIMENSIONS,), doc="Magma's 7 action token ids",
               group="robot"),
        CONVERSATIONS,
    )

    def __init__(self, config: ActionConfig | None = None):
        self.config = config or ActionConfig()

    def __call__(self, row: Row) -> Row:
        action = np.asarray(row["action"], np.float32)
        if action.shape != (7,) or not np.isfinite(action).all():
            raise StageError(f"action {action.tolist()} is not a finite 7-D vector; the episode's actions are damaged")
        instruction = str(row["task"]).strip()
        if not instruction:
            raise StageError("the episode has no instruction, so the action turn has no question")
        normalized = normalize_action(action, row["action_q01"], row["action_q99"], self.config.normalize)
        tom_turns = list(row["conversations"]) if row["tom"] else []
        return {
            "action_normalized": normalized,
            "action_token_ids": action_token_ids(normalized, self.config),
            "conversations": action_turn(instruction) + tom_turns,
        }
