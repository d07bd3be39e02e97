"""Text alignment: CLIP scores a window's frames against its text; a window that matches nothing is dropped.

Magma kept a 16-frame trace window when the best of 4 of its frames (``linspace`` over the
window) reached a cosine similarity of 0.25 with the segment's text under CLIP ViT-L/14@336px
(``run_clip_filtering.py`` and ``curate_list.py``, docs/magma-data-format.md §Preprocessing). This stage does the same
through stock transformers (``CLIPModel`` and ``CLIPProcessor`` from a local folder, such as
``openai/clip-vit-large-patch14-336``; nothing is downloaded and no remote code runs), on the
frames the decode stage decoded for tracking: it runs between decode and track, reads 4 of the
window's ``frames`` and neither copies nor returns the others. Windows of many clips go through
one forward, 4 images and one text a window.

Choices, in one place:

- Frames: Magma's, ``int(linspace(0, T - 1, min(4, T + 1)))`` of the window; fewer than 4 (a
  2-frame window) are padded with the last, as Magma repeated the last frame, so ``clip_scores``
  always holds 4 and its maximum is Magma's.
- Pixels: CLIP's image processor on its PIL backend on every machine, so that a GPU box with
  torchvision and a CPU box score the same pixels (torchvision does not import on this project's
  CPU torch anyway). Magma's frames came at the video's size, ours at the working height (512);
  the processor resizes both to 336 the same way.
- Text: the window's task, cut at the text encoder's 77 positions as
  ``clip.tokenize(truncate=True)`` cut it. A window with no text has nothing to match: it is
  filtered (``NoTaskText``), since a run that asks for alignment asks for matching text.
- Scores are float32 CLIP cosines computed in float32. Every batch's forward has one shape,
  ``batch_size`` windows (a short batch is padded by repeating its last window) and texts padded
  to 77 tokens. That does not make a window's scores independent of its batch to the last bit: on
  some CPUs (AVX-512 with more than one thread) a row's rounding depends on where in the batch it
  sits, ~1e-7 here. They agree within ``BATCH_TOLERANCE``.
- The decision does not depend on the batch: a window whose best score in its batch lies within
  ``BATCH_TOLERANCE`` of the threshold is scored again in a forward of its own (one window, its
  4 frames and its text, whatever ``batch_size`` is), and those scores decide and are written.
  Any other window is on the same side of the threshold alone as in any batch, so every window
  is kept or dropped as its forward alone would have it: in a resumed run as in a clean one, with
  any ``batch_size``. The cost: a forward of one window for each window within 1e-5 of the
  threshold, a sliver of any real distribution of scores.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from annotated_types import Ge, Interval

from .base import Column, Filtered, Row, Stage, StageError, update_with_file
from .decode import FRAMES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlignmentConfig:
    """Which windows' frames match their text (defaults: Magma's CLIP filter)."""

    #: a local folder with a transformers CLIPModel and its CLIPProcessor (Magma used
    #: openai/clip-vit-large-patch14-336); None: alignment is off
    checkpoint: str | None = None
    #: a window is kept when its best frame's cosine similarity with the text reaches this
    #: (Magma's curate_list.py: 0.25)
    threshold: Annotated[float, Interval(ge=-1, le=1)] = 0.25
    #: windows per CLIP forward (4 images each), the fixed shape of every forward; None:
    #: ``DEFAULT_WINDOWS_PER_FORWARD``. Give the stage batches of this many windows.
    batch_size: Annotated[int, Ge(1)] | None = None
    device: str | None = None  # None = CUDA when available

    @property
    def enabled(self) -> bool:
        """A checkpoint is given (a pipeline runs the stage only then)."""
        return self.checkpoint is not None


#: Frames scored per window (Magma's ``--num_frames 4``).
FRAMES_PER_WINDOW = 4
#: Windows per forward when the config does not say: 32 images of 336x336.
DEFAULT_WINDOWS_PER_FORWARD = 8
#: How far a window's CLIP scores in a batch may lie from its scores alone (float32 cosines,
#: rounding that depends on the row's place in the batch: ~1e-7 measured); a best score this close
#: to the threshold is a tie, decided by the window's forward of its own.
BATCH_TOLERANCE = 1e-5

CLIP_SCORES = Column("clip_scores", "float32", (FRAMES_PER_WINDOW,), group="text",
                     doc="CLIP cosine similarity of 4 of the window's frames (linspace) with its task text")
CLIP_SCORE = Column("clip_score", "float32", group="text",
                    doc="the best of clip_scores; windows under alignment.threshold are filtered")

#: The rules, by the name the filtered table gives them.
BELOW_THRESHOLD, NO_TASK_TEXT = "ClipScoreBelowThreshold", "NoTaskText"
#: The figure each rule judges: a row it filters carries that figure as its ``value``.
RULE_FIGURES = {BELOW_THRESHOLD: CLIP_SCORE}



def figure_thresholds(config: AlignmentConfig) -> dict[str, float | None]:
    """The threshold of each figure a rule judges, as ``config`` sets it (None: the rule is off)."""
    return {CLIP_SCORE.name: config.threshold if config.enabled else None}


#: The files a CLIP folder needs, each group by any of its names.
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER = ("tokenizer.json", "vocab.json")
_PREPROCESSOR = ("preprocessor_config.json", "processor_config.json")


class AlignmentUnavailable(ValueError):
    """The checkpoint named is not a folder of a transformers CLIP model with its processor."""


def frame_positions(window_len: int) -> np.ndarray:
    """The window frames Magma scores: ``int(linspace(0, T-1, min(4, T+1)))``, padded with the last to 4."""
    picked = np.linspace(0, window_len - 1, min(FRAMES_PER_WINDOW, window_len + 1)).astype(np.int64)
    return np.concatenate([picked, np.full(FRAMES_PER_WINDOW - len(picked), picked[-1], np.int64)])


def check_checkpoint(checkpoint: str | Path) -> Path:
    """The folder, checked before any work: transformers installed, a CLIP config, its weights, a tokenizer
    and an image processor."""
    try:
        import transformers  # noqa: F401
    except ImportError as error:
        raise AlignmentUnavailable(f"text alignment needs transformers ({error}): pip install 'magma-data[curate]', "
                                   "or leave alignment.checkpoint out") from None
    folder = Path(checkpoint).expanduser()
    where = ("pass the folder of a CLIP model saved by transformers (config.json, model.safetensors, the "
             "tokenizer and preprocessor files), e.g. openai/clip-vit-large-patch14-336 as "
             "`hf download openai/clip-vit-large-patch14-336 --local-dir DIR` leaves it")
    if not folder.is_dir():
        raise AlignmentUnavailable(f"text alignment: {folder} is not a folder; {where}")
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError) as error:
        raise AlignmentUnavailable(f"text alignment: {folder}/config.json cannot be read ({error}); {where}") from None
    if model_type != "clip":
        raise AlignmentUnavailable(f"text alignment: {folder} holds a {model_type!r} model, not CLIP; {where}")
    for what, names in (("weights", _WEIGHTS), ("tokenizer", _TOKENIZER), ("image processor config", _PREPROCESSOR)):
        if not any((folder / name).is_file() for name in names):
            raise AlignmentUnavailable(f"text alignment: {folder} has no {what} ({' or '.join(names)}); {where}")
    return folder


def checkpoint_digest(checkpoint: str | Path) -> str:
    """sha256 of the folder's weight files (16 hex digits), for the config hash: the weights, not their path."""
    digest = hashlib.sha256()
    folder = Path(checkpoint)
    for path in sorted([*folder.glob("model*.safetensors"), *folder.glob("pytorch_model*.bin")]):
        digest.update(path.name.encode() + b"\x00")
        update_with_file(digest, path)
    return digest.hexdigest()[:16]


