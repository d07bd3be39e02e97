"""What each magma-train command takes: one typed config per command, each field declared once.

A field's type, allowed range, default and help live in its declaration here; ``cli.py`` builds
the command-line options from them (``options``), and the recipes in ``recipes/`` (one YAML file
per stage of the paper: ``pretrain``, ``finetune``, ``finetune-lora``) give the values a stage
sets. Precedence: field defaults < the recipe (``--config``, a name or a YAML file) < options.

Values are checked and converted when a config is made (pydantic, lax: ``"2"`` is an int, a
YAML list a tuple), so a recipe, an option and a Python caller are refused alike, in one line
naming the field, what it takes and the value.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from annotated_types import Ge, Gt, Interval

from magma_data.config import ConfigValueError, expected

#: The model's parts, as ``--train`` names them.
PARTS = {"vision": "vision_tower", "projector": "multi_modal_projector", "llm": "language_model"}
#: The language model's linear layers: what Magma's train.py (``find_all_linear_names``) puts LoRA on.
LLAMA_LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Magma's training scripts truncate samples to this many text tokens (``--model_max_length``).
MAGMA_MAX_LENGTH = 4096
#: Share of videos held out for validation unless a run, or the model's own training, says otherwise.
VALIDATION_FRACTION = 0.05
RECIPES = "recipes"
#: What a run trained on and how, next to the trained model (``eval`` reads its validation fraction).
TRAINING_RECORD = "training.json"
#: The algorithm of ``order.py``: a checkpoint written under another one resumes in another order, so it is refused.
ORDER_VERSION = "block-shuffle-1"

Split = Literal["train", "validation", "all"]
Part = Literal["vision", "projector", "llm"]


def parse_parts(value: Any) -> Any:
    """``all`` or ``llm,projector`` (an option, or a recipe's string) -> a tuple of part names."""
    if isinstance(value, str):
        return tuple(PARTS) if value.strip() == "all" else tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def parse_names(value: Any) -> Any:
    """``q_proj,v_proj`` -> a tuple of names; lists pass as they are."""
    return tuple(name.strip() for name in value.split(",") if name.strip()) if isinstance(value, str) else value


def option(default: Any = dataclasses.MISSING, help: str = "", **cli: Any) -> Any:
    """A config field with its help and how the command line takes it (``flag``, ``multiple``,
    ``metavar``, ``parse``, ``folder`` (must exist), ``cli=False``: no option)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True, kw_only=True)
class ModelData:
    """What training and evaluation both take: a model, data, a split, and where to write."""

    model: Path = option(help="Start model (training; Magma-8B, a `magma-train init` folder, a checkpoint) or the "
                              "model to score (eval): a Magma-format folder, or an adapter folder of `--lora-save adapter`.",
                         folder=True)
    data: tuple[str, ...] = option(
        help="A magma-data output folder, or a LLaVA .json (images beside it); repeat to mix. WEIGHT: the share of its "
             "rows in each epoch (default 1; 0.3 = a different 30% each epoch).",
        multiple=True, metavar="PATH[:WEIGHT]",
    )
    output: Path = option(help="Folder for checkpoints and the trained model (training), eval.json and answers.jsonl (eval).")
    validation_fraction: Annotated[float, Interval(ge=0, le=1)] | None = option(
        None, help=f"Share of videos held out for validation (default: the model's own, from its training.json; else "
                   f"{VALIDATION_FRACTION:g}).")
    max_length: Annotated[int, Ge(1)] = option(MAGMA_MAX_LENGTH, help="Text tokens per sample, as Magma's --model_max_length.")
    precision: Literal["bf16", "fp32"] | None = option(
        None, help="Compute precision (default bf16 on GPUs, fp32 on CPUs); trained weights stay fp32.")

    def __post_init__(self) -> None:
        """Every value converted to its field's type and checked against its range."""
        hints = _hints(type(self))
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if "parse" in item.metadata:
                value = item.metadata["parse"](value)
            object.__setattr__(self, item.name, _validated(hints[item.name], value, item.name))

    @classmethod
    def from_recipe(cls, recipe: str | Path | None = None, **values: Any):
        """The recipe's values (``recipes/<name>.yaml``, or a YAML file) under ``values``."""
        recipe_values = read_recipe(recipe) if recipe else {}
        names = {item.name for item in dataclasses.fields(cls)}
        unknown = set(recipe_values) - names
        if unknown:
            raise ValueError(f"recipe {recipe} sets {', '.join(sorted(unknown))}, which {cls.__name__} does not have")
        merged = {**recipe_values, **({"recipe": str(recipe)} if recipe and "recipe" in names else {}), **values}
        unset = [item.name for item in dataclasses.fields(cls) if item.name not in merged
                 and item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING]
        if unset:
            raise ValueError(
                f"{', '.join('--' + name.replace('_', '-') for name in unset)} not set: give them, or a recipe "
                f"(--config: {', '.join(recipe_names())}, or a YAML file) that sets them"
            )
        return cls(**merged)

    def resolved(self, cuda: bool):
        """A copy with the defaults that depend on the machine and the model filled in: the precision
        (bf16 on GPUs), and the validation fraction the model was trained with, so its held-out
        videos stay held out (else ``VALIDATION_FRACTION``)."""
        fraction = self.validation_fraction
        record = self.model / TRAINING_RECORD
        if fraction is None:
            fraction = json.loads(record.read_text())["config"]["validation_fraction"] if record.is_file() else None
        if getattr(self, "bits", 16) != 16 and not cuda:
            raise ValueError(
                f"--bits {self.bits} (QLoRA) needs a CUDA GPU: bitsandbytes' {self.bits}-bit layers run on CUDA only; "
                "on this machine train LoRA on 16-bit weights (--bits 16)"
            )
        return dataclasses.replace(
            self, precision=self.precision or ("bf16" if cuda else "fp32"),
            validation_fraction=VALIDATION_FRACTION if fraction is None else fraction,
        )

    def to_record(self) -> dict[str, Any]:
        """JSON-ready fields (paths as text)."""
        return {key: str(value) if isinstance(value, Path) else value for key, value in dataclasses.asdict(self).items()}


@dataclass(frozen=True, kw_only=True)
class TrainConfig(ModelData):
    """``magma-train pretrain`` / ``finetune``: everything a run depends on.

    The stage's settings (parts, learning rate and schedule, epochs, LoRA) come from its recipe;
    ``TrainConfig.from_recipe("finetune", data=..., model=..., output=...)`` is the Python way in.
    """

    recipe: str = option("", help="A recipe: one of {recipes}, or a YAML file of field: value lines.", flag="--config",
                         metavar="RECIPE")
    train: tuple[Part, ...] = option(help="Parts to train: all, or a comma list of vision, projector, llm.", parse=parse_parts,
                                     metavar="PARTS")
    epochs: Annotated[int, Ge(1)] = option(help="Passes over the data.")
    max_steps: Annotated[int, Ge(1)] | None = option(None, help="Stop after this many optimizer steps (overrides --epochs).")
    batch_size: Annotated[int, Ge(1)] = option(1, help="Samples per process and micro-batch.")
    grad_accum: Annotated[int, Ge(1)] = option(1, help="Micro-batches per optimizer step.")
    global_batch: Annotated[int, Ge(1)] | None = option(
        None, help="Samples per optimizer step over all processes (a recipe's source's batch): --grad-accum becomes "
                   "global-batch / (batch-size x processes), which must divide.")
    lr: Annotated[float, Gt(0)] = option(help="Peak learning rate (AdamW).")
    schedule: Literal["constant", "cosine"] = option(help="Learning-rate schedule after the warm-up.")
    warmup_ratio: Annotated[float, Interval(ge=0, le=1)] = option(help="Share of steps warming up.")
    weight_decay: Annotated[float, Ge(0)] = option(0.0, help="AdamW weight decay (Magma's scripts: 0).")
    max_grad_norm: Annotated[float, Gt(0)] = option(1.0, help="Gradient-norm clipping (Magma's train.py: 1).")
    seed: Annotated[int, Ge(0)] = option(0, help="Data order, re-drawn marks, the SoM/ToM drop, dropout.")
    gradient_checkpointing: bool = option(False, help="Recompute activations in backward (less memory).")
    strategy: Literal["ddp", "fsdp"] = option(
        "ddp", help="Several processes: replicate the model (ddp) or shard it (fsdp; for Magma-8B).")
    redraw_marks: bool = option(False, help="New marks every epoch, drawn from the stored traces.")
    som_tom_drop: Annotated[float, Interval(ge=0, le=1)] = option(
        0.2, help="Share of video samples made without their SoM/ToM turn, drawn per (seed, epoch, sample) "
                  "(Magma's data/conversations.py: 0.2; robot samples keep theirs).")
    resume: bool = option(False, help="Continue from the newest checkpoint in --output.")
    save_every: Annotated[int, Ge(1)] = option(500, help="Steps between checkpoints.")
    keep_checkpoints: Annotated[int, Ge(1)] = option(1, help="Checkpoints kept on disk.")
    log_every: Annotated[int, Ge(1)] = option(10, help="Steps between log lines.")
    num_workers: Annotated[int, Ge(0)] = option(2, help="Data-loading processes per trainer (they make samples of "
                                                           "the rows it reads; the order does not depend on them).")
    shuffle_window: Annotated[int, Ge(1)] = option(
        64, help="Shards whose row groups are shuffled together; one footer is read per shard as the run reaches it.")
    shuffle_buffer: Annotated[int, Ge(1)] = option(
        16, help="Row groups each lane (micro-batch of a step) draws its rows from at once: the data held in memory.")
    progress: bool = option(True, help="A progress bar (--no-progress for logs and CI).")
    lora: bool = option(False, help="Train LoRA adapters on the language model instead of its weights (Magma's "
                                    "train.py --lora_enable; through peft).")
    lora_rank: Annotated[int, Ge(1)] = option(64, help="LoRA rank (train.py --lora_r).")
    lora_alpha: Annotated[float, Gt(0)] = option(16.0, help="LoRA alpha (train.py --lora_alpha).")
    lora_dropout: Annotated[float, Interval(ge=0, lt=1)] = option(0.05, help="Dropout on the LoRA input (train.py --lora_dropout).")
    lora_target_modules: tuple[str, ...] = option(
        LLAMA_LINEAR_LAYERS, help="Layers of the language model that get adapters, a comma list of names.",
        parse=parse_names, metavar="NAMES")
    lora_save: Literal["merged", "adapter"] = option(
        "merged", help="Save the model with the adapters merged in (a Magma folder), or the adapters alone (a peft folder).")
    bits: Literal[16, 8, 4] = option(
        16, help="Hold the frozen language model in 4 or 8 bits (QLoRA, with --lora; bitsandbytes, CUDA only).")
    ray_address: str | None = option(None, help="Run on this Ray cluster ('auto' inside `ray job submit`) with Ray Train.")
    workers: Annotated[int, Ge(1)] = option(1, help="Training processes on Ray (--ray-address).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.train:
            raise ValueError("--train takes parts among vision, projector, llm (or 'all'); got none")
        if self.bits != 16 and not self.lora:
            raise ValueError(f"--bits {self.bits} quantizes weights that then cannot train: add --lora (QLoRA)")
        if self.global_batch and self.grad_accum != 1:
            raise ValueError(f"--global-batch {self.global_batch} and --grad-accum {self.grad_accum} both set the "
                             "samples of a step: give one of them (--global-batch N overrides a recipe's)")
        if self.lora and self.train != ("llm",):
            raise ValueError(
                f"with --lora only the adapters on the language model train, not {','.join(self.train)}: "
                "add --train llm, or use --config finetune-lora"
            )
        if self.lora and self.strategy == "fsdp":
            raise ValueError("LoRA keeps the frozen weights in their 16 bits, so the model fits each GPU: use --strategy ddp")
        if self.bits != 16 and self.lora_save == "merged":
            raise ValueError(
                f"a {self.bits}-bit model cannot take its adapters merged: add --lora-save adapter (and merge onto "
                "the 16-bit start model later: magma_data.train.lora.load_model)"
            )

    def lanes(self, world_size: int) -> int:
        """The order's lanes (``order.py``): a step's micro-batches over all processes, however they are split."""
        return world_size * self.grad_accum

    def for_processes(self, world_size: int) -> TrainConfig:
        """The config with ``grad_accum`` from ``global_batch`` for ``world_size`` processes (as it is without one)."""
        if not self.global_batch:
            return self
        per_step = self.batch_size * world_size
        if self.global_batch % per_step:
            raise ValueError(
                f"--global-batch {self.global_batch} is not a multiple of --batch-size {self.batch_size} x "
                f"{world_size} processes ({per_step}): choose a --batch-size that divides "
                f"{self.global_batch // world_size or 1}, or another --global-batch")
        return dataclasses.replace(self, grad_accum=self.global_batch // per_step, global_batch=None)

    def data_order(self, world_size: int) -> dict[str, Any]:
        """What fixes which samples a step holds: resuming with other values is refused."""
        return {
            "order": ORDER_VERSION, "data": list(self.data), "seed": self.seed, "batch_size": self.batch_size,
            "lanes": self.lanes(world_size), "shuffle_window": self.shuffle_window,
            "shuffle_buffer": self.shuffle_buffer, "validation_fraction": self.validation_fraction,
            "redraw_marks": self.redraw_marks, "som_tom_drop": self.som_tom_drop,
        }


@dataclass(frozen=True, kw_only=True)
class EvalConfig(ModelData):
    """``magma-train eval``."""

    split: Split = option("validation", help="Rows to score: the held-out videos, the others, or every row.")
    max_new_tokens: Annotated[int, Ge(1)] = option(512, help="Longest answer generated.")
    limit: Annotated[int, Ge(1)] | None = option(None, help="Score at most this many rows per source.")


# -- recipes ------------------------------------------------------------------------------------


def recipe_names() -> list[str]:
    """The recipes shipped in ``recipes/``, by name."""
    return sorted(path.name.removesuffix(".yaml") for path in _recipe_folder().iterdir() if path.name.endswith(".yaml"))


def recipe_summary(name: str) -> str:
    """A recipe's first comment line: what stage it is."""
    first = (_recipe_folder() / f"{name}.yaml").read_text().splitlines()[0]
    return first.lstrip("# ").strip()


def read_recipe(recipe: str | Path) -> dict[str, Any]:
    """``field: value`` pairs of a shipped recipe (by name) or a YAML file."""
    path = _recipe_folder() / f"{recipe}.yaml"
    if not path.is_file():
        path = Path(recipe)
        if not path.is_file():
            raise ValueError(f"--config {recipe}: no such recipe ({', '.join(recipe_names())}) and no such YAML file")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"--config {recipe}: a recipe is YAML 'field: value' lines, got {type(values).__name__}")
    return values


def _recipe_folder():
    return resources.files(__package__) / RECIPES


# -- typing -------------------------------------------------------------------------------------


@functools.cache
def _hints(config_type: type) -> dict[str, Any]:
    return typing.get_type_hints(config_type, include_extras=True)


def field_hint(config_type: type, name: str) -> Any:
    return _hints(config_type)[name]


@functools.cache
def _adapter(hint: Any) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(hint)


def _validated(hint: Any, value: Any, name: str) -> Any:
    try:
        return _adapter(hint).validate_python(value)
    except pydantic.ValidationError:
        raise ConfigValueError(f"--{name.replace('_', '-')}", expected(hint), value) from None
