"""Pipelines: the registry. Each module of this package is one pipeline, one readable list of stages.

``PIPELINES`` maps a name (``magma-data run <name>``) to its ``Pipeline`` object
(``magma_data.pipelines.base``); a pipeline registers itself with ``@register_pipeline`` and is
listed by one import line below. Its shard schema derives from the columns the planner, the
stages and the sink declare (``shard_columns``).
"""

from __future__ import annotations

from datasets import Features

from magma_data.config import RunConfig
from magma_data.pipelines import oxe_tom, video_tom  # noqa: F401  (each registers its pipeline)
from magma_data.pipelines.base import PIPELINES, Pipeline
from magma_data.schema import features
from magma_data.sink import CONFIG_HASH
from magma_data.stages.base import Column


def load_pipeline(name: str) -> Pipeline:
    """The registered pipeline called ``name``."""
    if name not in PIPELINES:
        raise KeyError(f"unknown pipeline {name!r}; available: {', '.join(PIPELINES)}")
    return PIPELINES[name]


def column_dims(config: RunConfig) -> dict[str, int]:
    """Sizes of the dimensions the config fixes for every row: frames per window, tracked points."""
    return {"T": config.plan.window_len, "N": config.track.grid_size**2}


def shard_columns(pipeline: Pipeline, config: RunConfig) -> list[Column]:
    """Every column a finished row of ``pipeline`` holds, in pipeline order: the planner's, each
    stage's, and the sink's config hash."""
    return [*pipeline.plan_columns, *(c for stage in pipeline.stages(config) for c in stage.columns), CONFIG_HASH]


def shard_features(pipeline: Pipeline, config: RunConfig) -> Features:
    return features(shard_columns(pipeline, config), column_dims(config))
