"""magma-train pretrain / finetune: the loop, checkpoints and exact resume, bad rows, several processes."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from train_fixtures import tiny_magma, tom_shards

from magma_data.train import MagmaForCausalLM, MagmaProcessor
from magma_data.train import trainer as trainer_module
from magma_data.train.cli import main
from magma_data.train.checkpoint import checkpoints
from magma_data.train.settings import TrainConfig
from magma_data.train.trainer import train
from magma_data.train.training_log import read_log

MAGMA_TRAIN = str(Path(sys.executable).with_name("magma-train"))


def _config(tmp_path_factory, output: Path, **changes) -> TrainConfig:
    settings = dict(
        data=(str(tom_shards(tmp_path_factory)),), model=tiny_magma(tmp_path_factory), output=output,
        batch_size=1, grad_accum=2, lr=3e-3, precision="fp32", num_workers=0, progress=False, log_every=1,
        validation_fraction=0.0,
    )
    return TrainConfig.from_recipe("finetune", **{**settings, **changes})


class Stop(Exception):
    pass


def test_resuming_after_a_stop_repeats_the_uninterrupted_losses(tmp_path_factory, tmp_path, monkeypatch):
    """Stopped after step 3 (checkpoint at 2): the resumed run's steps 3-5 equal the uninterrupted ones,
    marks re-drawn per epoch included."""
    config = _config(tmp_path_factory, tmp_path / "whole", max_steps=5, save_every=2, redraw_marks=True,
                     train=("llm", "projector"))
    train(config)
    whole = [record["loss"] for record in read_log(config.output)]

    stopped = dataclasses.replace(config, output=tmp_path / "stopped")
    original_step = trainer_module.training_step

    def stop_after_three(*args, **kwargs):
        if args[-1] == 3:  # the step index: steps 1-3 are done, the checkpoint holds step 2
            raise Stop
        return original_step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "training_step", stop_after_three)
    with pytest.raises(Stop):
        train(stopped)
    monkeypatch.setattr(trainer_module, "training_step", original_step)
    assert [path.name for path in checkpoints(stopped.output)] == ["checkpoint-2"]
    with pytest.raises(ValueError, match="--resume"):
        train(stopped)
    train(dataclasses.replace(stopped, resume=True))

    resumed = [record["loss"] for record in read_log(stopped.output)]
    assert len(resumed) == len(whole) == 5
    assert resumed == pytest.approx(whole, rel=1e-6, abs=1e-6)
    assert whole[0] != whole[2]
    with pytest.raises(ValueError, match="seed"):
        train(dataclasses.replace(stopped, resume=True, seed=1))


def test_a_trained_model_and_its_checkpoints_load_with_from_pretrained(tmp_path_factory, tmp_path):
    output = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "finetune", "--data", str(tom_shards(tmp_path_factory)), "--model", str(tiny_magma(tmp_path_factory)),
        "--output", str(output), "--max-steps", "3", "--batch-size", "2", "--lr", "1e-3", "--save-every", "2",
        "--keep-checkpoints", "2", "--train", "llm,projector", "--num-workers", "1", "--no-progress",
        "--validation-fraction", "0.5",
    ])
    assert result.exit_code == 0, result.output
    assert "step 3 loss" not in result.output and "rows skipped: none" in result.output  # a line every 10 steps

    start = MagmaForCausalLM.from_pretrained(tiny_magma(tmp_path_factory))
    trained = MagmaForCausalLM.from_pretrained(output)
    last = MagmaForCausalLM.from_pretrained(output / "checkpoint-3")
    MagmaProcessor.from_pretrained(output / "checkpoint-2")
    for (name, before), after, again in zip(start.named_parameters(), trained.parameters(), last.parameters()):
        assert torch.equal(after, again), name
        if name.startswith("vision_tower"):
            assert torch.equal(before, after), name  # --train llm,projector leaves the tower as it was
    assert not torch.equal(start.language_model.lm_head.weight, trained.language_model.lm_head.weight)
    record = json.loads((output / "training.json").read_text())
    assert (record["steps"], record["global_batch"], record["config"]["validation_fraction"]) == (3, 2, 0.5)
    assert record["config"]["schedule"] == "cosine" and record["skipped_rows"] == {}
    assert [p.name for p in checkpoints(output)] == ["checkpoint-2", "checkpoint-3"]


def _damage_one_image(shards: Path, copy: Path) -> None:
    """A copy of the output folder whose first row's image is cut to 100 bytes."""
    shutil.copytree(shards, copy)
    first = sorted((copy / "data" / "sample").glob("*.parquet"))[0]
    table = pq.read_table(first)
    images = table.column("image").to_pylist()
    images[0] = {"bytes": images[0]["bytes"][:100], "path": None}
    table = table.set_column(table.schema.get_field_index("image"), "image", pa.array(images, table.schema.field("image").type))
    pq.write_table(table, first)


