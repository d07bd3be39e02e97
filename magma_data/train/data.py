"""Rows -> training batches, read where they lie. Follow one row from its shard to the model's input:

1. ``readers.py``: each ``--data PATH[:WEIGHT]`` becomes readers, one class per layout (a source
   folder of a magma-data output, a LLaVA JSON file), which read rows in place a block (a Parquet
   row group) at a time; ``SplitRule`` holds out whole videos for validation by a hash.
2. ``order.py``: which rows each step holds, from the seed alone: the epoch's shards in a seeded
   order (weights are shares of a source's shards per epoch), their blocks shuffled in windows of
   shards and dealt to lanes (one per micro-batch of a step), each lane drawing rows at random from
   a few open blocks.
3. ``RankRows`` (here): the loader's batch sampler. The training process reads its own lanes'
   blocks, and nothing else, and hands each micro-batch's rows to the loader's workers, so the
   rows of a step are the same whatever the number of workers, and a resume restarts from the
   lanes' positions saved in the checkpoint.
4. ``TrainingSamples`` (here, in the workers): ``--redraw-marks`` draws the row's marks again
   (``Reader.redraw``); ``samples.SampleMaker`` makes Magma's sample (a video row loses its SoM / ToM
   turn in ``--som-tom-drop`` of the draws, per (seed, epoch, sample)).
5. ``Collator``: Magma's ``DataCollatorForSupervisedDataset`` (right padding, crops and image grids
   zero-padded across the batch).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from magma_data.magma_text import IGNORE_INDEX

from .order import START, LanePosition, Order
from .readers import Reader, SplitRule
from .samples import BadRow, Sample, SampleMaker, Skipped
from .settings import MAGMA_MAX_LENGTH

if TYPE_CHECKING:
    from .trainer import StepPlan


# -- 3. the rows of this process's micro-batches -------------------------------------------------


@dataclass(frozen=True)
class ReadRow:
    """A row as the training process read it, for a loader worker to make its sample."""

    source: int
    #: the lane's epoch the row was drawn in (``--redraw-marks`` draws new marks each epoch)
    epoch: int
    row: dict[str, Any]


class LaneRows:
    """One lane's rows of the split, in order, read block by block: at most ``buffer`` blocks held."""

    def __init__(self, lane: int, order: Order, rule: SplitRule, columns: Sequence[str] | None,
                 position: LanePosition = START, given: int = 0):
        self.lane, self.order, self.rule, self.columns = lane, order, rule, columns
        #: each window the lane entered and the rows it had given then, in order
        self.entered = [position]
        self._rows = self._read(position, given)

    def take(self, count: int) -> list[ReadRow]:
        return [next(self._rows) for _ in range(count)]

    def position(self, given: int) -> LanePosition:
        """Where to start again so that row ``given`` of the lane comes next."""
        found = self.entered[bisect.bisect_right([entry.before for entry in self.entered], given) - 1]
        del self.entered[: self.entered.index(found)]  # no checkpoint will go back further
        return found

    def _read(self, position: LanePosition, start: int) -> Iterator[ReadRow]:
        """Rows from ``position`` on, the first ``start - position.before`` of them passed over unread."""
        epoch, window, given = position
        epoch_start = given if window == 0 else None  # a whole epoch without a row: the split is empty for it
        while True:
            if window == self.order.window_count(epoch):
                if given == epoch_start:
                    raise ValueError(
                        f"lane {self.lane} drew no row of the {self.rule.split} split in a whole epoch: the data hold "
                        "too few blocks (row groups) of it for processes x --grad-accum lanes; check --data and "
                        "--validation-fraction, or use fewer processes or less accumulation"
                    )
                epoch, window, epoch_start = epoch + 1, 0, given
                continue
            blocks = self.order.lane_blocks(epoch, window, self.lane)
            if blocks and self.entered[-1] != (epoch, window, given):
                self.entered.append(LanePosition(epoch, window, given))
            kept: dict[int, np.ndarray] = {}
            loaded: dict[int, dict[int, dict[str, Any]]] = {}
            left = [block.rows for block in blocks]
            for index, row in self.order.draws(epoch, window, self.lane):
                block = blocks[index]
                reader = self.order.readers[block.source]
                if index not in kept:
                    units = reader.units(block.shard, block.index)[block.offset : block.offset + block.rows]
                    kept[index] = self.rule.keeps(units)
                if kept[index][row]:
                    if given >= start:
                        if index not in loaded:
                            indices = np.flatnonzero(kept[index])
                            rows = reader.rows(block.shard, block.index, indices + block.offset, self.columns)
                            loaded[index] = dict(zip(indices.tolist(), rows))
                        yield ReadRow(block.source, epoch, loaded[index][row])
                    given += 1
                left[index] -= 1
                if not left[index]:
                    kept.pop(index)
                    loaded.pop(index, None)
            window += 1


