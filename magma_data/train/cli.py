"""``magma-train``: make Magma-format model folders, train them on magma-data shards, evaluate them.

Every command runs as it is on one machine and unchanged under ``torchrun`` (one or many nodes);
``--ray-address`` runs the same training function on a Ray cluster's workers (Ray Train).
"""

from __future__ import annotations

import functools
from pathlib import Path

import click

DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


@click.group()
def main() -> None:
    """Train Magma on magma-data shards; models load and save in the Magma-8B layout."""
    from transformers.utils import logging as transformers_logging

    # transformers draws a bar for every weights load and checkpoint save; the commands show their own progress
    transformers_logging.disable_progress_bar()


@main.command()
@click.option("--output", type=click.Path(path_type=Path), required=True, help="Folder to write the model to.")
@click.option("--size", type=click.Choice(["tiny"]), help="A random model of this size (tests and demos).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option(
    "--from-components", "from_components", is_flag=True, help="Assemble Magma's pretraining start from --llm and --vision."
)
@click.option("--llm", type=click.Path(path_type=Path, exists=True, file_okay=False), help="Llama-3-8B-Instruct folder.")
@click.option(
    "--vision",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="open_clip convnext_xxlarge CLIP weights (open_clip_pytorch_model.bin or open_clip_model.safetensors).",
)
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="bf16", show_default=True, help="Weights' dtype (--from-components).")
def init(output: Path, size: str | None, seed: int, from_components: bool, llm: Path | None, vision: Path | None, dtype: str) -> None:
    """Write a new Magma-format folder: --size tiny, or --from-components --llm DIR --vision FILE."""
    if bool(size) == from_components:
        raise click.UsageError("choose one: --size tiny, or --from-components with --llm and --vision")
    if from_components and not (llm and vision):
        raise click.UsageError("--from-components needs --llm (a Llama-3-Instruct folder) and --vision (open_clip weights)")
    if (output / "config.json").exists():
        raise click.UsageError(f"{output} already holds a model (config.json); choose another --output")

    import torch

    from .create import create_from_components, create_tiny

    if size:
        create_tiny(output, seed=seed)
    else:
        create_from_components(llm, vision, output, dtype=getattr(torch, DTYPES[dtype]), seed=seed)
    click.echo(f"wrote {output}")


def _data_options(command):
    """``--data`` and the split options shared by training and evaluation."""
    options = [
        click.option(
            "--data", "data", multiple=True, required=True, metavar="PATH[:WEIGHT]",
            help="A magma-data output folder, or a LLaVA .json (images beside it); repeat to mix. WEIGHT: the "
            "share of its rows in each epoch (default 1; 0.3 = a different 30% each epoch).",
        ),
        click.option(
            "--validation-fraction", type=float,
            help="Share of videos held out for validation (default 0.05; eval reads the trained model's own).",
        ),
        click.option("--max-length", type=int, help="Text tokens per sample, as Magma's --model_max_length (default 4096)."),
        click.option("--cache-dir", type=click.Path(path_type=Path), help="datasets' cache (default: HF_DATASETS_CACHE)."),
    ]
    return functools.reduce(lambda decorated, option: option(decorated), reversed(options), command)


