"""Source registry: each source is a manifest in ``manifests/`` naming its reader and defaults.

A manifest is a small YAML file (see ``manifests/folder.yaml``) whose file name is the source's
name, the one place that name is declared: ``description``, ``reader`` (``module:Class``,
constructed as ``Class(root, name, **options)``), ``pipeline``, whether it needs ``--root``,
reader ``options``, and ``defaults``: per-section config overrides such as ``camera: {force: true}``
for egocentric video.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from magma_data.sources.base import Source


@dataclass(frozen=True)
class Manifest:
    name: str  # the file name, without .yaml
    description: str
    reader: str
    pipeline: str
    requires_root: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)


def available_sources() -> list[str]:
    folder = resources.files("magma_data.manifests")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_manifest(name: str) -> Manifest:
    path = resources.files("magma_data.manifests") / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"unknown source {name!r}; available: {', '.join(available_sources())}")
    data = {**(yaml.safe_load(path.read_text(encoding="utf-8")) or {}), "name": name}
    data["defaults"] = {k: v or {} for k, v in (data.get("defaults") or {}).items()}
    data["options"] = data.get("options") or {}
    return Manifest(**data)


def open_source(manifest: Manifest, root: str | Path | None, **options: Any) -> Source:
    """Construct the manifest's reader on ``root``; refuses a missing root when the source needs one."""
    if manifest.requires_root and root is None:
        raise ValueError(f"source {manifest.name!r} reads data in place: pass --root <its folder>")
    module_name, class_name = manifest.reader.split(":")
    reader = getattr(importlib.import_module(module_name), class_name)
    return reader(Path(root) if root is not None else None, manifest.name, **{**manifest.options, **options})