class RankRows:
    """This process's micro-batches of rows, step by step from ``start_step``: the loader's batch sampler.

    Micro-batch ``m`` of step ``s`` of process ``r`` is lane ``m·W + r``'s rows ``s·B .. s·B + B - 1``
    (``W`` processes, ``B`` samples a micro-batch), the last step cut where the run ends.
    """

    def __init__(self, order: Order, rule: SplitRule, columns: Sequence[str] | None, plan: StepPlan, rank: int,
                 start_step: int = 0, positions: dict[int, LanePosition] | None = None):
        self.plan, self.rank, self.start_step = plan, rank, start_step
        size = plan.config.batch_size
        self.lanes = {
            lane: LaneRows(lane, order, rule, columns, LanePosition(*positions[lane]) if positions else START,
                           start_step * size)
            for lane in range(rank, plan.lanes, plan.world_size)
        }

    def __iter__(self) -> Iterator[list[ReadRow]]:
        plan, size = self.plan, self.plan.config.batch_size
        for step in range(self.start_step, plan.total_steps):
            for micro in range(plan.config.grad_accum):
                lane = micro * plan.world_size + self.rank
                first = step * plan.global_batch + lane * size
                yield self.lanes[lane].take(max(0, min(size, plan.end_position - first)))

    def positions(self, step: int) -> dict[int, LanePosition]:
        """This process's lanes' positions at the start of ``step``: what a checkpoint saves."""
        return {lane: rows.position(step * self.plan.config.batch_size) for lane, rows in self.lanes.items()}


# -- 4. row -> sample, in the loader's workers ----------------------------------------------------


class TrainingSamples(torch.utils.data.Dataset):
    """A row read by ``RankRows`` -> its ``Sample``, or a ``Skipped`` for a row that is not one."""

    def __init__(self, readers: Sequence[Reader], maker: SampleMaker, seed: int, redraw: bool = False):
        self.readers, self.maker, self.seed, self.redraw = list(readers), maker, seed, redraw
        if redraw:
            for reader in self.readers:
                reader.check_redraw()

    def __getitem__(self, item: ReadRow) -> Sample | Skipped:
        source, row = self.readers[item.source], item.row
        try:
            if self.redraw:
                row = source.redraw(row, self.seed, item.epoch)
            return self.maker(row, source, item.epoch)
        except BadRow as bad:
            return Skipped(source.name, bad.reason, f"{row.get('sample_id', row.get('id', '?'))}: {bad.detail}")


# -- 5. collation -------------------------------------------------------------------------------


@dataclass
class Batch:
    """A collated micro-batch (``inputs`` None when every row of it was skipped)."""

    inputs: dict[str, torch.Tensor] | None
    sources: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def supervised_tokens(self) -> int:
        """Tokens the loss averages over (label != -100; the first position predicts nothing)."""
        return int((self.inputs["labels"][:, 1:] != IGNORE_INDEX).sum()) if self.inputs else 0


@dataclass(frozen=True)
class Collator:
    """Magma's ``DataCollatorForSupervisedDataset``: input ids padded with the pad id and labels
    with -100 on the right, both cut to ``max_length``; each sample's crops concatenated and
    zero-padded to ``[B, max_crops, 3, H, W]``, image grids to ``[B, max_images, 2]``;
    ``attention_mask = input_ids != pad``."""

    pad_token_id: int
    max_length: int = MAGMA_MAX_LENGTH

    def __call__(self, items: list[Sample | Skipped]) -> Batch:
        samples = [item for item in items if isinstance(item, Sample)]
        skipped = [item for item in items if isinstance(item, Skipped)]
        if not samples:
            return Batch(None, skipped=skipped)
        pad = torch.nn.utils.rnn.pad_sequence
        input_ids = pad([s.input_ids for s in samples], batch_first=True, padding_value=self.pad_token_id)
        labels = pad([s.labels for s in samples], batch_first=True, padding_value=IGNORE_INDEX)
        input_ids, labels = input_ids[:, : self.max_length], labels[:, : self.max_length]
        inputs = {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": input_ids.ne(self.pad_token_id),
            "pixel_values": pad([s.pixel_values for s in samples], batch_first=True, padding_value=0),
            "image_sizes": pad([s.image_sizes for s in samples], batch_first=True, padding_value=0),
        }
        return Batch(inputs, [s.source for s in samples], skipped)

