"""Rows -> training batches. Follow one row from its shard to the model's input, top to bottom:

1. ``open_data``: each ``--data PATH[:WEIGHT]`` is read through ``datasets`` (memory-mapped Arrow,
   never loaded into memory). A magma-data output folder gives one ``DataSource`` per source
   folder under ``data/``; a LLaVA JSON file (Magma-820K's layout) gives one, its images looked
   up relative to the JSON's folder.
2. ``DataSource.split_indices``: the rows of the train or validation split. Whole videos are held
   out (a hash of ``video_uid``; of the image path for LLaVA rows), so no window of a validation
   video is ever trained on, and the split is the same in every run.
3. ``Mixture``: which rows an epoch holds and in what order, from the seed and the epoch alone.
   A weight is the share of a source's rows each epoch holds (``out/oxe:0.3``: a different 30 %
   each epoch; ``:2``: every row twice). Position ``p`` of the run is sample ``p % length`` of
   epoch ``p // length``, so the data position of a step is just step x global batch.
4. ``redraw_marks`` (``--redraw-marks``): the pipeline's own marks and render stages run again
   on the stored traces, seeded by (run seed, epoch, sample id), as Magma draws new marks each
   time it loads a sample.
5. ``SampleMaker``: a row -> ``Sample`` exactly as Magma's ``data/dataset.py`` ``preprocess``
   makes it: a video row loses its SoM / ToM turn with probability ``som_tom_drop`` (Magma's 0.2,
   drawn per (seed, epoch, sample)), one image per ``<image>`` (the ToM / SoM question shows ``som_image``, the other
   turns ``image``), 1 crop for video and robot rows, the Llama-3 chat template with Magma's
   system prompt, labels on the assistant answers and their ``<|eot_id|>`` only, truncation to
   the maximum length, and the 7 ``<action>`` placeholders swapped for the action's token ids.
6. ``Collator``: Magma's ``DataCollatorForSupervisedDataset`` (right padding, crops and image
   grids zero-padded across the batch).

A row that cannot become a sample (an image that does not decode, a text that does not fit, turns
that are not a list of ``{from, value}``, an action the model has no ``<action>`` token for)
becomes a ``Skipped`` with its reason: counted and reported by the trainer and eval, never fatal.
``benchmarks/magma_data_parity.py`` checks steps 5 and 6 against Magma's own functions.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image

from magma_data.config import RunConfig
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
from magma_data.parquet_writer import DATA, table_files
from magma_data.pipelines import load_pipeline
from magma_data.stages.action_tokens import ActionConfig, action_token_ids
from magma_data.stages.base import StageError, seeded_rng

from .processor import MagmaProcessor
from .settings import MAGMA_MAX_LENGTH, Split

#: Columns a training sample reads from a magma-data row (``--redraw-marks`` reads them all).
SAMPLE_COLUMNS = ("sample_id", "source", "conversations", "image", "som_image", "action_normalized")
#: Chat roles of Magma's turns (``data/dataset.py``: "human" / "user" -> user, the rest assistant).
ROLES = {"human": "user", "user": "user"}


# -- 1. reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """One ``--data`` entry: a magma-data output folder or a LLaVA JSON file, and its weight."""

    path: Path
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> DataSpec:
        path, _, weight = text.rpartition(":")
        if path and _is_number(weight):
            if float(weight) <= 0:
                raise ValueError(f"--data {text}: the weight must be positive")
            return cls(Path(path), float(weight))
        return cls(Path(text))


@dataclass
class DataSource:
    """The rows of one source: a source folder of a magma-data output, or one LLaVA JSON file."""

    name: str
    layout: Literal["magma", "llava"]
    rows: datasets.Dataset
    weight: float = 1.0
    #: LLaVA: the folder image paths are relative to
    image_folder: Path | None = None
    #: magma-data: the config of the run that wrote the rows (its marks / render settings)
    run_config: RunConfig | None = None

    def split_indices(self, split: Split, validation_fraction: float) -> np.ndarray:
        """Row indices of the split, ascending: whole videos (images) go to validation."""
        if split == "all":
            return np.arange(len(self.rows))
        units = self._units()
        unique = pc.unique(units)
        held = [unit for unit in unique.to_pylist() if held_out(str(unit), validation_fraction)]
        in_validation = pc.is_in(units, value_set=pa.array(held, type=unique.type)).to_numpy(zero_copy_only=False)
        return np.flatnonzero(in_validation if split == "validation" else ~in_validation)

    def _units(self) -> pa.ChunkedArray:
        """What the split holds out whole: the video, or for LLaVA the image (the id without one)."""
        table = self.rows.data
        if self.layout == "magma":
            return table.column("video_uid")
        if "image" not in table.column_names:
            return pc.cast(table.column("id"), pa.string())
        images = table.column("image")
        if pa.types.is_list(images.type):
            images = pc.list_element(images, 0)  # a multi-image row goes with its first image
        return pc.coalesce(pc.cast(images, pa.string()), pc.cast(table.column("id"), pa.string()))


def held_out(unit: str, fraction: float) -> bool:
    """The same answer in every run and process: a hash of the unit, not a random draw."""
    digest = hashlib.sha256(f"validation\x00{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


def open_data(specs: Sequence[DataSpec], cache_dir: Path | None = None) -> list[DataSource]:
    """Every source of every ``--data`` entry, refused before training when a path is not data."""
    sources = []
    for spec in specs:
        if spec.path.is_file() and spec.path.suffix in (".json", ".jsonl"):
            sources.append(_open_llava(spec, cache_dir))
        elif spec.path.is_dir():
            sources += _open_magma(spec, cache_dir)
        else:
            raise FileNotFoundError(
                f"--data {spec.path}: neither a magma-data output folder nor a LLaVA .json file"
            )
    names = [source.name for source in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"two --data entries hold a source of the same name: {sorted(names)}; results are per source")
    return sources


def _open_magma(spec: DataSpec, cache_dir: Path | None) -> list[DataSource]:
    """``<folder>/data/<source>/train-*.parquet``: one source each; the run config from ``.magma/<source>/``."""
    shards = {folder.name: table_files(spec.path, folder.name, DATA) for folder in sorted((spec.path / "data").glob("*"))}
    shards = {source: files for source, files in shards.items() if files}
    if not shards:
        raise FileNotFoundError(
            f"--data {spec.path}: no data/<source>/*.parquet in it; pass the --output folder of `magma-data run`"
        )
    sources = []
    for source, files in shards.items():
        # Explicit file lists: datasets' cache then tracks each file's modification time (a folder
        # loaded by its dataset card is cached by the card's patterns and can come back stale).
        rows = datasets.load_dataset(
            "parquet", data_files=[str(path) for path in files], split="train",
            cache_dir=str(cache_dir) if cache_dir else None,
        )
        rows = rows.cast_column("image", datasets.Image(decode=False)).cast_column(
            "som_image", datasets.Image(decode=False)
        )
        config_file = spec.path / ".magma" / source / "config.json"
        run_config = RunConfig.from_dict(json.loads(config_file.read_text())) if config_file.is_file() else None
        sources.append(DataSource(source, "magma", rows, spec.weight, run_config=run_config))
    return sources


def _open_llava(spec: DataSpec, cache_dir: Path | None) -> DataSource:
    rows = datasets.load_dataset(
        "json", data_files=str(spec.path), split="train", cache_dir=str(cache_dir) if cache_dir else None
    )
    if "conversations" not in rows.column_names:
        raise ValueError(f"--data {spec.path}: LLaVA rows need 'conversations' (and 'image', 'id'); found {rows.column_names}")
    return DataSource(spec.path.stem, "llava", rows, spec.weight, image_folder=spec.path.parent)


# -- 3. mixing ----------------------------------------------------------------------------------


class Mixture:
    """The rows each epoch holds, in order: (source, index into that source's split indices).

    Source ``i`` with ``n`` rows and weight ``w`` gives ``round(w n)`` rows per epoch: whole
    permutations of its rows, then the head of one more; all are then shuffled together. Every
    draw comes from (seed, epoch), so any process computes any epoch alone.
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int):
        self.sizes = list(sizes)
        self.takes = [round(weight * size) for size, weight in zip(sizes, weights)]
        self.seed = seed
        self.epoch_length = sum(self.takes)
        if self.epoch_length == 0:
            raise ValueError("the data hold no row for this split; check --data and --validation-fraction")
        self._cached: tuple[int, np.ndarray] | None = None

    def epoch(self, epoch: int) -> np.ndarray:
        """[epoch_length, 2] int64: (source, index) of every sample of the epoch, in order."""
        if self._cached and self._cached[0] == epoch:
            return self._cached[1]
        rng = np.random.default_rng((self.seed, epoch))
        parts = []
        for source, (size, take) in enumerate(zip(self.sizes, self.takes)):
            copies = [rng.permutation(size) for _ in range(-(-take // size))] if size else []
            indices = np.concatenate(copies)[:take] if copies else np.zeros(0, np.int64)
            parts.append(np.stack([np.full(take, source), indices], axis=1))
        order = np.concatenate(parts)[rng.permutation(self.epoch_length)]
        self._cached = (epoch, order)
        return order

    def locate(self, position: int) -> tuple[int, int, int]:
        """(epoch, source, index) of a position of the run."""
        epoch, offset = divmod(position, self.epoch_length)
        source, index = self.epoch(epoch)[offset]
        return epoch, int(source), int(index)


# -- 4. re-drawn marks --------------------------------------------------------------------------


def redraw_marks(
    row: dict[str, Any], features: datasets.Features, config: RunConfig, seed: int, epoch: int
) -> dict[str, Any]:
    """The row with marks, ``som_image``, ToM targets and turns drawn again by the pipeline's stages.

    The marks stage is seeded from (run seed, epoch) and keys its draws on the sample id, so a
    sample gets new marks every epoch and the same marks in every run. ``image`` stays as stored, and
    so does the marked frame it is (``frame_pos``: the row keeps that frame's pixels only).
    The stages take NumPy arrays, as the pipeline hands them: ``features`` says which columns are.
    """
    stage_seed = int.from_bytes(hashlib.sha256(f"redraw\x00{seed}\x00{epoch}".encode()).digest()[:4], "little")
    stages = load_pipeline(config.pipeline).redraw_stages(config, stage_seed)  # robot: the action turn goes first again
    redrawn = dict(row, marked_frame=np.asarray(_decode(row["image"])))  # the row's frame_pos stays
    redrawn.update({name: np.asarray(row[name]) for name in array_columns(features) if name in row})
    for stage in stages:
        redrawn.update(stage(redrawn))
    del redrawn["marked_frame"]
    redrawn["image"] = row["image"]
    return redrawn


def array_columns(features: datasets.Features) -> list[str]:
    """Columns stored as fixed-shape arrays (tracks, visibility, homographies, actions)."""
    return [name for name, feature in features.items() if isinstance(feature, datasets.List) and feature.length != -1]


# -- 5. row -> sample ---------------------------------------------------------------------------


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

    def __call__(self, row: dict[str, Any], source: DataSource, epoch: int = 0) -> Sample:
        if source.layout == "magma":
            turns, images, num_crops = self.magma_content(row, epoch)
        else:
            turns, images, num_crops = self.llava_content(row, source.image_folder)
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
        decoded = {column: _decode(row.get(column)) for column in set(turn_images(turns))}
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


def _decode(image: dict[str, Any] | bytes) -> Image.Image:
    """A stored image (``datasets`` bytes or path) -> RGB, fully read so a damaged file fails here."""
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
    return _decode({"path": str(path), "bytes": None})


# -- the run's samples, in order ----------------------------------------------------------------


class TrainingSamples(torch.utils.data.Dataset):
    """Position ``p`` of the run -> its ``Sample``, or a ``Skipped`` for a row that is not one."""

    def __init__(
        self,
        sources: list[DataSource],
        indices: list[np.ndarray],
        mixture: Mixture,
        maker: SampleMaker,
        seed: int,
        redraw: bool = False,
    ):
        self.sources = sources
        self.indices = indices
        self.mixture = mixture
        self.maker = maker
        self.seed = seed
        self.redraw = redraw
        if redraw:
            missing = [source.name for source in sources if source.layout == "magma" and source.run_config is None]
            if missing:
                raise ValueError(
                    f"--redraw-marks needs the config of the run that wrote {missing} (.magma/<source>/config.json "
                    "in its output folder); pass the whole output folder of `magma-data run` as --data"
                )
        # Rows are read with only the columns a sample needs, unless marks are drawn again.
        self._rows = [
            source.rows if redraw or source.layout != "magma" else source.rows.select_columns(_present(source, SAMPLE_COLUMNS))
            for source in sources
        ]

    def __getitem__(self, position: int) -> Sample | Skipped:
        epoch, source_index, index = self.mixture.locate(position)
        source = self.sources[source_index]
        row = self._rows[source_index][int(self.indices[source_index][index])]
        try:
            if self.redraw and source.layout == "magma":
                try:
                    row = redraw_marks(row, source.rows.features, source.run_config, self.seed, epoch)
                except StageError as error:
                    raise BadRow("marks cannot be redrawn", str(error)) from error
            return self.maker(row, source, epoch)
        except BadRow as bad:
            return Skipped(source.name, bad.reason, f"{row.get('sample_id', row.get('id', '?'))}: {bad.detail}")


def _present(source: DataSource, columns: Sequence[str]) -> list[str]:
    return [name for name in columns if name in source.rows.column_names]


# -- 6. collation -------------------------------------------------------------------------------


@dataclass
class Batch:
    """A collated micro-batch (``inputs`` None when every row of it was skipped)."""

    inputs: dict[str, torch.Tensor] | None
    sources: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def supervised_tokens(self) -> int:
        """Tokens the loss averages over (label != -100; the first position predicts nothing)."""
        return int((self.inputs["labels"][:, 1:] != IGNORE_INDEX).sum()) if self.inputs else 0


@dataclass(frozen=True)
class Collator:
    """Magma's ``DataCollatorForSupervisedDataset``: input ids padded with the pad id and labels
    with -100 on the right, both cut to ``max_length``; each sample's crops concatenated and
    zero-padded to ``[B, max_crops, 3, H, W]``, image grids to ``[B, max_images, 2]``;
    ``attention_mask = input_ids != pad``."""

    pad_token_id: int
    max_length: int = MAGMA_MAX_LENGTH

    def __call__(self, items: list[Sample | Skipped]) -> Batch:
        samples = [item for item in items if isinstance(item, Sample)]
        skipped = [item for item in items if isinstance(item, Skipped)]
        if not samples:
            return Batch(None, skipped=skipped)
        pad = torch.nn.utils.rnn.pad_sequence
        input_ids = pad([s.input_ids for s in samples], batch_first=True, padding_value=self.pad_token_id)
        labels = pad([s.labels for s in samples], batch_first=True, padding_value=IGNORE_INDEX)
        input_ids, labels = input_ids[:, : self.max_length], labels[:, : self.max_length]
        inputs = {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": input_ids.ne(self.pad_token_id),
            "pixel_values": pad([s.pixel_values for s in samples], batch_first=True, padding_value=0),
            "image_sizes": pad([s.image_sizes for s in samples], batch_first=True, padding_value=0),
        }
        return Batch(inputs, [s.source for s in samples], skipped)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
