"""``magma-train init``: the tiny model that tests and CI train, and Magma's start from its parts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM
from train_fixtures import batch_of_one, chat, picture

from magma_data.magma_text import ACTION_BINS, LLAMA3_CHAT_TEMPLATE, MAGMA_ADDED_TOKENS
from magma_data.train import MagmaForCausalLM, MagmaProcessor
from magma_data.train.cli import main
from magma_data.train.config import VisionSpec
from magma_data.train.tokenizer import build_tiny_tokenizer, save_tokenizer
from magma_data.train.vision_tower import ClipVisionModel


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_init_size_tiny_writes_a_magma_folder_that_trains(tmp_path):
    run("init", "--size", "tiny", "--output", str(tmp_path / "tiny"))
    model = MagmaForCausalLM.from_pretrained(tmp_path / "tiny")
    processor = MagmaProcessor.from_pretrained(tmp_path / "tiny")
    inputs = batch_of_one(processor, picture(512, 512), chat(processor))
    labels = inputs["input_ids"].clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()

    losses = []
    for _ in range(3):
        torch.manual_seed(0)
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())

    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json",
        "tokenizer.json", "tokenizer_config.json",
    ]
    assert losses[-1] < losses[0]


def test_tiny_init_is_the_same_for_the_same_seed_and_differs_for_another(tmp_path):
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        run("init", "--size", "tiny", "--output", str(tmp_path / name), "--seed", seed)
    read = lambda name, file: (tmp_path / name / file).read_bytes()  # noqa: E731

    for file in ("model.safetensors", "tokenizer.json", "config.json"):
        assert read("a", file) == read("b", file), file
    assert read("a", "model.safetensors") != read("c", "model.safetensors")


def test_the_tiny_tokenizer_is_llama_3_shaped_with_regular_tokens_in_the_action_range():
    tokenizer = build_tiny_tokenizer()

    base = tokenizer.vocab_size
    assert base >= 2 * ACTION_BINS
    action_range = tokenizer.convert_ids_to_tokens(list(range(base - ACTION_BINS, base)))
    assert not set(action_range) & set(tokenizer.all_special_tokens)
    assert all(tokenizer.convert_tokens_to_ids(token) >= base for token in MAGMA_ADDED_TOKENS)
    assert tokenizer.chat_template == LLAMA3_CHAT_TEMPLATE
    assert tokenizer.decode(tokenizer("Mark 12 at [120,88]").input_ids, skip_special_tokens=True) == "Mark 12 at [120,88]"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "tiny", "--from-components"], "choose one"),
        ([], "choose one"),
        (["--from-components"], "needs --llm"),
    ],
)
def test_init_refuses_unclear_requests(tmp_path, args, message):
    result = CliRunner().invoke(main, ["init", "--output", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and message in result.output


def test_init_refuses_to_overwrite_a_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = CliRunner().invoke(main, ["init", "--size", "tiny", "--output", str(tmp_path)])
    assert result.exit_code == 2 and "already holds a model" in result.output


@pytest.fixture()
def components(tmp_path):
    """A small Llama-3-style folder (tokenizer without Magma's tokens) and an open_clip CLIP file."""
    tokenizer = build_tiny_tokenizer(magma_tokens=False)
    torch.manual_seed(5)
    llm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, rope_theta=500000.0, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    eos = [tokenizer.convert_tokens_to_ids("<|end_of_text|>"), tokenizer.eos_token_id]
    llm.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos)
    llm.save_pretrained(tmp_path / "llama")
    save_tokenizer(tokenizer, tmp_path / "llama")

    tower = {"convnext_depths": [1, 2, 1, 1], "convnext_dims": [8, 16, 24, 40], "clip_embed_dim": 12}
    spec = VisionSpec(
        depths=(1, 2, 1, 1), dims=(8, 16, 24, 40), clip_embed_dim=12, layer_norm_eps=1e-5, drop_path_rate=0.1,
        projector_depth=2, projector_in=40, projector_out=32, anyres_strategy="crop", use_image_start_end=False,
    )
    visual = {f"visual.{key}": torch.randn(value.shape) for key, value in ClipVisionModel(spec).state_dict().items()}
    text_tower = {"token_embedding.weight": torch.randn(10, 4), "logit_scale": torch.ones(())}
    torch.save({**visual, **text_tower}, tmp_path / "open_clip_pytorch_model.bin")
    return tmp_path / "llama", tmp_path / "open_clip_pytorch_model.bin", llm, visual, tower


