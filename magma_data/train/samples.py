"""One row -> one of Magma's samples, exactly as Magma's ``data/dataset.py`` ``preprocess`` makes it.

``SampleMaker`` takes a row and the reader it came from (``readers.py``; the reader says which of
Magma's branches its layout follows: ``magma_content`` for magma-data rows, ``llava_content`` for
LLaVA rows): a video row loses its SoM / ToM turn with probability ``som_tom_drop`` (Magma's 0.2,
drawn per (seed, epoch, sample)), one image per ``<image>`` (the ToM / SoM question shows
``som_image``, the other turns ``image``), 1 crop for video and robot rows, the Llama-3 chat template with Magma's system prompt,
labels on the assistant answers and their ``<|eot_id|>`` only, truncation to the maximum length, and
the 7 ``<action>`` placeholders swapped for the action's token ids.

A row that cannot become a sample (an image that does not decode, a text that does not fit, turns
that are not a list of ``{from, value}``, an action the model has no ``<action>`` token for)
raises ``BadRow`` with its reason; the loader turns it into a ``Skipped``, counted and reported by
the trainer and eval, never fatal. ``benchmarks/magma_data_parity.py`` checks this module against
Magma's own functions.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from magma_data.magma_text import (
    ACTION_DIMENSIONS,
    ACTION_TOKEN,
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    IMAGE_TOKEN,
    SYSTEM_PROMPT,
    asks_about_marks,
    blank_turn,
    turn_images,
)
from magma_data.stages.action_tokens import ActionConfig, action_token_ids
from magma_data.stages.base import seeded_rng

from .processor import MagmaProcessor
from .settings import MAGMA_MAX_LENGTH

if TYPE_CHECKING:
    from .readers import Reader

#: Chat roles of Magma's turns (``data/dataset.py``: "human" / "user" -> user, the rest assistant).
ROLES = {"human": "user", "user": "user"}


@dataclass
class Sample:
    """One sample as Magma's dataset returns it: token ids, labels, and its images' crops."""

    input_ids: torch.Tensor  # [L] int64
    labels: torch.Tensor  # [L] int64, IGNORE_INDEX where not supervised
    pixel_values: torch.Tensor  # [crops, 3, H, W]
    image_sizes: torch.Tensor  # [images, 2] (rows, cols) of each image's crop grid
    source: str


@dataclass(frozen=True)
class Skipped:
    """A row that could not become a sample: counted by ``reason``, ``detail`` for the log."""

    source: str
    reason: str
    detail: str


class BadRow(Exception):
    """A row Magma's code would crash on or train on silently wrong; ``reason`` is its class."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SampleMaker:
    """Magma's ``preprocess`` (and its dataset's image handling) for one row at a time.

    Labels come from character spans: the rendered text is tokenized once, with offsets, and a
    token is supervised when it starts inside an assistant answer (its content and the
    ``<|eot_id|>`` after it). Magma re-tokenizes each turn to count lengths and masks the whole
    sample when the counts disagree; on rows where they agree (every row Magma trains on) the
    labels are the same, which ``benchmarks/magma_data_parity.py`` checks.
    """

    def __init__(self, processor: MagmaProcessor, max_length: int = MAGMA_MAX_LENGTH, som_tom_drop: float = 0.0,
                 seed: int = 0):
        """``som_tom_drop``: the share of video samples made without their SoM / ToM turn (training: Magma's 0.2;
        evaluation: 0), drawn from ``seed``, the epoch and the sample id."""
        self.processor = processor
        self.som_tom_drop = som_tom_drop
        self.seed = seed
        self.tokenizer = tokenizer = processor.tokenizer
        self.max_length = max_length
        self.user_header, self.assistant_header = chat_headers(tokenizer)
        # None where the tokenizer lacks them (Magma-8B's has no <action>; training adds it, eval skips those rows)
        vocabulary = tokenizer.get_vocab()
        self.image_token_id = vocabulary.get(IMAGE_TOKEN)
        self.action_token_id = vocabulary.get(ACTION_TOKEN)
        # Actions are the last 256 ids of this tokenizer's own base vocabulary (docs/magma-text.md §Action tokens):
        # for Llama-3 (128000) these are the ids magma-data stored; for any other, they differ.
        self.action_config = ActionConfig(vocab_size=tokenizer.vocab_size)

    def __call__(self, row: dict[str, Any], source: Reader, epoch: int = 0) -> Sample:
        turns, images, num_crops = source.content(self, row, epoch)
        self.check_tokens(turns)
        input_ids, labels = self.tokens(turns)
        if not (labels != IGNORE_INDEX).any():
            raise BadRow("no answer to learn", "no assistant token is left to supervise")
        if int((input_ids == self.image_token_id).sum()) != len(images):
            raise BadRow(
                "images do not match <image>", f"{int((input_ids == self.image_token_id).sum())} <image> for {len(images)} images"
            )
        if self.tokenizer.pad_token_id is not None and self.tokenizer.pad_token_id in input_ids:
            # Magma drops these rows too (LlaVA.filter_items): the collator would take the token for padding
            raise BadRow("text holds the pad token", f"{self.tokenizer.pad_token!r} appears in the conversation")
        self.insert_actions(input_ids, labels, row)
        pixels = self.processor.image_processor(images, num_crops=num_crops)
        return Sample(input_ids, labels, pixels["pixel_values"], pixels["image_sizes"], source.name)

    def stand_in(self) -> Sample:
        """Magma's blank-image sample: what a process computes, at weight 0, for a micro-batch
        whose rows were all skipped, so it still joins the other processes' collective calls."""
        size = self.processor.image_processor.base_img_size
        input_ids, labels = self.tokens(blank_turn())
        pixels = self.processor.image_processor([Image.new("RGB", (size, size))], num_crops=1)
        return Sample(input_ids, labels, pixels["pixel_values"], pixels["image_sizes"], "")

    def check_tokens(self, turns: list[dict]) -> None:
        """Turns that need a token the tokenizer lacks cannot become a sample (the text would split it)."""
        for token, token_id in ((IMAGE_TOKEN, self.image_token_id), (ACTION_TOKEN, self.action_token_id)):
            if token_id is None and any(token in turn["value"] for turn in turns):
                raise BadRow(
                    f"the model has no {token} token",
                    f"the row's text holds {token}; magma-train pretrain / finetune add it, as Magma's train.py does",
                )

    def magma_content(self, row: dict[str, Any], epoch: int = 0) -> tuple[list[dict], list[Image.Image], int]:
        """A magma-data row's turns (less its SoM / ToM turn when the drop draws it) and, per ``<image>``,
        ``som_image`` (SoM / ToM turns) or ``image``."""
        turns = _turns(row)
        if self.drops_marks_turn(turns, str(row.get("sample_id", "")), epoch):
            turns = turns[:2]
        decoded = {column: decode_image(row.get(column)) for column in set(turn_images(turns))}
        return turns, [decoded[column] for column in turn_images(turns)], 1  # one crop (docs/magma-som-tom.md §Video loader, §Robot loader)

    def drops_marks_turn(self, turns: list[dict], sample_id: str, epoch: int) -> bool:
        """Magma's ``random.random() < 0.2`` of ``_construct_conv`` (data/conversations.py): a video sample keeps
        its semantic turn only. Drawn per (seed, epoch, sample), so each epoch drops other samples and every run
        the same ones. Robot rows (an action turn first) keep theirs, as Magma's robot loader does; a row
        without a semantic turn (no task text) keeps its only turn."""
        video = (len(turns) == 4 and not asks_about_marks(turns[0]["value"]) and asks_about_marks(turns[2]["value"])
                 and not any(ACTION_TOKEN in turn["value"] for turn in turns))
        if not video or self.som_tom_drop <= 0:
            return False
        return bool(seeded_rng(self.seed, sample_id, f"som_tom drop, epoch {epoch}").random() < self.som_tom_drop)

    def llava_content(self, row: dict[str, Any], image_folder: Path | None) -> tuple[list[dict], list[Image.Image], int | None]:
        """Magma's image branch: ``<image>`` moved to the turn's start (``preprocess_multimodal``),
        images at the processor's crop count; a row without an image gets a black one (1 crop)."""
        files = row.get("image") or []
        files = [files] if isinstance(files, str) else list(files)
        if not all(isinstance(file, str) for file in files):
            raise BadRow("image does not decode", f"image holds {files!r}, not file names")
        if not files:
            size = self.processor.image_processor.base_img_size
            turns = [dict(turn) for turn in _turns(row)]
            turns[0]["value"] = IMAGE_PLACEHOLDER + turns[0]["value"]
            return turns, [Image.new("RGB", (size, size))], 1
        turns = []
        for turn in _turns(row):
            value = turn["value"]
            count = value.count(IMAGE_TOKEN)
            if count:
                value = IMAGE_PLACEHOLDER * count + value.replace(IMAGE_PLACEHOLDER, "").replace(IMAGE_TOKEN, "")
            turns.append({"from": turn["from"], "value": value})
        images = [_open_image((image_folder or Path()) / file.lstrip("/")) for file in files]
        return turns, images, None

    def tokens(self, turns: list[dict], generation_prompt: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and labels of the chat-rendered turns, truncated to ``max_length``.

        The tokenizer adds its BOS before the template's own, as Magma's ``preprocess`` does.
        """
        text = self.render(turns, generation_prompt)
        encoded = self.tokenizer(text, return_offsets_mapping=True)
        ids = np.asarray(encoded["input_ids"], np.int64)
        starts = np.asarray([start for start, _ in encoded["offset_mapping"]], np.int64)
        spans = np.asarray(answer_spans(text, self.user_header, self.assistant_header), np.int64).reshape(-1, 2)
        span = np.searchsorted(spans[:, 0], starts, side="right") - 1
        supervised = (span >= 0) & (starts < spans[np.maximum(span, 0), 1]) if len(spans) else np.zeros(len(ids), bool)
        labels = np.where(supervised, ids, IGNORE_INDEX)
        if len(ids) > self.max_length:
            kept = ids[: self.max_length]
            if (kept == self.image_token_id).sum() < (ids == self.image_token_id).sum():
                raise BadRow(
                    "text does not fit",
                    f"{len(ids)} tokens, and truncation to {self.max_length} cuts an <image> off (--max-length)",
                )
            ids, labels = kept, labels[: self.max_length]
        return torch.from_numpy(ids), torch.from_numpy(labels)

    def render(self, turns: list[dict], generation_prompt: bool = False) -> str:
        """Magma's system prompt and the turns through the tokenizer's chat template."""
        messages = [{"role": "system", "content": SYSTEM_PROMPT}] + [
            {"role": ROLES.get(turn["from"], "assistant"), "content": turn["value"]} for turn in turns
        ]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def insert_actions(self, input_ids: torch.Tensor, labels: torch.Tensor, row: dict[str, Any]) -> None:
        """The 7 ``<action>`` placeholders become the action's ids, in the input and in the labels
        (a text without them is left as it is)."""
        if self.action_token_id is None:
            return
        placeholders = input_ids == self.action_token_id
        if not placeholders.any():
            return
        if int(placeholders.sum()) != ACTION_DIMENSIONS or int((labels == self.action_token_id).sum()) != ACTION_DIMENSIONS:
            raise BadRow("text does not fit", f"{int(placeholders.sum())} of the {ACTION_DIMENSIONS} <action> tokens are left")
        ids = torch.from_numpy(self.action_ids(row))
        input_ids[placeholders] = ids
        labels[labels == self.action_token_id] = ids

    def action_ids(self, row: dict[str, Any]) -> np.ndarray:
        """From ``action_normalized`` (shards); else the stored ``action_token_ids`` (a LLaVA export),
        when they are this tokenizer's action ids."""
        config = self.action_config
        if row.get("action_normalized") is not None:
            normalized = np.asarray(row["action_normalized"], np.float32)
            if normalized.shape != (ACTION_DIMENSIONS,) or not np.isfinite(normalized).all():
                raise BadRow("no action", f"action_normalized is {normalized.tolist()}, not {ACTION_DIMENSIONS} finite numbers")
            return action_token_ids(normalized, config).astype(np.int64)
        if row.get("action_token_ids") is None:
            raise BadRow("no action", "the row has <action> placeholders but neither action_normalized nor action_token_ids")
        ids = np.asarray(row["action_token_ids"], np.int64)
        if ids.shape != (ACTION_DIMENSIONS,):
            raise BadRow("no action", f"action_token_ids is {ids.tolist()}, not {ACTION_DIMENSIONS} ids")
        first = config.vocab_size - config.bins
        if not ((first <= ids) & (ids < config.vocab_size)).all():
            raise BadRow(
                "actions do not fit this tokenizer",
                f"action_token_ids {ids.tolist()} are not among its action ids [{first}, {config.vocab_size}); "
                "train on the magma-data folder, whose actions are re-tokenised for any tokenizer",
            )
        return ids


def chat_headers(tokenizer) -> tuple[str, str]:
    """The user and assistant headers, found as Magma finds them: a dummy conversation rendered by
    the chat template and split on the end-of-turn token."""
    dummy = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": ""}, {"role": "assistant", "content": ""}]
    segments = tokenizer.apply_chat_template(dummy, tokenize=False).split(tokenizer.eos_token)[:-1]
    user, assistant = segments[-2], segments[-1]
    return (user.replace(tokenizer.bos_token, "") if tokenizer.bos_token else user), assistant


def answer_spans(text: str, user_header: str, assistant_header: str) -> list[tuple[int, int]]:
    """Character spans Magma supervises: in each round (a user header up to the next), what
    follows the assistant header.

    A round without exactly one assistant header is an error: Magma's length count then falls
    short and it masks the whole sample, which trains on nothing.
    """
    starts = []
    at = text.find(user_header)
    while at >= 0:
        starts.append(at)
        at = text.find(user_header, at + len(user_header))
    spans = []
    for start, end in zip(starts, starts[1:] + [len(text)]):
        body = text[start + len(user_header) : end]
        if body.count(assistant_header) != 1:
            raise BadRow("turns are not question-answer pairs", "a user turn is not followed by one assistant turn")
        spans.append((start + len(user_header) + body.index(assistant_header) + len(assistant_header), end))
    return spans


def _turns(row: dict[str, Any]) -> list[dict[str, str]]:
    """The row's ``conversations``, refused unless it is a list of ``{from, value}`` texts."""
    turns = row.get("conversations")
    if not isinstance(turns, (list, tuple)) or not turns or not all(
        isinstance(turn, dict) and isinstance(turn.get("from"), str) and isinstance(turn.get("value"), str) for turn in turns
    ):
        raise BadRow("turns are malformed", f"conversations is {str(turns)[:120]!r}, not a list of {{from, value}} texts")
    return list(turns)


def decode_image(image: dict[str, Any] | bytes) -> Image.Image:
    """A stored image (bytes, or the ``{bytes, path}`` struct of a shard's image column) -> RGB, fully read so a
    damaged file fails here."""
    if image is not None and not isinstance(image, (dict, bytes)):
        raise BadRow("image does not decode", f"the image column holds a {type(image).__name__}")
    data = image.get("bytes") if isinstance(image, dict) else image
    path = image.get("path") if isinstance(image, dict) else None
    if not data and not path:
        raise BadRow("image does not decode", "the image column is empty")
    try:
        with Image.open(io.BytesIO(data) if data else path) as opened:
            return opened.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise BadRow("image does not decode", f"{type(error).__name__}: {error}") from error


def _open_image(path: Path) -> Image.Image:
    if not path.is_file():
        raise BadRow("image does not decode", f"{path} does not exist")
    return decode_image({"path": str(path), "bytes": None})

