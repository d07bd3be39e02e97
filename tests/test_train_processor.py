"""MagmaProcessor: the best-fit crop grid, row-major crops, CLIP normalisation and the tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from train_fixtures import chat, picture, tiny_magma

from magma_data.train import MagmaProcessor
from magma_data.train.processor import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, MagmaImageProcessor, best_grid, crop_grids


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_magma(tmp_path_factory)


def test_candidate_grids_for_four_crops_are_the_official_eight():
    assert crop_grids(4) == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (3, 1), (4, 1)]


@pytest.mark.parametrize(
    "width, height, expected",
    [
        (512, 512, (1, 1)),
        (640, 480, (1, 2)),  # 1024x512 keeps all 307200 pixels; 2x2 keeps as many but wastes more
        (300, 900, (2, 1)),
        (2000, 300, (1, 4)),
        (1200, 1100, (2, 2)),
        (100, 100, (1, 1)),  # every grid keeps all 10000 pixels: the least waste wins
        (1536, 512, (1, 3)),
    ],
)
def test_the_best_fit_grid_keeps_the_most_resolution_then_wastes_the_least(width, height, expected):
    """(rows, cols) at Magma-8B's settings: 512-px crops, at most 4."""
    assert best_grid(width, height, num_crops=4, base=512) == expected


def test_crops_are_cut_row_major_from_the_stretched_image():
    # a 2 x 2 grid of flat colours, already at the grid's size, so the stretch changes nothing
    colours = [[(255, 0, 0), (0, 255, 0)], [(0, 0, 255), (255, 255, 255)]]
    pixels = np.zeros((128, 128, 3), np.uint8)
    for row in range(2):
        for col in range(2):
            pixels[row * 64 : (row + 1) * 64, col * 64 : (col + 1) * 64] = colours[row][col]
    processor = MagmaImageProcessor(base_img_size=64, num_crops=4)

    out = processor(Image.fromarray(pixels))

    assert out["image_sizes"].tolist() == [[2, 2]]
    assert out["pixel_values"].shape == (4, 3, 64, 64)
    mean, std = torch.tensor(OPENAI_CLIP_MEAN), torch.tensor(OPENAI_CLIP_STD)
    for crop, colour in zip(out["pixel_values"], [c for row in colours for c in row]):
        expected = (torch.tensor(colour) / 255 - mean) / std
        torch.testing.assert_close(crop[:, 32, 32], expected)
        assert crop.std(dim=(1, 2)).max() < 1e-6


def test_images_are_stretched_without_keeping_the_aspect_ratio():
    processor = MagmaImageProcessor(base_img_size=64, num_crops=1)
    out = processor(picture(300, 40))
    assert out["pixel_values"].shape == (1, 3, 64, 64) and out["image_sizes"].tolist() == [[1, 1]]


def test_several_images_concatenate_their_crops_and_list_their_grids(tiny):
    processor = MagmaProcessor.from_pretrained(tiny)
    out = processor(texts=chat(processor), images=[picture(640, 480), picture(100, 100), picture(1100, 1200)])

    assert out["image_sizes"].tolist() == [[1, 2], [1, 1], [2, 2]]
    assert out["pixel_values"].shape == (7, 3, 512, 512)
    assert set(out.keys()) == {"input_ids", "attention_mask", "pixel_values", "image_sizes"}


def test_a_chat_template_prompt_gets_a_second_begin_of_text_as_in_magma(tiny):
    processor = MagmaProcessor.from_pretrained(tiny)
    text = chat(processor)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are agent")

    ids = processor(texts=text)["input_ids"][0]

    bos = processor.tokenizer.bos_token_id
    assert ids[:2].tolist() == [bos, bos] and ids[2] != bos


def test_preprocessor_config_round_trips_with_magma_8b_keys(tiny, tmp_path):
    settings = json.loads((tiny / "preprocessor_config.json").read_text())
    assert {key: settings[key] for key in ("anyres_strategy", "base_img_size", "num_crops")} == {
        "anyres_strategy": "crop",
        "base_img_size": 512,
        "num_crops": 4,
    }
    settings["auto_map"] = {"AutoProcessor": "processing_magma.MagmaProcessor"}  # as hosted: kept, not used
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(settings))

    processor = MagmaImageProcessor.from_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    assert json.loads((tmp_path / "preprocessor_config.json").read_text()) == settings


def test_rgba_and_grayscale_images_are_read_as_rgb_and_other_arrays_refused():
    processor = MagmaImageProcessor(base_img_size=32, num_crops=1)
    rgb = picture(40, 30)
    reference = processor(rgb)["pixel_values"]
    assert torch.equal(processor(rgb.convert("RGBA"))["pixel_values"], reference)
    assert processor(rgb.convert("L"))["pixel_values"].shape == reference.shape
    with pytest.raises(ValueError, match=r"RGB image \(H, W, 3\)"):
        processor(np.zeros((30, 40), np.uint8))