def test_init_from_components_assembles_magma_as_its_train_py_does(components, tmp_path):
    llama, clip_file, llm, visual, tower = components
    base_vocab = llm.config.vocab_size

    run("init", "--from-components", "--llm", str(llama), "--vision", str(clip_file), "--output", str(tmp_path / "magma"), "--dtype", "fp32")
    model = MagmaForCausalLM.from_pretrained(tmp_path / "magma")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "magma")
    config = json.loads((tmp_path / "magma" / "config.json").read_text())

    # <image>, then <pad> (Llama-3 has none), then <action>, each new row the mean of the rows before it
    ids = [tokenizer.convert_tokens_to_ids(token) for token in ("<image>", "<pad>", "<action>")]
    assert ids == [base_vocab, base_vocab + 1, base_vocab + 2] and tokenizer.pad_token == "<pad>"
    assert config["image_token_index"] == ids[0] and config["text_config"]["vocab_size"] == base_vocab + 3
    assert config["tokenizer_vocab_size"] == tokenizer.vocab_size
    for ours, theirs in (
        (model.get_input_embeddings().weight, llm.get_input_embeddings().weight),
        (model.get_output_embeddings().weight, llm.get_output_embeddings().weight),
    ):
        assert torch.equal(ours[:base_vocab], theirs)
        for row in range(base_vocab, base_vocab + 3):
            torch.testing.assert_close(ours[row], ours[:row].mean(dim=0))
    llm_state = llm.state_dict()
    for key, value in model.language_model.state_dict().items():
        if "embed_tokens" not in key and "lm_head" not in key:
            assert torch.equal(value, llm_state[key]), key
    for key, value in visual.items():
        assert torch.equal(model.vision_tower.clip_vision_model.get_parameter(key.removeprefix("visual.")), value), key
    assert {key: config["vision_config"][key] for key in tower} == tower
    assert config["vision_config"]["img_anyres_strategy"] == "crop"
    assert config["vision_config"]["mm_projector_type"] == "mlp2x_gelu"
    assert torch.count_nonzero(model.multi_modal_projector.row_seperator) == 0
    assert 0.015 < model.multi_modal_projector.proj[2].weight.std() < 0.025  # initializer_range 0.02
    assert GenerationConfig.from_pretrained(tmp_path / "magma").eos_token_id == llm.generation_config.eos_token_id

    processor = MagmaProcessor.from_pretrained(tmp_path / "magma")
    inputs = batch_of_one(processor, picture(600, 400), chat(processor))
    with torch.no_grad():
        assert torch.isfinite(model(**inputs, labels=inputs["input_ids"]).loss)


def test_from_components_refuses_a_clip_file_without_a_visual_tower(components, tmp_path):
    llama, _, _, _, _ = components
    torch.save({"token_embedding.weight": torch.zeros(3, 2)}, tmp_path / "text_only.bin")
    result = CliRunner().invoke(
        main, ["init", "--from-components", "--llm", str(llama), "--vision", str(tmp_path / "text_only.bin"), "--output", str(tmp_path / "m")]
    )
    assert result.exit_code != 0 and "no 'visual.*' tensors" in str(result.exception)


def test_help_lists_the_recipes_and_each_option_shows_the_recipes_value():
    listed = run("--help")
    assert all(name in listed for name in ("pretrain", "finetune", "finetune-lora"))
    assert "Recipes" in listed
    pretrain = " ".join(run("pretrain", "--help").split())  # as one line, however click wraps it
    assert "[pretrain: constant]" in pretrain and "[pretrain: 3]" in pretrain and "[default: pretrain]" in pretrain
    assert "[finetune: cosine]" in run("finetune", "--help")


@pytest.fixture()
def captured(monkeypatch):
    """The config a training command would run with (the loop itself is not started)."""
    from magma_data.train import trainer

    configs = []
    monkeypatch.setattr(trainer, "train", configs.append)
    return configs


