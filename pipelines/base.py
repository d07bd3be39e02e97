"""What a pipeline is: its planner, its stages in order with what each costs, and what other commands ask of it.

A pipeline is one module of ``pipelines/`` holding one ``Pipeline`` subclass under
``@register_pipeline``, imported by the registry line in ``pipelines/__init__.py``. ``plan`` turns a
source's units into windows on the driver; ``stage_specs`` is the one list of its stages, top to
bottom, each a ``StageSpec`` that carries its batch size and where it runs; ``build`` turns that
list into Ray Data calls (``magma_data.execution.map_stage``), the same way for every pipeline. The
run, ``check``, ``export``, the dataset card and ``magma-train`` ask the pipeline object what they
need (its columns, the stages ``--redraw-marks`` runs again, the export formats that cannot hold
its rows); none compares its name.
"""

from __future__ import annotations

import dataclasses
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from magma_data.config import RunConfig
from magma_data.execution import RemoteCalls, map_stage
from magma_data.outputs import STATE
from magma_data.registry import Registry
from magma_data.sources.base import Source
from magma_data.stages.base import Column, Placement, Stage
from magma_data.stages.plan import VideoProbes

if TYPE_CHECKING:
    import ray


@dataclass(frozen=True)
class StageSpec:
    """One step of a pipeline: the stage and what running it costs.

    ``batch_size``: windows a Ray batch hands the stage (a model stage's actors fill their own
    batches from it). ``placement``: "tasks" or "actors" (``stages.base.Placement``); ``num_cpus``
    per task or actor; ``gpu_share``: the share of one GPU each actor holds on a cluster with GPUs
    (two model stages share each GPU: their shares add up to 1). ``redraw``: ``magma-train
    --redraw-marks`` runs the stage again on stored rows (the marks stage and those after it, which
    need only the stored traces and image).
    """

    stage: Stage
    batch_size: int
    placement: Placement = "tasks"
    num_cpus: float = 1.0
    gpu_share: float = 1.0
    redraw: bool = False


@dataclass
class PlanContext:
    """What planning may use besides the source and the config.

    ``output``: the run's output folder, where planning keeps what it computes once and a resumed
    run finds again (oxe_tom's action statistics, video_tom's shot cuts); None keeps nothing
    (``magma-data check``). ``overwrite``: the run starts over (``--overwrite``), so what earlier
    runs kept for planning is thrown away first. ``probes``: container reads of the videos, shared
    with the caller (``check`` reports the frame rates the planner read). ``connect_ray``: connects
    this process to the run's Ray (the cluster, or an embedded one) for planning work that runs on
    it; None (``check``, tests): such work runs in this process. ``seen``: when a list, every unit
    the source hands the planner through ``units`` is kept in it (``check`` counts them).
    ``keep``: when given, the planner sees only the units it answers true for (``check``'s sample).
    """

    output: Path | None = None
    overwrite: bool = False
    probes: VideoProbes = field(default_factory=VideoProbes)
    connect_ray: Callable[[], None] | None = None
    seen: list | None = None
    keep: Callable[[Any], bool] | None = None

    def units(self, source: Source) -> Iterator[Any]:
        """The source's units, in its order: what a planner reads (``seen`` keeps them when asked)."""
        for unit in source.clips():
            if self.keep is not None and not self.keep(unit):
                continue
            if self.seen is not None:
                self.seen.append(unit)
            yield unit

    def state(self, source: Source, name: str) -> Path | None:
        """The folder where planning keeps ``name`` for ``source`` (``.magma/<source>/<name>/`` of the
        output, beside the ledger), emptied first when the run overwrites; None without an output."""
        if self.output is None:
            return None
        folder = Path(self.output) / STATE / source.name / name
        if self.overwrite:
            shutil.rmtree(folder, ignore_errors=True)
        return folder

    def remote_calls(self) -> RemoteCalls | None:
        """Ray tasks for planning work that decodes, once connected; None where planning has no Ray."""
        if self.connect_ray is None:
            return None
        self.connect_ray()
        return RemoteCalls()


class Pipeline(ABC):
    """A pipeline: subclasses set ``name`` and ``plan_columns`` and implement ``plan`` and ``stage_specs``."""

    name: ClassVar[str]
    #: the columns the planner puts in a window's row, before any stage
    plan_columns: ClassVar[tuple[Column, ...]]
    #: formats of ``magma-data export`` that cannot hold this pipeline's rows, with the reason (every
    #: other registered format can)
    refused_exports: ClassVar[Mapping[str, str]] = {}

    def check(self, source: Source, config: RunConfig) -> list[str]:
        """Before any work: refuse what this pipeline cannot run on ``source`` (``ValueError`` saying
        what to change), and say what it decided, in the lines a run prints (which optional stages
        run). ``plan`` refuses the same."""
        return []

    @abstractmethod
    def plan(self, source: Source, config: RunConfig, context: PlanContext | None = None) -> list[dict]:
        """Every unit of ``source`` as planned rows, in a stable order: windows, and dropped units for
        what yields none (``ClipProblem.planned``, ``dropped_unit``). Runs on the driver."""

    @abstractmethod
    def stage_specs(self, config: RunConfig, source: Source | None = None) -> list[StageSpec]:
        """The stages from planned window to finished row, in order, each with its batch size and
        placement. ``source``: the reader the windows were planned from, for stages that read
        through it (robot frames); None where the stages are only listed (columns, redraw)."""

    def stages(self, config: RunConfig, source: Source | None = None) -> list[Stage]:
        """The stages alone, in order, to run in one process (benchmarks, tests)."""
        return [spec.stage for spec in self.stage_specs(config, source)]

    def redraw_stages(self, config: RunConfig, seed: int) -> list[Stage]:
        """The stages ``magma-train --redraw-marks`` runs again on a stored row, seeded by ``seed``."""
        reseeded = dataclasses.replace(config, seed=seed)
        return [spec.stage for spec in self.stage_specs(reseeded) if spec.redraw]

    def build(self, windows: ray.data.Dataset, config: RunConfig, source: Source | None = None) -> ray.data.Dataset:
        """The Ray Data graph from planned windows to finished rows: each spec, in order, as ``map_stage`` places it."""
        for spec in self.stage_specs(config, source):
            windows = map_stage(windows, spec.stage, spec.batch_size, spec.placement, spec.num_cpus, spec.gpu_share)
        return windows


#: Every pipeline, by the name ``magma-data run`` takes (filled by ``register_pipeline``; complete once
#: ``magma_data.pipelines`` is imported).
PIPELINES: Registry[Pipeline] = Registry("pipeline")
#: Class decorator: the pipeline becomes ``magma-data run <its name>``.
register_pipeline = PIPELINES.register
