"""Source registry: each source is a manifest in ``manifests/`` naming its reader and defaults.

A manifest is a small YAML file (see ``manifests/folder.yaml``) whose file name is the source's
name, the one place that name is declared: ``description``, ``reader`` (``module:Class``,
constructed as ``Class(root, name, **options)``), ``pipeline``, whether it needs ``--root``,
reader ``options``, ``layouts`` (other official layouts of the release: option sets tried in turn
when the options' own files are not found), and ``defaults``: per-section config overrides such as
``camera: {force: true}`` for egocentric video.

``--root`` may be the folder the user gave the official downloader rather than the release
itself: ``ego4d --output_directory ~/ego4d_data`` leaves the release in ``~/ego4d_data/v2/``.
When the reader finds its metadata neither in ``--root`` nor by another layout, the folders
inside it (``RELEASE_DEPTH`` levels, nearest first) are tried, and the one that holds the release
is read and named.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from magma_data.sources.base import Source
from magma_data.sources.metadata import MetadataNotFound

#: How many folder levels below ``--root`` the release folder is looked for (``~/ego4d_data/v2``: 1).
RELEASE_DEPTH = 2


@dataclass(frozen=True)
class Manifest:
    name: str  # the file name, without .yaml
    description: str
    reader: str
    pipeline: str
    requires_root: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    layouts: list[dict[str, Any]] = field(default_factory=list)  # other official layouts: option overrides
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)


def available_sources() -> list[str]:
    folder = resources.files("magma_data.manifests")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_manifest(name: str) -> Manifest:
    path = resources.files("magma_data.manifests") / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"unknown source {name!r}; available: {', '.join(available_sources())}")
    return parse_manifest(name, path.read_text(encoding="utf-8"))


def parse_manifest(name: str, text: str) -> Manifest:
    """The manifest of source ``name`` from its YAML ``text``."""
    data = {**(yaml.safe_load(text) or {}), "name": name}
    data["defaults"] = {k: v or {} for k, v in (data.get("defaults") or {}).items()}
    data["options"] = data.get("options") or {}
    data["layouts"] = data.get("layouts") or []
    return Manifest(**data)


def open_source(manifest: Manifest, root: str | Path | None, notify: Callable[[str], None] | None = None,
                **options: Any) -> Source:
    """Construct the manifest's reader on the release folder: ``root``, or the one folder inside it that
    holds the release (``notify`` is told which); refuses a missing root when the source needs one."""
    if manifest.requires_root and root is None:
        raise ValueError(f"source {manifest.name!r} reads data in place: pass --root <its folder>")
    module_name, class_name = manifest.reader.split(":")
    reader = getattr(importlib.import_module(module_name), class_name)
    if root is None or not manifest.requires_root:  # the built-in sample: root is its cache, made on first use
        return reader(Path(root) if root is not None else None, manifest.name, **{**manifest.options, **options})
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root} is not a folder")
    layouts = [{**manifest.options, **layout, **options} for layout in ({}, *manifest.layouts)]
    not_found = None
    for depth, folders in enumerate(_folders_by_depth(root, RELEASE_DEPTH)):
        found = []
        for folder in folders:
            for layout in layouts:
                try:
                    found.append((folder, reader(folder, manifest.name, **layout)))
                    break
                except MetadataNotFound as error:
                    not_found = not_found or error  # the first layout in --root itself: the error users expect
        if len(found) > 1:
            names = ", ".join(str(folder.relative_to(root)) for folder, _ in found)
            raise ValueError(f"--root {root} holds {len(found)} {manifest.name} releases ({names}); pass the one to "
                             "read as --root")
        if found:
            folder, source = found[0]
            if depth:
                (notify or (lambda _: None))(f"{manifest.name}: reading the release in {folder} (inside --root {root})")
            return source
    raise MetadataNotFound(f"{not_found} (nor does any folder up to {RELEASE_DEPTH} levels inside --root {root} "
                           "hold the release)") from None


def _folders_by_depth(root: Path, depth: int) -> Iterator[list[Path]]:
    """``[root]``, then the folders inside it, then the folders inside those...; hidden ones skipped, sorted."""
    level = [root]
    for _ in range(depth + 1):
        yield level
        level = sorted(child for folder in level for child in _subfolders(folder))


def _subfolders(folder: Path) -> Iterator[Path]:
    try:
        yield from (child for child in folder.iterdir() if child.is_dir() and not child.name.startswith("."))
    except PermissionError:  # a folder the user cannot list holds no release they can read
        return
