"""Magma's text conventions in one place: placeholders, special tokens, the system prompt and the
SoM / ToM / action templates (docs/magma-text.md; the sections cited below are its).

The render and action stages write conversations with these functions; ``magma_data.train``
reads the same names to build prompts and labels, so a template or a token is declared once.
``parse_answer`` reads a generated SoM / ToM answer back into marks and grid traces.
Token *strings* live here; token *ids* are always read from the tokenizer (Magma-8B's ``<pad>``
precedes ``<image>``, the reverse of Magma's ``train.py`` order, §Special tokens).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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
#: How every SoM / ToM question begins after its image (§ToM turn, §SoM-only turn); ``turn_images`` finds them by it.
_SPLIT_INTO = "The image is split into"
# The ToM answer's fixed phrases (§ToM turn), shared by tom_turn and parse_tom_answer.
_MOVED = "should be moved"
_FUTURE_INTRO = "their future positions are:"
#: Action ids are the last ``ACTION_BINS`` ids of the base vocabulary (``tokenizer.vocab_size``).
ACTION_BINS = 256

# Llama-3-Instruct, Magma's language model: its special tokens and chat template (§Chat template). Magma
# renders every sample with this template, which trims each message, so the templates' trailing
# newlines do not reach the model.
BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
END_OF_TURN = "<|eot_id|>"
LLAMA3_SPECIAL_TOKENS = (BEGIN_OF_TEXT, END_OF_TEXT, START_HEADER, END_HEADER, END_OF_TURN)
#: Meta-Llama-3-8B-Instruct's ``chat_template`` (tokenizer_config.json), byte for byte.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
#: Tokens Magma's train.py adds to Llama-3's tokenizer, in its order (``<pad>`` only when the
#: tokenizer has none). Magma-8B's own ids are ``<pad>`` 128256, ``<image>`` 128257: read ids from
#: the tokenizer, never assume them.
MAGMA_ADDED_TOKENS = (IMAGE_TOKEN, PAD_TOKEN, ACTION_TOKEN)


def semantic_turn(task: str) -> list[dict[str, str]]:
    """§Semantic turn: the ego4d / sthv2 question every video source uses."""
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
    """§ToM turn (video) or §Robot ToM turn (with the colon): where the moving marks go next."""
    all_ids = sorted(int(mark_id) for mark_id in ids)
    steps = max(len(target) - 1 for target in targets)
    actor, colon = ("robot", ":") if style == "robot" else ("person", "")
    doing = f"The {actor} is doing: {task.removesuffix('.')}. " if task else ""
    question = (
        f"{IMAGE_PLACEHOLDER}\n{_SPLIT_INTO} {grid_size}x{grid_size} grids, and labeled "
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
    answer = f"{starts} {_MOVED}, and {_FUTURE_INTRO}\n\n{futures}"
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def som_turn(ids: np.ndarray, grid_xy: np.ndarray, grid_size: int = GRID_SIZE) -> list[dict[str, str]]:
    """§SoM-only turn: locate every mark, ids ascending."""
    question = (
        f"{IMAGE_PLACEHOLDER}\n{_SPLIT_INTO} {grid_size}x{grid_size} grids, and labeled "
        "with numeric marks.\nPlease locate all the numerical marks in the image.\n"
    )
    order = np.argsort(ids)
    answer = ". ".join(
        f"Mark {int(ids[mark])} at [{grid_xy[mark, 0]},{grid_xy[mark, 1]}]" for mark in order
    )
    return [{"from": "human", "value": question}, {"from": "gpt", "value": f"{answer}\n"}]


def blank_turn() -> list[dict[str, str]]:
    """§Blank frame: Magma's turn for a blank or unreadable frame (shown a black image)."""
    return [
        {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\nWhat is in this image?"},
        {"from": "gpt", "value": "This is a blank image."},
    ]


def action_turn(instruction: str) -> list[dict[str, str]]:
    """§Action turn: the question with the image, and one action placeholder per dimension as the answer."""
    return [
        {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\nWhat action should the robot take to {instruction}?"},
        {"from": "gpt", "value": ACTION_TOKEN * ACTION_DIMENSIONS},
    ]


def asks_about_marks(question: str) -> bool:
    """Whether a user turn is a SoM / ToM question, the turn that shows the image with marks drawn."""
    return _SPLIT_INTO in question


def turn_images(conversations: list[dict[str, str]]) -> list[str]:
    """The image each ``<image>`` of a conversation shows, in order: ``som_image`` for the SoM / ToM
    questions (they ask about the marks drawn on it), ``image`` for the others (semantic, action)."""
    return [("som_image" if asks_about_marks(turn["value"]) else "image")
            for turn in conversations if turn["from"] == "human" for _ in range(turn["value"].count(IMAGE_TOKEN))]


# -- reading answers back: the inverse of tom_turn / som_turn ----------------------------------

_MARK_AT = re.compile(r"Mark\s+(\d+)\s+at\s+\[\s*(-?\d+)\s*,\s*(-?\d+)\s*\]")
_FUTURE_KEY = re.compile(r'"?Mark\s+(\d+)"?\s*:')
_POINT = re.compile(r"\[\s*(-?\d+)\s*,\s*(-?\d+)\s*\]")
_POINT_LIST = re.compile(r'\s*"?\[\s*(\[\s*-?\d+\s*,\s*-?\d+\s*\]\s*,?\s*)*\]"?\s*')


@dataclass
class ParsedAnswer:
    """Marks and traces read from a generated SoM / ToM answer, and what could not be read.

    ``marks``: mark id -> [x, y] start on the grid. ``traces`` (ToM only): mark id -> the whole
    grid trace, start point first, in the layout of the render stage's ``tom_targets``.
    ``problems``: one sentence per piece of text that was malformed, missing or out of range;
    empty when the answer follows the template exactly.
    """

    kind: str
    marks: dict[int, list[int]] = field(default_factory=dict)
    traces: dict[int, list[list[int]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: marks whose future list is malformed or cut off (their points may belong to other marks)
    malformed: set[int] = field(default_factory=set)


def parse_answer(text: str, grid_size: int = GRID_SIZE) -> ParsedAnswer:
    """A ToM answer when it says which marks "should be moved", else a SoM answer."""
    if _MOVED in text or _FUTURE_INTRO in text:
        return parse_tom_answer(text, grid_size)
    return parse_som_answer(text, grid_size)


def parse_som_answer(text: str, grid_size: int = GRID_SIZE) -> ParsedAnswer:
    """``Mark 1 at [x,y]. Mark 2 at [x,y]`` (§SoM-only turn) -> marks."""
    parsed = ParsedAnswer("som")
    leftover = _read_marks(text, parsed, grid_size)
    if leftover.strip(" .,\n"):
        parsed.problems.append(f"unreadable text: {_quote(leftover)}")
    if not parsed.marks:
        parsed.problems.append("no mark found")
    return parsed


def parse_tom_answer(text: str, grid_size: int = GRID_SIZE) -> ParsedAnswer:
    """``Mark a at [x,y], ... should be moved, and their future positions are: "Mark a": "[[x,y],...]"``
    (§ToM turn) -> marks (starts) and traces (start + future points)."""
    parsed = ParsedAnswer("tom")
    head, intro, futures_text = text.partition(_FUTURE_INTRO)
    if not intro:
        parsed.problems.append(f"no '{_FUTURE_INTRO}': the future positions are missing")
    head_text, moved, head_rest = head.partition(_MOVED)
    if not moved:
        parsed.problems.append(f"no '{_MOVED}' after the start positions")
    leftover = _read_marks(head_text, parsed, grid_size)
    if leftover.strip(" ,\n") or head_rest.strip(" ,\n") not in ("", "and"):
        parsed.problems.append(f"unreadable text before the future positions: {_quote(leftover + head_rest)}")

    futures: dict[int, list[list[int]]] = {}
    keys = list(_FUTURE_KEY.finditer(futures_text))
    if keys and futures_text[: keys[0].start()].strip(' "\n'):
        parsed.problems.append(f"unreadable text among the future positions: {_quote(futures_text[: keys[0].start()])}")
    for key, following in zip(keys, keys[1:] + [None]):
        mark_id = int(key.group(1))
        value = futures_text[key.end() : following.start() if following else len(futures_text)]
        if not _POINT_LIST.fullmatch(value):
            parsed.problems.append(f"the future positions of mark {mark_id} are malformed or cut off: {_quote(value)}")
            parsed.malformed.add(mark_id)
        points = [[int(x), int(y)] for x, y in _POINT.findall(value)]
        if mark_id in futures:
            parsed.problems.append(f"mark {mark_id} has two future lists; the first is kept")
            continue
        _check_on_grid(points, mark_id, parsed, grid_size)
        futures[mark_id] = points

    for mark_id, start in parsed.marks.items():
        if mark_id not in futures:
            parsed.problems.append(f"mark {mark_id} should be moved but has no future positions")
            continue
        parsed.traces[mark_id] = [start] + futures[mark_id]
    for mark_id in futures.keys() - parsed.marks.keys():
        parsed.problems.append(f"mark {mark_id} has future positions but no start position")
    if not parsed.marks:
        parsed.problems.append("no mark found")
    return parsed


def _read_marks(text: str, parsed: ParsedAnswer, grid_size: int) -> str:
    """Record every ``Mark k at [x,y]`` in ``text``; returns the text that matched nothing."""
    leftover, consumed = [], 0
    for match in _MARK_AT.finditer(text):
        leftover.append(text[consumed : match.start()])
        consumed = match.end()
        mark_id, point = int(match.group(1)), [int(match.group(2)), int(match.group(3))]
        if mark_id in parsed.marks:
            parsed.problems.append(f"mark {mark_id} is listed twice; the first position is kept")
            continue
        _check_on_grid([point], mark_id, parsed, grid_size)
        parsed.marks[mark_id] = point
    leftover.append(text[consumed:])
    return " ".join(piece.strip(" .,\n") for piece in leftover if piece.strip(" .,\n"))


def _check_on_grid(points: list[list[int]], mark_id: int, parsed: ParsedAnswer, grid_size: int) -> None:
    outside = [point for point in points if not all(0 <= value < grid_size for value in point)]
    if outside:
        parsed.problems.append(f"mark {mark_id} has points off the {grid_size}x{grid_size} grid: {outside}")


def _quote(text: str, limit: int = 60) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")