def test_options_override_the_recipe_which_overrides_the_fields_defaults(tmp_path, captured):
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "mine.yaml").write_text("train: llm,projector\nlr: 0.5\nschedule: constant\nwarmup_ratio: 0\nepochs: 2\n"
                                        "batch_size: 4\n")
    common = ["--data", str(tmp_path), "--model", str(model), "--output", str(tmp_path / "out")]

    run("finetune", *common)
    run("pretrain", *common, "--lr", "2e-5", "--train", "projector")
    run("finetune", *common, "--config", str(tmp_path / "mine.yaml"), "--epochs", "5")
    run("finetune", *common, "--config", "finetune-lora", "--lora-rank", "8")
    finetune, pretrain, mine, lora = captured

    assert (finetune.recipe, finetune.lr, finetune.schedule, finetune.warmup_ratio, finetune.epochs) == (
        "finetune", 1e-5, "cosine", 0.0, 1)
    assert finetune.train == ("vision", "projector", "llm") and finetune.batch_size == 1 and not finetune.lora
    assert (pretrain.lr, pretrain.schedule, pretrain.epochs, pretrain.train) == (2e-5, "constant", 3, ("projector",))
    assert (mine.train, mine.lr, mine.epochs, mine.batch_size) == (("llm", "projector"), 0.5, 5, 4)
    assert lora.lora and lora.lora_rank == 8 and lora.train == ("llm",) and lora.lr == 2e-4
    assert (pretrain.global_batch, lora.global_batch, lora.batch_size, finetune.global_batch) == (1024, 128, 16, None)


def test_each_recipe_takes_its_sources_settings_and_names_the_source_of_each():
    """One recipe per source; every setting line says where its value comes from."""
    from magma_data.train.settings import read_recipe, recipe_names

    assert recipe_names() == ["finetune", "finetune-820k", "finetune-lora", "pretrain", "pretrain-openx"]
    folder = Path(__file__).resolve().parents[1] / "magma_data" / "train" / "recipes"
    for name in recipe_names():
        lines = (folder / f"{name}.yaml").read_text().splitlines()
        assert lines[0].startswith("# ") and any("Source:" in line for line in lines if line.startswith("#")), name
        unsourced = [line for line in lines if line and not line.startswith("#") and "#" not in line]
        assert not unsourced, f"{name}: {unsourced}"
    for script in ("pretrain-openx", "finetune-820k"):  # the released scripts: projector only, 4 GPUs x 4
        recipe = read_recipe(script)
        assert (recipe["train"], recipe["batch_size"], recipe["global_batch"], recipe["lr"], recipe["schedule"],
                recipe["warmup_ratio"], recipe["epochs"]) == ("projector", 4, 16, 1e-5, "cosine", 0.03, 1)
    paper = read_recipe("pretrain")
    assert (paper["train"], paper["global_batch"], paper["lr"], paper["schedule"], paper["epochs"]) == (
        "all", 1024, 1e-5, "constant", 3)
    assert all(read_recipe(name)["som_tom_drop"] == 0.2 for name in recipe_names())


def test_the_global_batch_sets_the_accumulation_for_the_processes_there_are(tmp_path):
    from magma_data.train.settings import TrainConfig

    model = tmp_path / "model"
    model.mkdir()
    config = TrainConfig.from_recipe("finetune-820k", data=(str(tmp_path),), model=model, output=tmp_path / "out")
    assert [config.for_processes(world).grad_accum for world in (1, 2, 4)] == [4, 2, 1]
    with pytest.raises(ValueError, match="not a multiple of --batch-size 4 x 8 processes"):
        config.for_processes(8)
    assert TrainConfig.from_recipe("finetune", data=(str(tmp_path),), model=model, output=tmp_path / "out",
                                   grad_accum=3).for_processes(4).grad_accum == 3  # no global batch: as given
    with pytest.raises(ValueError, match="both set the samples of a step"):
        TrainConfig.from_recipe("finetune-820k", data=(str(tmp_path),), model=model, output=tmp_path / "out",
                                grad_accum=2)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "fast"], "'fast' is not a valid float"),
        (["--lr", "0"], "--lr takes a number > 0, not 0.0"),
        (["--batch-size", "0"], "--batch-size takes an integer >= 1"),
        (["--train", "llm,eyes"], "--train takes a list, each item one of vision, projector, llm"),
        (["--config", "nonesuch"], "no such recipe"),
    ],
)
def test_values_a_field_does_not_take_are_refused_in_one_line(tmp_path, captured, args, message):
    model = tmp_path / "model"
    model.mkdir()
    result = CliRunner().invoke(main, ["finetune", "--data", str(tmp_path), "--model", str(model),
                                       "--output", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not captured


def test_a_recipe_setting_an_unknown_field_is_refused(tmp_path):
    from magma_data.train.settings import TrainConfig

    (tmp_path / "typo.yaml").write_text("learning_rate: 1e-4\n")
    with pytest.raises(ValueError, match="sets learning_rate, which TrainConfig does not have"):
        TrainConfig.from_recipe(tmp_path / "typo.yaml", data=("x",), model="m", output="o")
