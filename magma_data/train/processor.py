"""MagmaProcessor: Magma's image processor and the folder's tokenizer, outputs equal to the official.

Image processing (docs/magma-model.md §Image processor; ``magma/image_processing_magma.py`` @ e373780): pixels to [0, 1],
CLIP mean / std, the best-fit crop grid among all (cols, rows) with cols x rows <= ``num_crops``,
a bilinear stretch (no aspect-preserving pad, no antialias) to (rows x base, cols x base), and
row-major ``base`` x ``base`` crops. ``preprocessor_config.json`` keys are read and written as
Magma-8B names them (``anyres_strategy``, ``base_img_size``, ``num_crops``, ``image_mean``, ...);
``anyres_strategy`` does not change the output (the official ``preprocess`` always crops; the model's
``vision_config`` decides how crops are encoded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoTokenizer, BatchFeature, PreTrainedTokenizerBase

from .tokenizer import save_tokenizer

PREPROCESSOR_CONFIG = "preprocessor_config.json"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def crop_grids(num_crops: int) -> list[tuple[int, int]]:
    """Candidate (cols, rows) grids in the official order: cols 1..n, rows 1..n // cols."""
    return [(cols, rows) for cols in range(1, num_crops + 1) for rows in range(1, num_crops // cols + 1)]


def best_grid(width: int, height: int, num_crops: int, base: int) -> tuple[int, int]:
    """(rows, cols) of the crop grid for an image (LLaVA-NeXT best fit).

    The candidate keeping the most of the image's resolution wins (at most its own pixel count);
    ties go to the one wasting the fewest pixels, then to the first.
    """
    best, most_kept, least_wasted = (1, 1), 0, float("inf")
    for cols, rows in crop_grids(num_crops):
        grid_w, grid_h = cols * base, rows * base
        scale = min(grid_w / width, grid_h / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        wasted = grid_w * grid_h - kept
        if kept > most_kept or (kept == most_kept and wasted < least_wasted):
            best, most_kept, least_wasted = (rows, cols), kept, wasted
    return best


@dataclass
class MagmaImageProcessor:
    """Images -> ``pixel_values`` [crops, 3, base, base] (all images concatenated) and
    ``image_sizes`` [images, 2] (rows, cols of each image's grid)."""

    base_img_size: int = 512
    num_crops: int = 4
    anyres_strategy: str = "crop"
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    #: other keys of preprocessor_config.json, written back unchanged
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> MagmaImageProcessor:
        settings = json.loads((Path(folder) / PREPROCESSOR_CONFIG).read_text())
        known = {"base_img_size", "num_crops", "anyres_strategy", "image_mean", "image_std"}
        return cls(
            **{key: tuple(value) if isinstance(value, list) else value for key, value in settings.items() if key in known},
            extra={key: value for key, value in settings.items() if key not in known},
        )

    def save_pretrained(self, folder: str | Path) -> None:
        settings = {
            "image_processor_type": "MagmaImageProcessor",
            "processor_class": "MagmaProcessor",
            **self.extra,
            "anyres_strategy": self.anyres_strategy,
            "base_img_size": self.base_img_size,
            "num_crops": self.num_crops,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }
        (Path(folder) / PREPROCESSOR_CONFIG).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")

    def __call__(
        self, images: Image.Image | np.ndarray | list, num_crops: int | None = None, return_tensors: str | None = "pt"
    ) -> BatchFeature:
        images = images if isinstance(images, list) else [images]
        crops, grids = [], []
        for image in images:
            image_crops, grid = self.crops(image, num_crops or self.num_crops)
            crops.append(image_crops)
            grids.append(grid)
        return BatchFeature({"pixel_values": torch.cat(crops), "image_sizes": grids}, tensor_type=return_tensors)

    def crops(self, image: Image.Image | np.ndarray, num_crops: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """One image -> ([rows·cols, 3, base, base], (rows, cols))."""
        pixels = self.normalized(image)
        _, height, width = pixels.shape
        base = self.base_img_size
        rows, cols = best_grid(width, height, num_crops, base)
        # bilinear on the normalised tensor, align_corners False, no antialias: as the official
        resized = F.interpolate(pixels[None], size=(rows * base, cols * base), mode="bilinear")[0]
        crops = resized.view(3, rows, base, cols, base).permute(1, 3, 0, 2, 4).reshape(rows * cols, 3, base, base)
        return crops, (rows, cols)

    def normalized(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """[3, H, W] float32: uint8 pixels / 255 (float arrays as they are), then CLIP mean / std."""
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got an array of shape {array.shape}")
        pixels = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        pixels = pixels.float().div(255) if pixels.dtype == torch.uint8 else pixels.float()
        mean = torch.tensor(self.image_mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.image_std, dtype=torch.float32)[:, None, None]
        return (pixels - mean) / std


class MagmaProcessor:
    """``processor(texts=prompt, images=[...])`` -> input_ids, attention_mask, pixel_values, image_sizes.

    The tokenizer runs with special tokens on, as the official processor's does: a prompt rendered
    by the Llama-3 chat template already starts with ``<|begin_of_text|>`` and gets a second one
    (official oddity, docs/magma-model.md §Official behaviours; the model was trained that way).
    """

    def __init__(self, image_processor: MagmaImageProcessor, tokenizer: PreTrainedTokenizerBase):
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> MagmaProcessor:
        return cls(MagmaImageProcessor.from_pretrained(folder), AutoTokenizer.from_pretrained(str(folder)))

    def save_pretrained(self, folder: str | Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.image_processor.save_pretrained(folder)
        save_tokenizer(self.tokenizer, Path(folder))

    def __call__(
        self,
        texts: str | list[str] | None = None,
        images: Image.Image | np.ndarray | list | None = None,
        padding: bool | str = False,
        truncation: bool | None = None,
        max_length: int | None = None,
        num_crops: int | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        data: dict[str, Any] = {}
        if texts is not None:
            data.update(
                self.tokenizer(
                    texts, padding=padding, truncation=truncation, max_length=max_length, return_tensors=return_tensors
                )
            )
        if images is not None:
            data.update(self.image_processor(images, num_crops=num_crops, return_tensors=return_tensors))
        return BatchFeature(data)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)
