"""``magma-train``: make Magma-format model folders, train them on magma-data shards, evaluate them.

Every command runs as it is on one machine and unchanged under ``torchrun`` (one or many nodes);
``--ray-address`` runs the same training function on a Ray cluster's workers (Ray Train).
The options of ``pretrain`` / ``finetune`` / ``eval`` are made from their config's fields
(``settings.TrainConfig``, ``settings.EvalConfig``): name, type, choices, help and default are
read from the field, and a recipe's value is shown as the default it gives.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import click

from .settings import EvalConfig, ModelData, TrainConfig, field_hint, read_recipe, recipe_names, recipe_summary

DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


def _recipe_list() -> str:
    return "\n".join(f"  {name:14} {recipe_summary(name)}" for name in recipe_names())


@click.group(epilog="\b\nRecipes (pretrain / finetune --config NAME; a YAML file works too):\n" + _recipe_list())
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


# -- options from config fields -----------------------------------------------------------------


def options(config_class: type[ModelData], recipe: str | None = None):
    """A decorator adding one option per field of ``config_class``; unset options arrive as None."""
    shown = read_recipe(recipe) if recipe else {}

    def decorate(command):
        for item in reversed(dataclasses.fields(config_class)):
            command = _option(config_class, item, shown, recipe)(command)
        return command

    return decorate


def _option(config_class: type, item: dataclasses.Field, shown: dict[str, Any], recipe: str | None):
    meta = item.metadata
    flag = meta.get("flag", "--" + item.name.replace("_", "-"))
    base = _base_type(field_hint(config_class, item.name))
    kind: dict[str, Any] = {}
    if base is bool:
        flag = f"{flag}/--no-{flag.removeprefix('--')}"
        kind["default"] = None
    elif typing.get_origin(base) is Literal:
        kind["type"] = click.Choice([str(choice) for choice in typing.get_args(base)])
        if all(isinstance(choice, int) for choice in typing.get_args(base)):
            kind["callback"] = lambda context, parameter, value: None if value is None else int(value)
    elif base is Path:
        kind["type"] = click.Path(path_type=Path, exists=True, file_okay=False) if meta.get("folder") else click.Path(path_type=Path)
    elif base in (int, float):
        kind["type"] = base
    if meta.get("multiple"):
        kind["multiple"] = True
    has_default = item.default is not dataclasses.MISSING or item.name in shown
    required = not has_default and item.name != "recipe"
    help_text = meta.get("help", "").format(recipes=", ".join(recipe_names()))
    if item.name == "recipe" and recipe:
        help_text += f" [default: {recipe}]"
    elif item.name in shown:
        help_text += f" [{recipe}: {_shown(shown[item.name])}]"
    elif item.default not in (dataclasses.MISSING, None, ()) and base is not bool:
        help_text += f" [default: {_shown(item.default)}]"
    return click.option(flag, item.name, required=required, metavar=meta.get("metavar"), help=help_text, **kind)


def _base_type(hint: Any) -> Any:
    """The field's type without ``Annotated`` ranges and without ``| None``."""
    if typing.get_origin(hint) is Annotated:
        return _base_type(typing.get_args(hint)[0])
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else hint
    return hint


def _shown(value: Any) -> str:
    return ",".join(str(part) for part in value) if isinstance(value, (list, tuple)) else f"{value:g}" if isinstance(value, float) else str(value)


def _given(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None and value != ()}


# -- commands -----------------------------------------------------------------------------------


def _training_command(default_recipe: str):
    """``pretrain`` and ``finetune``: one loop; they differ in the recipe they read by default."""

    def run(**values) -> None:
        values = _given(values)
        try:
            config = TrainConfig.from_recipe(values.pop("recipe", default_recipe), **values)
            if not config.ray_address:  # Ray's workers check the machine they run on
                import torch

                config.resolved(torch.cuda.is_available())
        except ValueError as error:
            raise click.UsageError(str(error)) from error
        if config.ray_address:
            from .ray_train import train_on_ray

            train_on_ray(config)
        else:
            from .trainer import train

            train(config)

    return options(TrainConfig, default_recipe)(run)


main.command("pretrain", help=f"Pretrain on SoM/ToM data (recipe pretrain: {recipe_summary('pretrain')})")(
    _training_command("pretrain"))
main.command("finetune", help=f"Fine-tune (recipe finetune: {recipe_summary('finetune')})")(
    _training_command("finetune"))


@main.command("eval")
@options(EvalConfig)
def evaluate_command(**values) -> None:
    """Answer each ToM question of the split and score it: marks, trace error, malformed answers, loss."""
    from rich.console import Console

    from .eval import evaluate, table

    try:
        config = EvalConfig(**_given(values))
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    Console().print(table(evaluate(config)))

