"""Magma's text conventions in one place: placeholders, special tokens, the system prompt and the
SoM / ToM / action templates (reference magma.md §8, §9).

The render and action stages write conversations with these functions; ``magma_data.train``
reads the same names to build prompts and labels, so a template or a token is declared once.
Token *strings* live here; token *ids* are always read from the tokenizer (Magma-8B's ``<pad>``
precedes ``<image>``, the reverse of Magma's ``train.py`` order, magma.md §9.1).
"""

from __future__ import annotations

import numpy as np

#: The image token, one per image in the text; the model expands each into the image's features.
IMAGE_TOKEN = "<image>"
#: What a turn starts with for each image it shows (``mm_use_image_start_end`` False, as released).
IMAGE_PLACEHOLDER = f"{IMAGE_TOKEN}\n"
#: The robot's answer placeholder, one per action dimension, swapped for action token ids in training.
ACTION_TOKEN = "<action>"
ACTION_DIMENSIONS = 7
#: Added when the base tokenizer has no pad token (Llama-3 has none).
PAD_TOKEN = "<pad>"
#: Magma's system message for every sample (data/dataset.py).
SYSTEM_PROMPT = "You are agent that can see, talk and act."
#: Labels that take no part in the loss.
IGNORE_INDEX = -100
#: Side of the square grid the SoM / ToM coordinates live on (``spatial_quant_size``).
GRID_SIZE = 256


def semantic_turn(task: str) -> list[dict[str, str]]:
    """§8.1, the ego4d / sthv2 question every video source uses."""
    return [
        {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\nWhat is the person doing in the image?\n"},
        {"from": "gpt", "value": f"{task}\n"},
    ]


def tom_turn(
    style: str,
    task: str,
    ids: np.ndarray,
    tom_ids: np.ndarray,
    targets: list[np.ndarray],
    grid_size: int = GRID_SIZE,
) -> list[dict[str, str]]:
    """§8.2 (video) or §8.5 (robot, with the colon): where the moving marks go next."""
    all_ids = sorted(int(mark_id) for mark_id in ids)
    steps = max(len(target) - 1 for target in targets)
    actor, colon = ("robot", ":") if style == "robot" else ("person", "")
    doing = f"The {actor} is doing: {task.removesuffix('.')}. " if task else ""
    question = (
        f"{IMAGE_PLACEHOLDER}\nThe image is split into {grid_size}x{grid_size} grids, and labeled "
        f"with numeric marks{colon} {all_ids}.\n{doing}To finish the task, how to move the numerical marks "
        f"in the image for the next {steps} steps?\n"
    )
    starts = ", ".join(
        f"Mark {mark_id} at [{target[0, 0]},{target[0, 1]}]"
        for mark_id, target in zip(tom_ids, targets)
    )
    futures = "".join(
        f'"Mark {mark_id}": "[{",".join(f"[{x},{y}]" for x, y in target[1:])}]"\n\n'
        for mark_id, target in zip(tom_ids, targets)
    )
    answer = f"{starts} should be moved, and their future positions are:\n\n{futures}"
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def som_turn(ids: np.ndarray, grid_xy: np.ndarray, grid_size: int = GRID_SIZE) -> list[dict[str, str]]:
    """§8.3: locate every mark, ids ascending."""
    question = (
        f"{IMAGE_PLACEHOLDER}\nThe image is split into {grid_size}x{grid_size} grids, and labeled "
        "with numeric marks.\nPlease locate all the numerical marks in the image.\n"
    )
    order = np.argsort(ids)
    answer = ". ".join(
        f"Mark {int(ids[mark])} at [{grid_xy[mark, 0]},{grid_xy[mark, 1]}]" for mark in order
    )
    return [{"from": "human", "value": question}, {"from": "gpt", "value": f"{answer}\n"}]


def action_turn(instruction: str) -> list[dict[str, str]]:
    """§8.4: the question with the image, and one action placeholder per dimension as the answer."""
    return [
        {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\nWhat action should the robot take to {instruction}?"},
        {"from": "gpt", "value": ACTION_TOKEN * ACTION_DIMENSIONS},
    ]
