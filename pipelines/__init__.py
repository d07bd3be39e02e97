"""Pipelines: each module is one readable list of stages with its Ray resources.

A pipeline module provides ``NAME``, ``features(config)`` (the shard schema), ``plan(source,
config)`` (the units, on the driver) and ``build(windows, config, resources)`` (the Ray Data
graph from planned windows to finished rows).
"""

from __future__ import annotations

import importlib
from types import ModuleType

PIPELINES = ("video_tom", "oxe_tom")


def load_pipeline(name: str) -> ModuleType:
    if name not in PIPELINES:
        raise KeyError(f"unknown pipeline {name!r}; available: {', '.join(PIPELINES)}")
    return importlib.import_module(f"magma_data.pipelines.{name}")