def test_rows_that_cannot_be_read_are_counted_and_training_goes_on(tmp_path_factory, tmp_path):
    _damage_one_image(tom_shards(tmp_path_factory), tmp_path / "damaged")
    config = _config(tmp_path_factory, tmp_path / "run", data=(str(tmp_path / "damaged"),), max_steps=2, grad_accum=4,
                     train=("projector",))
    train(config)
    record = json.loads((config.output / "training.json").read_text())
    assert record["skipped_rows"] == {"image does not decode": 1}
    log = list(read_log(config.output))
    assert sum(entry["samples"] for entry in log) == 7 and all(entry["loss"] == entry["loss"] for entry in log)


def test_training_reads_the_shards_in_place_and_writes_only_its_output(tmp_path_factory, tmp_path):
    """No copy of the data anywhere: with home, caches and temporary files in empty folders, a run with a loader
    worker and two checkpoints leaves them empty and the data folder as it was."""
    shards = tom_shards(tmp_path_factory)
    data_before = {path: path.stat().st_mtime_ns for path in shards.rglob("*")}
    elsewhere = {name: tmp_path / name for name in ("home", "cache", "hf", "tmp")}
    for folder in elsewhere.values():
        folder.mkdir()
    env = {**os.environ, "HOME": str(elsewhere["home"]), "XDG_CACHE_HOME": str(elsewhere["cache"]),
           "HF_HOME": str(elsewhere["hf"]), "HF_DATASETS_CACHE": str(elsewhere["hf"] / "datasets"),
           "TMPDIR": str(elsewhere["tmp"]), "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run([MAGMA_TRAIN, "finetune", "--data", str(shards), "--model", str(tiny_magma(tmp_path_factory)),
                          "--output", str(tmp_path / "run"), "--max-steps", "2", "--save-every", "1",
                          "--keep-checkpoints", "2", "--batch-size", "2", "--train", "projector", "--num-workers", "1",
                          "--validation-fraction", "0", "--no-progress", "--precision", "fp32"],
                         capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [path for folder in elsewhere.values() for path in folder.rglob("*") if path.is_file()] == []
    assert {path: path.stat().st_mtime_ns for path in shards.rglob("*")} == data_before
    written = {path.name for path in (tmp_path / "run").iterdir()}
    assert {"checkpoint-1", "checkpoint-2", "log.jsonl", "training.json", "model.safetensors"} <= written
    assert not [path for path in (tmp_path / "run").rglob("*") if path.suffix in (".parquet", ".arrow")]