def _training_command(mode: str):
    """``pretrain`` and ``finetune``: one loop, the paper's defaults per mode (trainer.MODE_DEFAULTS)."""
    from .trainer import MODE_DEFAULTS

    def decorate(function):
        options = [
            click.option("--model", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
                         help="Start model: Magma-8B, a `magma-train init` folder, or a checkpoint of this command."),
            click.option("--output", type=click.Path(path_type=Path), required=True,
                         help="Folder for checkpoints and the trained model."),
            click.option("--train", "parts", default="all", show_default=True,
                         help="Parts to train: all, or a comma list of vision, projector, llm (e.g. llm,projector)."),
            click.option("--epochs", type=int, help=f"Passes over the data (default {MODE_DEFAULTS[mode]['epochs']})."),
            click.option("--max-steps", type=int, help="Stop after this many optimizer steps (overrides --epochs)."),
            click.option("--batch-size", type=int, default=1, show_default=True, help="Samples per process and micro-batch."),
            click.option("--grad-accum", type=int, default=1, show_default=True, help="Micro-batches per optimizer step."),
            click.option("--lr", type=float, help=f"Peak learning rate (default {MODE_DEFAULTS[mode]['lr']:g})."),
            click.option("--schedule", type=click.Choice(["constant", "cosine"]),
                         help=f"Learning-rate schedule (default {MODE_DEFAULTS[mode]['schedule']})."),
            click.option("--warmup-ratio", type=float,
                         help=f"Share of steps warming up (default {MODE_DEFAULTS[mode]['warmup_ratio']:g})."),
            click.option("--seed", type=int, default=0, show_default=True, help="Data order, re-drawn marks, dropout."),
            click.option("--precision", type=click.Choice(["bf16", "fp32"]),
                         help="Compute precision (default bf16 on GPUs, fp32 on CPUs); weights stay fp32."),
            click.option("--gradient-checkpointing", is_flag=True, help="Recompute activations in backward (less memory)."),
            click.option("--strategy", type=click.Choice(["ddp", "fsdp"]), default="ddp", show_default=True,
                         help="Several processes: replicate the model (ddp) or shard it (fsdp; for Magma-8B)."),
            click.option("--redraw-marks", is_flag=True, help="New marks every epoch, drawn from the stored traces."),
            click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --output."),
            click.option("--save-every", type=int, default=500, show_default=True, help="Steps between checkpoints."),
            click.option("--keep-checkpoints", type=int, default=1, show_default=True, help="Checkpoints kept on disk."),
            click.option("--log-every", type=int, default=10, show_default=True, help="Steps between log lines."),
            click.option("--num-workers", type=int, default=2, show_default=True, help="Data-loading processes per trainer."),
            click.option("--no-progress", is_flag=True, help="No progress bar (logs, CI)."),
            click.option("--ray-address", help="Run on this Ray cluster ('auto' inside `ray job submit`) with Ray Train."),
            click.option("--workers", type=int, default=1, show_default=True, help="Training processes on Ray (--ray-address)."),
        ]
        function = functools.reduce(lambda decorated, option: option(decorated), reversed(options), function)
        return _data_options(function)

    return decorate


def _run_training(mode: str, parts: str, ray_address: str | None, workers: int, no_progress: bool, **options) -> None:
    import torch

    from .trainer import PARTS, TrainConfig, train

    names = tuple(PARTS) if parts == "all" else tuple(part.strip() for part in parts.split(","))
    options = {key: value for key, value in options.items() if value is not None}
    options.setdefault("precision", "bf16" if torch.cuda.is_available() else "fp32")
    try:
        config = TrainConfig(mode=mode, train=names, progress=not no_progress, data=tuple(options.pop("data")), **options).resolved()
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    if ray_address:
        from .ray_train import train_on_ray

        train_on_ray(config, ray_address, workers)
    else:
        train(config)


@main.command()
@_training_command("pretrain")
def pretrain(**options) -> None:
    """Pretrain on SoM/ToM data (constant learning rate, 3 epochs by default)."""
    _run_training("pretrain", **options)


@main.command()
@_training_command("finetune")
def finetune(**options) -> None:
    """Fine-tune (cosine learning rate after a 3% warm-up, 1 epoch by default)."""
    _run_training("finetune", **options)


@main.command("eval")
@click.option("--model", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="A Magma-format folder: a trained --output, a checkpoint, Magma-8B.")
@_data_options
@click.option("--split", type=click.Choice(["validation", "train", "all"]), default="validation", show_default=True,
              help="Rows to score: the held-out videos, the others, or every row.")
@click.option("--output", type=click.Path(path_type=Path), required=True, help="Folder for eval.json and answers.jsonl.")
@click.option("--max-new-tokens", type=int, default=512, show_default=True, help="Longest answer generated.")
@click.option("--limit", type=int, help="Score at most this many rows per source.")
@click.option("--precision", type=click.Choice(["bf16", "fp32"]), help="Default bf16 on GPUs, fp32 on CPUs.")
def evaluate_command(**options) -> None:
    """Answer each ToM question of the split and score it: marks, trace error, malformed answers, loss."""
    import torch
    from rich.console import Console

    from .eval import EvalConfig, evaluate, table

    options = {key: value for key, value in options.items() if value is not None}
    options.setdefault("precision", "bf16" if torch.cuda.is_available() else "fp32")
    summary = evaluate(EvalConfig(data=tuple(options.pop("data")), **options))
    Console().print(table(summary))
