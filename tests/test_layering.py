"""The layers of the code, read from the source tree: every import of ours points down, never up.

Each module belongs to one layer (``LAYERS``, lowest first) and may import its own layer and the
layers below. Every import counts, those inside functions too (a lazy import is still a
dependency), and so do the packages an import runs on its way: ``magma_data.pipelines.base`` runs
``pipelines/__init__.py``, the pipeline registry. ``stages/``, ``pipelines/`` and ``manifests/``
sit at the top of the repository and install as ``magma_data.stages`` etc.; the test reads them
where they lie, as any tool that reads the tree does. docs/architecture.md draws the same layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Where each package's modules lie (pyproject.toml's package-dir).
FOLDERS = {"magma_data": REPO / "magma_data", "magma_data.stages": REPO / "stages",
           "magma_data.pipelines": REPO / "pipelines", "magma_data.manifests": REPO / "manifests"}

#: Lowest first. A name covers the module and everything below it (``magma_data.sources`` covers its readers).
LAYERS = (
    # what every layer may use: the record of a dropped unit, Magma's text and tokens, fault injection
    ("core", ("magma_data.dropped", "magma_data.magma_text", "magma_data.faults")),
    # network code (CoTracker3) and the point-tracking conventions it shares with the track stage
    ("models", ("magma_data.models",)),
    # datasets read in place, the source protocols, the manifest registry
    ("sources", ("magma_data.sources", "magma_data.manifests")),
    # one module per stage, the stage contract, the planners and the tracker registry: no Ray, no framework
    ("stages", ("magma_data.stages",)),
    # the run's machinery: typed config, shard schema and sink, the Ray bridge, output folders, progress
    ("framework", ("magma_data.config", "magma_data.schema", "magma_data.sink", "magma_data.parquet_writer",
                   "magma_data.execution", "magma_data.outputs", "magma_data.summary", "magma_data.progress")),
    # the pipeline type, the pipelines and their registry
    ("pipelines", ("magma_data.pipelines",)),
    # what users run: the run, check, export, card, show, push, the CLI, and magma-train
    ("commands", ("magma_data.runner", "magma_data.check", "magma_data.export", "magma_data.card",
                  "magma_data.show", "magma_data.push", "magma_data.cli", "magma_data.__main__", "magma_data.train")),
)


def _modules() -> dict[str, Path]:
    """Every module of ours by its installed name: ``magma_data.stages.track`` -> stages/track.py."""
    found = {}
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int | None:
    matches = [(len(prefix), rank) for rank, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    return max(matches)[1] if matches else None


def _imported(module: str, path: Path) -> set[str]:
    """The modules of ours an import in ``path`` runs, with the packages on the way to them."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            targets.update(".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in MODULES)
    targets.discard(module)
    return targets


def test_every_module_has_a_layer():
    assert [name for name in MODULES if name != "magma_data" and _layer(name) is None] == []


def test_the_package_root_imports_nothing():
    """Importing any module runs magma_data/__init__.py first: it must not pull the framework into a stage."""
    assert _imported("magma_data", MODULES["magma_data"]) == set()


@pytest.mark.parametrize("module", [name for name in MODULES if name != "magma_data"])
def test_imports_point_down(module):
    rank = _layer(module)
    upward = sorted(f"{target} ({LAYERS[_layer(target)][0]})" for target in _imported(module, MODULES[module])
                    if target != "magma_data" and _layer(target) > rank)
    assert not upward, f"{module} ({LAYERS[rank][0]}) imports a layer above it: {', '.join(upward)}"


def test_an_upward_import_is_caught(tmp_path):
    """The check itself: a stage that imports the config would be refused."""
    stage = tmp_path / "stage.py"
    stage.write_text("def f():\n    from magma_data.config import RunConfig\n    from .base import Column\n")
    found = _imported("magma_data.stages.stage", stage)
    assert found == {"magma_data.config", "magma_data.stages", "magma_data.stages.base"}
    assert _layer("magma_data.config") > _layer("magma_data.stages.stage")