def test_each_step_is_logged_to_the_jsonl_log_and_tensorboard(tmp_path_factory, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = _config(tmp_path_factory, tmp_path / "run", max_steps=3, train=("projector",))
    train(config)
    log = list(read_log(config.output))
    assert [entry["step"] for entry in log] == [1, 2, 3]
    assert all({"loss", "lr", "samples", "tokens", "grad_norm"} <= entry.keys() for entry in log)
    events = EventAccumulator(str(config.output / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "train/tokens_per_s"} <= set(
        events.Tags()["scalars"])
    losses = [(event.step, event.value) for event in events.Scalars("train/loss")]
    assert losses == [(entry["step"], pytest.approx(entry["loss"])) for entry in log]


def test_gradient_checkpointing_recomputes_the_same_losses(tmp_path_factory, tmp_path):
    losses = []
    for checkpointing in (False, True):
        config = _config(tmp_path_factory, tmp_path / str(checkpointing), max_steps=2, gradient_checkpointing=checkpointing)
        train(config)
        losses.append([record["loss"] for record in read_log(config.output)])
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)


def test_bf16_compute_trains_fp32_weights(tmp_path_factory, tmp_path):
    config = _config(tmp_path_factory, tmp_path / "run", max_steps=2, precision="bf16", train=("projector",))
    train(config)
    losses = [record["loss"] for record in read_log(config.output)]
    assert all(0 < loss < 20 for loss in losses)
    trained = MagmaForCausalLM.from_pretrained(config.output)
    assert trained.dtype == torch.float32  # saved in the start model's dtype, not the compute dtype


def test_the_output_must_not_be_the_start_model(tmp_path_factory):
    model = tiny_magma(tmp_path_factory)
    with pytest.raises(ValueError, match="new folder"):
        train(_config(tmp_path_factory, model, max_steps=1))


def _torchrun(args: list[str], processes: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", str(processes),
               MAGMA_TRAIN, *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_under_torchrun_train_as_one_with_the_same_global_batch(tmp_path_factory, tmp_path, strategy):
    common = ["finetune", "--data", str(tom_shards(tmp_path_factory)), "--model", str(tiny_magma(tmp_path_factory)),
              "--max-steps", "4", "--batch-size", "1", "--lr", "3e-3", "--precision", "fp32", "--num-workers", "0",
              "--no-progress", "--validation-fraction", "0"]
    one = _torchrun([*common, "--output", str(tmp_path / "one"), "--grad-accum", "2"], processes=1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun([*common, "--output", str(tmp_path / "two"), "--grad-accum", "1", "--strategy", strategy], processes=2)
    assert two.returncode == 0, two.stderr[-3000:]

    losses = {name: [r["loss"] for r in read_log(tmp_path / name)] for name in ("one", "two")}
    assert len(losses["two"]) == 4
    assert losses["two"] == pytest.approx(losses["one"], rel=1e-5)
    assert json.loads((tmp_path / "two" / "training.json").read_text())["processes"] == 2
    one_model, two_model = (MagmaForCausalLM.from_pretrained(tmp_path / name) for name in ("one", "two"))
    for (name, a), b in zip(one_model.named_parameters(), two_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_ray_train_runs_the_same_loop_on_two_workers(tmp_path_factory, tmp_path):
    """``--ray-address local --workers 2``: a local Ray cluster, TorchTrainer with gloo; the losses of torchrun's."""
    from cli_runs import reap

    common = ["finetune", "--data", str(tom_shards(tmp_path_factory)), "--model", str(tiny_magma(tmp_path_factory)),
              "--max-steps", "2", "--batch-size", "1", "--lr", "3e-3", "--precision", "fp32", "--num-workers", "0",
              "--no-progress", "--validation-fraction", "0"]
    one = _torchrun([*common, "--output", str(tmp_path / "one"), "--grad-accum", "2"], processes=1)
    assert one.returncode == 0, one.stderr[-3000:]
    driver = subprocess.Popen([MAGMA_TRAIN, *common, "--output", str(tmp_path / "ray"), "--ray-address", "local",
                               "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        _, stderr = driver.communicate(timeout=900)
    finally:
        driver.kill()
        reap(driver.pid)
    assert driver.returncode == 0, stderr[-3000:]
    losses = {name: [r["loss"] for r in read_log(tmp_path / name)] for name in ("one", "ray")}
    assert losses["ray"] == pytest.approx(losses["one"], rel=1e-5)
    assert json.loads((tmp_path / "ray" / "training.json").read_text())["processes"] == 2
