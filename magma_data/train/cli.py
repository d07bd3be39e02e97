"""``magma-train``: make Magma-format model folders (part 2 adds pretrain / finetune / eval)."""

from __future__ import annotations

from pathlib import Path

import click

DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


@click.group()
def main() -> None:
    """Train Magma on magma-data shards; models load and save in the Magma-8B layout."""


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
