"""Action tokens: the robot's normalised 7-D action as Magma's 7 action tokens, and the action turn.

OpenVLA's scheme, which Magma reuses (docs/magma-text.md §Action tokens): the planner has already normalised the
step's standardised action with its dataset's statistics (BOUNDS_Q99, ``magma_data.sources.openvla``);
each value is put into one of 256 uniform bins on [-1, 1], and bin ``d`` (1..256) is token
``vocab_size - d``, the last 256 ids of the Llama-3 base vocabulary. The turn (docs/magma-text.md §Action turn) asks what the
robot should do and answers with 7 ``<action>`` placeholders that the trainer swaps for the ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
from annotated_types import Ge, Len

from magma_data.magma_text import ACTION_DIMENSIONS, action_turn
from magma_data.sources.openvla import NORMALIZATION_MASK

from .base import Column, Row, Stage, StageError
from .render import CONVERSATIONS


@dataclass(frozen=True)
class ActionConfig:
    """How actions become tokens (defaults: OpenVLA/Magma with the Llama-3 tokenizer)."""

    #: uniform bins on [-1, 1]
    bins: Annotated[int, Ge(2)] = 256
    #: the tokenizer's base vocabulary size; token id = vocab_size - bin (Llama-3: 128000)
    vocab_size: Annotated[int, Ge(2)] = 128000
    #: which of the 7 dimensions the planner normalises with the dataset's statistics (OpenVLA: all
    #: but the gripper)
    normalize: Annotated[tuple[bool, ...], Len(ACTION_DIMENSIONS, ACTION_DIMENSIONS)] = NORMALIZATION_MASK


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
        Column("action_token_ids", "int32", (ACTION_DIMENSIONS,), doc="Magma's 7 action token ids",
               group="robot"),
        CONVERSATIONS,
    )

    def __init__(self, config: ActionConfig | None = None):
        self.config = config or ActionConfig()

    def __call__(self, row: Row) -> Row:
        action = np.asarray(row["action"], np.float32)
        if action.shape != (ACTION_DIMENSIONS,) or not np.isfinite(action).all():
            raise StageError(f"action {action.tolist()} is not a finite 7-D vector; the episode's actions are damaged")
        instruction = str(row["task"]).strip()
        if not instruction:
            raise StageError("the episode has no instruction, so the action turn has no question")
        tom_turns = list(row["conversations"]) if row["tom"] else []
        return {
            "action_token_ids": action_token_ids(np.asarray(row["action_normalized"]), self.config),
            "conversations": action_turn(instruction) + tom_turns,
        }
