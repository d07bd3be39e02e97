"""Loading and saving Magma folders with stock transformers: round trips, shard layout, strict keys."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from train_fixtures import as_official_config, batch_of_one, chat, picture, redraw_weights, tiny_magma

from magma_data.train import MagmaForCausalLM, MagmaProcessor
from magma_data.train.weights import checkpoint_shapes, tower_structure


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_magma(tmp_path_factory)


@pytest.fixture(scope="module")
def inputs(tiny):
    processor = MagmaProcessor.from_pretrained(tiny)
    return batch_of_one(processor, picture(900, 500), chat(processor))


def logits(model: MagmaForCausalLM, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**inputs).logits


def test_save_then_load_gives_the_same_logits_from_sharded_safetensors(tiny, inputs, tmp_path):
    model = redraw_weights(MagmaForCausalLM.from_pretrained(tiny), seed=2)

    model.save_pretrained(tmp_path, max_shard_size="200KB")
    reloaded = MagmaForCausalLM.from_pretrained(tmp_path)

    assert torch.equal(logits(reloaded, inputs), logits(model, inputs))


def test_a_sharded_save_writes_magma_8b_file_names_and_a_complete_index(tiny, tmp_path):
    model = MagmaForCausalLM.from_pretrained(tiny)
    model.save_pretrained(tmp_path, max_shard_size="200KB")

    shards = sorted(path.name for path in tmp_path.glob("*.safetensors"))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    state = model.state_dict()
    assert len(shards) > 2
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    assert index["weight_map"].keys() == state.keys() and set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())
    stored = {}
    for shard in shards:
        stored |= load_file(tmp_path / shard)
    assert stored.keys() == state.keys()
    assert all(torch.equal(stored[key], state[key]) for key in state)


def test_layer_scales_named_gamma_survive_stock_transformers(tiny, tmp_path):
    """transformers 4.x renamed checkpoint keys holding "gamma" on load and dropped Magma's layer
    scales; transformers 5 renames only "LayerNorm.gamma". Every gamma must arrive as stored."""
    model = redraw_weights(MagmaForCausalLM.from_pretrained(tiny), seed=3)
    model.save_pretrained(tmp_path)
    stored = {key: value for key, value in load_file(tmp_path / "model.safetensors").items() if key.endswith(".gamma")}

    reloaded = MagmaForCausalLM.from_pretrained(tmp_path)

    assert len(stored) == sum(model.spec.depths) == 5
    for key, value in stored.items():
        assert torch.equal(reloaded.get_parameter(key), value), key
        assert not torch.allclose(value, torch.full_like(value, 1e-6)), f"{key} is at timm's initial value"


def test_a_tensor_missing_from_the_checkpoint_is_an_error_naming_it(tiny, tmp_path):
    shutil.copytree(tiny, tmp_path, dirs_exist_ok=True)
    state = load_file(tmp_path / "model.safetensors")
    gone = "vision_tower.clip_vision_model.trunk.stages.2.blocks.1.gamma"
    del state[gone]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})

    with pytest.raises(ValueError, match=r"1 missing keys: .*stages\.2\.blocks\.1\.gamma"):
        MagmaForCausalLM.from_pretrained(tmp_path)


def test_an_unexpected_tensor_in_the_checkpoint_is_an_error_naming_it(tiny, tmp_path):
    shutil.copytree(tiny, tmp_path, dirs_exist_ok=True)
    state = load_file(tmp_path / "model.safetensors")
    state["multi_modal_projector.stray"] = torch.zeros(3)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})

    with pytest.raises(ValueError, match=r"1 unexpected keys: multi_modal_projector\.stray"):
        MagmaForCausalLM.from_pretrained(tmp_path)


def test_a_config_json_written_like_magma_8b_s_loads_with_the_tower_read_from_tensor_shapes(tiny, inputs, tmp_path):
    """Magma-8B's config.json (transformers 4.44) names its backbone but not the tower's structure,
    copies the Llama fields to the top level, and points auto_map at remote code we do not run."""
    shutil.copytree(tiny, tmp_path, dirs_exist_ok=True)
    structure = as_official_config(tmp_path)

    assert tower_structure(checkpoint_shapes(tmp_path)) == structure
    model = MagmaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert model.config.vision_config["convnext_depths"] == structure["convnext_depths"]
    assert model.config.text_config.rope_parameters["rope_theta"] == 500000.0
    assert torch.equal(logits(model, inputs), logits(MagmaForCausalLM.from_pretrained(tiny), inputs))


def test_config_json_keeps_rope_theta_for_magmas_own_transformers_4_code(tiny):
    """transformers 5 writes only rope_parameters; 4.x would fall back to rope_theta 10000."""
    text = json.loads((tiny / "config.json").read_text())["text_config"]
    assert text["rope_theta"] == 500000.0 and text["rope_scaling"] is None
    assert MagmaForCausalLM.from_pretrained(tiny).config.text_config.rope_parameters["rope_theta"] == 500000.0