def alignment_note(config: AlignmentConfig) -> str:
    """The line a run says once about alignment, as it says which tracker it picked."""
    if config.checkpoint is None:
        return ("text alignment: off (no CLIP checkpoint; --clip-checkpoint DIR drops windows whose frames do not "
                "match their text)")
    return (f"text alignment: CLIP from {config.checkpoint}, keeping windows whose best of {FRAMES_PER_WINDOW} "
            f"frames scores >= {config.threshold}")


class TextAlignmentStage(Stage):
    """Scores 4 frames of each window against its text with CLIP; filters windows under the threshold.

    The model is loaded on first use (``setup`` in an actor), so the stage is cheap to make and
    ship. A batch that fails is scored again window by window, so one bad window fails alone.
    """

    name = "align"
    columns = (CLIP_SCORES, CLIP_SCORE)

    def __init__(self, config: AlignmentConfig):
        if config.checkpoint is None:
            raise ValueError("TextAlignmentStage needs alignment.checkpoint; a run without one leaves the stage out")
        self.config = config
        self._loaded = None  # (model, processor, device, max_text_tokens)

    @property
    def windows_per_forward(self) -> int:
        """The fixed number of windows in every CLIP forward: the batch to hand the stage."""
        return self.config.batch_size or DEFAULT_WINDOWS_PER_FORWARD

    def setup(self) -> None:
        self._model()

    def _model(self):
        if self._loaded is None:
            import torch
            from transformers import CLIPModel, CLIPProcessor
            from transformers.utils import logging as transformers_logging

            folder = check_checkpoint(self.config.checkpoint)
            transformers_logging.disable_progress_bar()  # a bar per load in every worker's log otherwise
            device = self.config.device or ("cuda" if torch.cuda.is_available() else "cpu")
            model = CLIPModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32).to(device).eval()
            processor = CLIPProcessor.from_pretrained(folder, local_files_only=True, backend="pil")
            self._loaded = (model, processor, device, int(model.config.text_config.max_position_embeddings))
        return self._loaded

    def __call__(self, row: Row) -> Row | Filtered:
        [result] = self.process([row])
        if isinstance(result, Exception):
            raise result
        return result

    def process(self, rows: list[Row]) -> list[Row | Filtered | Exception]:
        """One result per row: its scores, the rule that filters it, or the exception that failed it."""
        results: list[Row | Filtered | Exception | None] = [None] * len(rows)
        scored = []
        for i, row in enumerate(rows):
            if not str(row["task"]).strip():
                results[i] = Filtered(NO_TASK_TEXT, "the window has no task text, so CLIP cannot say whether its "
                                      "frames match it; give the videos their text (a folder's <video>.txt) or "
                                      "leave alignment.checkpoint out")
            else:
                scored.append(i)
        size = self.windows_per_forward
        for start in range(0, len(scored), size):
            self._score_group(rows, scored[start : start + size], results)
        return results

    def _score_group(self, rows: list[Row], indices: list[int], results: list) -> None:
        try:
            scores = self.scores([rows[i][FRAMES.name] for i in indices], [str(rows[i]["task"]) for i in indices])
        except Exception as error:
            if len(indices) == 1:
                results[indices[0]] = error
            else:
                for i in indices:
                    self._score_group(rows, [i], results)
            return
        for k, i in enumerate(indices):
            if self.windows_per_forward > 1 and abs(float(scores[k].max()) - self.config.threshold) <= BATCH_TOLERANCE:
                try:  # a tie: the window's own forward decides, as it would in any batch
                    scores[k] = self.scores([rows[i][FRAMES.name]], [str(rows[i]["task"])], forward_windows=1)[0]
                except Exception as error:
                    results[i] = error
                    continue
            results[i] = self._verdict(scores[k])

    def _verdict(self, scores: np.ndarray) -> Row | Filtered:
        best = float(scores.max())
        if not best >= self.config.threshold:  # NaN fails too
            return Filtered(BELOW_THRESHOLD,
                            f"the best CLIP similarity of the window's frames with its text, {best:.4f}, is below "
                            f"alignment.threshold {self.config.threshold} (Magma's CLIP filter)", value=best)
        return {CLIP_SCORES.name: scores.astype(np.float32), CLIP_SCORE.name: np.float32(best)}

    def scores(self, windows: list[np.ndarray], texts: list[str], forward_windows: int | None = None) -> np.ndarray:
        """[B, 4] float32 cosine similarities of 4 frames of each window (uint8 [T, H, W, 3] RGB) with its text.

        B may be at most ``forward_windows`` (default ``batch_size``): the windows the forward always holds.
        """
        import torch

        model, processor, device, max_text_tokens = self._model()
        size = forward_windows or self.windows_per_forward
        if not 0 < len(windows) <= size:
            raise ValueError(f"scores takes 1 to {size} windows, got {len(windows)}")
        images = []
        for frames in windows:
            if np.ndim(frames) != 4 or np.shape(frames)[-1] != 3:
                raise StageError(f"frames must be [T, H, W, 3] RGB, got shape {np.shape(frames)}; "
                                 "check the decode stage")
            images += [frames[p] for p in frame_positions(len(frames))]  # views: the frames stay where decode put them
        padding = size - len(windows)
        images += images[-FRAMES_PER_WINDOW:] * padding
        pixels = processor.image_processor(images, return_tensors="pt", input_data_format="channels_last")
        tokens = processor.tokenizer([*texts, *[texts[-1]] * padding], padding="max_length", truncation=True,
                                     max_length=max_text_tokens, return_tensors="pt")
        with torch.inference_mode():
            output = model(input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device),
                           pixel_values=pixels["pixel_values"].to(device))
        image_embeds = output.image_embeds.float().reshape(size, FRAMES_PER_WINDOW, -1)  # B F D, unit norm
        text_embeds = output.text_embeds.float()  # B D, unit norm
        scores = (image_embeds * text_embeds[:, None, :]).sum(-1)[: len(windows)]
        return scores.cpu().numpy().astype(np.float32)
