"""LoRA through peft: only the adapters train, the merged save is base + B·A·alpha/r, and an adapter
folder loads with peft.PeftModel.from_pretrained on the start model; QLoRA is refused without CUDA."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner
from peft import PeftModel
from safetensors.torch import load_file
from train_fixtures import batch_of_one, chat, official_layout_magma, picture, tiny_magma, tom_shards

from magma_data.train import MagmaForCausalLM, MagmaProcessor
from magma_data.train.cli import main
from magma_data.train.lora import load_model
from magma_data.train.settings import LLAMA_LINEAR_LAYERS, TrainConfig
from magma_data.train.trainer import train
from magma_data.train.training_log import read_log

RANK, ALPHA = 4, 8.0


def _config(tmp_path_factory, output, **changes) -> TrainConfig:
    settings = dict(
        data=(str(tom_shards(tmp_path_factory)),), model=tiny_magma(tmp_path_factory), output=output, max_steps=6,
        batch_size=2, lr=2e-2, precision="fp32", num_workers=0, progress=False, validation_fraction=0.0,
        lora_rank=RANK, lora_alpha=ALPHA, lora_dropout=0.0, global_batch=None, gradient_checkpointing=False,
    )
    return TrainConfig.from_recipe("finetune-lora", **{**settings, **changes})


def _logits(model, processor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**batch_of_one(processor, picture(640, 480), chat(processor))).logits


def test_lora_trains_only_the_adapters_and_saves_them_merged_or_alone(tmp_path_factory, tmp_path):
    merged_config = _config(tmp_path_factory, tmp_path / "merged")
    train(merged_config)
    adapter_config = dataclasses.replace(merged_config, output=tmp_path / "adapter", lora_save="adapter")
    train(adapter_config)

    losses = [record["loss"] for record in read_log(merged_config.output)]
    assert losses[-1] < losses[0]
    assert [record["loss"] for record in read_log(adapter_config.output)] == pytest.approx(losses, rel=1e-6)

    # the adapter folder: peft's files, only LoRA weights, the start model named as its base
    adapter = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert adapter and all(".lora_A." in key or ".lora_B." in key for key in adapter)
    assert {key.split(".")[-3] for key in adapter} == set(LLAMA_LINEAR_LAYERS)
    settings = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert settings["r"] == RANK and settings["lora_alpha"] == ALPHA and settings["task_type"] == "CAUSAL_LM"
    assert settings["base_model_name_or_path"] == str(tiny_magma(tmp_path_factory).resolve())

    # the merged folder: every weight the start model's, except W + B·A·alpha/r in each adapted layer
    start = load_file(tiny_magma(tmp_path_factory) / "model.safetensors")
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    assert merged.keys() == start.keys()
    adapted = set()
    for key, value in start.items():
        layer = key.removesuffix(".weight")
        lora_a = adapter.get(f"base_model.model.{layer}.lora_A.weight")
        if lora_a is None:
            assert torch.equal(merged[key], value), key
            continue
        adapted.add(key)
        expected = value + adapter[f"base_model.model.{layer}.lora_B.weight"] @ lora_a * (ALPHA / RANK)
        torch.testing.assert_close(merged[key], expected, rtol=1e-6, atol=1e-6, msg=key)
        assert not torch.equal(merged[key], value), key
    assert len(adapted) == len(LLAMA_LINEAR_LAYERS) * 2  # 2 decoder layers

    # peft loads the adapters on the start model, and gives the merged model's logits
    processor = MagmaProcessor.from_pretrained(tmp_path / "adapter")
    with_adapters = PeftModel.from_pretrained(MagmaForCausalLM.from_pretrained(tiny_magma(tmp_path_factory)),
                                              str(tmp_path / "adapter"))
    expected = _logits(MagmaForCausalLM.from_pretrained(tmp_path / "merged"), processor)
    torch.testing.assert_close(_logits(with_adapters, processor), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(_logits(load_model(tmp_path / "adapter", torch.float32), processor), expected,
                               rtol=1e-4, atol=1e-5)


def test_an_adapter_trained_from_a_folder_without_action_carries_the_new_embedding_rows(tmp_path_factory, tmp_path):
    official = official_layout_magma(tmp_path / "official")
    config = _config(tmp_path_factory, tmp_path / "adapter", model=official, max_steps=2, lora_save="adapter")
    train(config)

    processor = MagmaProcessor.from_pretrained(tmp_path / "adapter")
    base = MagmaForCausalLM.from_pretrained(official)
    base.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
    with_adapters = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).merge_and_unload()
    start = MagmaForCausalLM.from_pretrained(official)
    for ours, theirs in ((with_adapters.get_input_embeddings(), start.get_input_embeddings()),
                         (with_adapters.get_output_embeddings(), start.get_output_embeddings())):
        assert torch.equal(ours.weight[-1], theirs.weight.mean(dim=0))
    torch.testing.assert_close(_logits(load_model(tmp_path / "adapter", torch.float32), processor),
                               _logits(with_adapters, processor))


def test_qlora_is_refused_on_a_machine_without_cuda_and_lora_options_are_checked(tmp_path_factory, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: QLoRA would run")
    common = ["finetune", "--config", "finetune-lora", "--data", str(tom_shards(tmp_path_factory)), "--model",
              str(tiny_magma(tmp_path_factory)), "--output", str(tmp_path / "run")]
    refused = CliRunner().invoke(main, [*common, "--bits", "4", "--lora-save", "adapter"])
    assert refused.exit_code == 2 and "needs a CUDA GPU" in refused.output and not (tmp_path / "run").exists()
    for extra, message in ((["--bits", "4"], "--lora-save adapter"), (["--train", "all"], "--train llm"),
                           (["--no-lora", "--bits", "8"], "add --lora")):
        result = CliRunner().invoke(main, [*common, *extra])
        assert result.exit_code == 2 and message in result.output, result.output
