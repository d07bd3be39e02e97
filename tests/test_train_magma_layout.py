"""From a folder in Magma's official layout whose tokenizer has no ``<action>`` (as Magma-8B's):
eval, a short fine-tune, eval again, and the trained folder reloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from train_fixtures import official_layout_magma, picture, tom_shards

from magma_data.magma_text import ACTION_DIMENSIONS, ACTION_TOKEN, action_turn
from magma_data.train import MagmaForCausalLM, MagmaProcessor
from magma_data.train.cli import main
from magma_data.train.weights import checkpoint_shapes

NO_ACTION = f"the model has no {ACTION_TOKEN} token"


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    return official_layout_magma(tmp_path_factory.mktemp("official") / "magma-8b-layout")


def robot_rows(folder: Path, action_ids: list[int]) -> Path:
    """A LLaVA export with two robot rows (``magma-data export --format llava`` writes their
    ``action_token_ids``): an action turn whose answer is the 7 ``<action>`` placeholders."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(2):
        picture(96, 96, seed=index).save(folder / f"frame{index}.png")
        rows.append({"id": f"robot-{index}", "image": f"frame{index}.png", "conversations": action_turn("open the drawer"),
                     "action_token_ids": action_ids})
    (folder / "robot.json").write_text(json.dumps(rows))
    return folder / "robot.json"


def invoke(*args: str) -> str:
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_the_fixture_is_laid_out_as_magma_8b_is(official):
    files = sorted(path.name for path in official.iterdir())
    shards = [name for name in files if name.startswith("model-")]
    assert len(shards) > 1 and "model.safetensors.index.json" in files
    assert {"config.json", "preprocessor_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    config = json.loads((official / "config.json").read_text())
    assert "convnext_depths" not in config["vision_config"] and config["vocab_size"] == config["text_config"]["vocab_size"]
    vocabulary = json.loads((official / "tokenizer.json").read_text())["added_tokens"]
    assert {"<image>", "<pad>"} <= {token["content"] for token in vocabulary} and ACTION_TOKEN not in str(vocabulary)


def test_eval_finetune_and_eval_again_from_an_official_folder_without_action(official, tmp_path_factory, tmp_path):
    shards = tom_shards(tmp_path_factory)
    start_tokenizer = MagmaProcessor.from_pretrained(official).tokenizer
    base = start_tokenizer.vocab_size
    robot = robot_rows(tmp_path / "robot", list(range(base - ACTION_DIMENSIONS, base)))
    common = ["--data", shards, "--data", robot]

    said = invoke("eval", "--model", official, *common, "--output", tmp_path / "before", "--split", "all",
                  "--limit", "3", "--max-new-tokens", "4")
    before = json.loads((tmp_path / "before" / "eval.json").read_text())
    assert before["sources"]["robot"]["skipped_rows"] == {NO_ACTION: 2} and before["sources"]["robot"]["loss"] is None
    assert before["sources"]["sample"]["skipped_rows"] == {} and before["sources"]["sample"]["tom_questions"] >= 1
    assert "has no <action> token" in said

    said = invoke("finetune", "--model", official, *common, "--output", tmp_path / "run", "--max-steps", "2",
                  "--batch-size", "2", "--lr", "1e-3", "--train", "projector", "--validation-fraction", "0",
                  "--num-workers", "0", "--no-progress", "--precision", "fp32")
    assert said.count("has no <action>: added as Magma's train.py adds it") == 1
    trained = MagmaForCausalLM.from_pretrained(tmp_path / "run")
    tokenizer = MagmaProcessor.from_pretrained(tmp_path / "run").tokenizer
    start = MagmaForCausalLM.from_pretrained(official)
    old = len(start_tokenizer)
    assert tokenizer.convert_tokens_to_ids(ACTION_TOKEN) == old and len(tokenizer) == old + 1
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["text_config"]["vocab_size"] == config["vocab_size"] == old + 1
    assert config["image_token_index"] == start.config.image_token_index and config["tokenizer_vocab_size"] == base
    for ours, theirs in ((trained.get_input_embeddings(), start.get_input_embeddings()),
                         (trained.get_output_embeddings(), start.get_output_embeddings())):
        assert torch.equal(ours.weight[:old], theirs.weight)  # --train projector: the embeddings stay as they were
        assert torch.equal(ours.weight[old], theirs.weight.mean(dim=0))  # the new row: the mean of the others
    record = json.loads((tmp_path / "run" / "training.json").read_text())
    assert record["added_tokens"] == [ACTION_TOKEN] and record["skipped_rows"] == {}
    shapes = checkpoint_shapes(tmp_path / "run")
    assert shapes["language_model.model.embed_tokens.weight"][0] == old + 1
    with safe_open(tmp_path / "run" / "model.safetensors", framework="pt") as stored:
        assert stored.metadata()["format"] == "pt"

    invoke("eval", "--model", tmp_path / "run", *common, "--output", tmp_path / "after", "--split", "all", "--limit", "3",
           "--max-new-tokens", "4")
    after = json.loads((tmp_path / "after" / "eval.json").read_text())
    assert after["sources"]["robot"]["skipped_rows"] == {} and after["sources"]["robot"]["loss"] > 0
    assert after["sources"]["sample"]["rows"] == before["sources"]["sample"]["rows"]
