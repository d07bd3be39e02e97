"""The order of a run's rows: a block shuffle over windows of shards, dealt to lanes, from the seed alone.

Rows are read in place a block (a row group, ``readers.py``) at a time, so the order is built from
blocks, with what is known before a block is read: the readers' shard lists, the footers of the
shards of the current window, and the split of the blocks already drawn.

1. An epoch's shards: each source's shards in a seeded order, ``weight`` passes over them
   (``0.3``: 30 % of its shards, a different draw each epoch; ``2``: every shard twice), the
   sources' shuffled together.
2. Windows: ``window`` consecutive shards of that list. A window's blocks are shuffled and dealt to
   the lanes, each to the lane with the fewest rows so far (so lanes stay within a block of each
   other); a window with fewer blocks than lanes has its largest blocks halved until each lane
   gets one.
3. Lanes: one per micro-batch of a step (processes x ``--grad-accum``): lane ``l`` gives micro-batch
   ``l`` of every step, so process ``r`` of ``W`` reads lanes ``m·W + r`` and nothing else. The
   order depends on the number of lanes, not on how they are split into processes and accumulation
   steps, and not on loader workers (rows are read by the training process, ``data.RankRows``).
4. The buffer: a lane holds ``buffer`` blocks of its window open and draws each row at random
   among their rows left; a block that empties makes way for the lane's next one. A row of the
   other split is drawn and passed over; a block without a row of the split is never read.

A lane runs through its own epochs (its share of every window of every epoch, in turn), and its
position is ``LanePosition`` (epoch, window, rows given before the window): the draws inside a
window follow from its footers and seed, so a resume reads the unit columns of the blocks drawn
so far in that window and the blocks open at that point, nothing more.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .readers import Reader

# What each seeded draw is for (the last number of its seed), so no two draws share a stream.
_SHARDS, _DEAL, _BUFFER = 0, 1, 2


class Block(NamedTuple):
    """A unit of I/O: block ``index`` of ``shard`` of source ``source``; its rows ``offset .. offset + rows - 1``."""

    source: int
    shard: int
    index: int
    rows: int
    offset: int = 0


class LanePosition(NamedTuple):
    """Where a lane is: the window it is in, and how many rows it gave before that window."""

    epoch: int
    window: int
    before: int


START = LanePosition(0, 0, 0)


@dataclass(frozen=True)
class OrderConfig:
    """What fixes the order besides the data: the seed, the lanes, and the shuffle's reach."""

    seed: int
    lanes: int
    #: shards whose blocks are shuffled together
    window: int
    #: blocks a lane draws from at once (its memory: this many row groups)
    buffer: int


class Order:
    """Which blocks each lane reads in each window, and the order of their rows."""

    def __init__(self, readers: Sequence[Reader], config: OrderConfig):
        self.readers, self.config = list(readers), config
        self.shards = [reader.shard_count() for reader in readers]
        self.takes = [round(reader.weight * count) for reader, count in zip(readers, self.shards)]
        for reader, count, take in zip(readers, self.shards, self.takes):
            if take == 0:
                raise ValueError(
                    f"--data {reader.name}:{reader.weight:g} gives round({reader.weight:g} x {count} shards) = 0 "
                    "shards an epoch (a weight is the share of a source's shards each epoch); raise its weight"
                )
        self._epochs: OrderedDict[int, np.ndarray] = OrderedDict()
        self._windows: OrderedDict[tuple[int, int], list[list[Block]]] = OrderedDict()

    def rows_per_epoch(self, rows: Sequence[int]) -> int:
        """Samples an epoch holds on average, given each source's rows of the split."""
        return round(sum(take / count * count_rows for take, count, count_rows in zip(self.takes, self.shards, rows)))

    def epoch_shards(self, epoch: int) -> np.ndarray:
        """[shards, 2] (source, shard): the epoch's shards in order."""
        if epoch not in self._epochs:
            rng = np.random.default_rng((self.config.seed, epoch, _SHARDS))
            parts = []
            for source, (count, take) in enumerate(zip(self.shards, self.takes)):
                chosen = np.concatenate([rng.permutation(count) for _ in range(math.ceil(take / count))])[:take]
                parts.append(np.stack([np.full(take, source), chosen], axis=1))
            shards = np.concatenate(parts)
            self._epochs[epoch] = shards[rng.permutation(len(shards))]
            _trim(self._epochs, 4)
        return self._epochs[epoch]

    def window_count(self, epoch: int) -> int:
        return math.ceil(len(self.epoch_shards(epoch)) / self.config.window)

    def lane_blocks(self, epoch: int, window: int, lane: int) -> list[Block]:
        """The blocks a lane reads in a window, in the order it opens them."""
        key = (epoch, window)
        if key not in self._windows:
            self._windows[key] = self._deal(epoch, window)
            _trim(self._windows, 8)  # lanes of a process are at most a few windows apart; a dealing is cheap to redo
        return self._windows[key][lane]

    def _deal(self, epoch: int, window: int) -> list[list[Block]]:
        size = self.config.window
        blocks = [
            Block(int(source), int(shard), index, rows)
            for source, shard in self.epoch_shards(epoch)[window * size : (window + 1) * size]
            for index, rows in enumerate(self.readers[source].block_rows(int(shard)))
            if rows
        ]
        while blocks and len(blocks) < self.config.lanes and max(block.rows for block in blocks) > 1:
            # fewer blocks than lanes (small data, or a short last window): halve the largest, so every lane
            # gets rows; the halves' row group is then read by two lanes
            largest = max(range(len(blocks)), key=lambda position: blocks[position].rows)
            block, half = blocks[largest], blocks[largest].rows // 2
            blocks[largest : largest + 1] = [block._replace(rows=block.rows - half),
                                             block._replace(rows=half, offset=block.offset + block.rows - half)]
        rng = np.random.default_rng((self.config.seed, epoch, window, _DEAL))
        lanes = rng.permutation(self.config.lanes)  # who wins a tie
        loads = np.zeros(self.config.lanes, np.int64)
        dealt: list[list[Block]] = [[] for _ in range(self.config.lanes)]
        for position in rng.permutation(len(blocks)):
            block = blocks[position]
            lane = lanes[np.argmin(loads[lanes])]
            dealt[lane].append(block)
            loads[lane] += block.rows
        return dealt

    def draws(self, epoch: int, window: int, lane: int) -> Iterator[tuple[int, int]]:
        """(block, row) of every row of the lane's blocks in the window, in the order they are drawn:
        uniformly among the rows left in the ``buffer`` open blocks."""
        sizes = [block.rows for block in self.lane_blocks(epoch, window, lane)]
        rng = np.random.default_rng((self.config.seed, epoch, window, lane, _BUFFER))
        return buffer_draws(sizes, self.config.buffer, rng)


def buffer_draws(sizes: Sequence[int], buffer: int, rng: np.random.Generator) -> Iterator[tuple[int, int]]:
    """Every row of blocks of ``sizes`` rows, as (block, row): ``buffer`` blocks are open at once, each
    row drawn uniformly among the rows they have left, each block's rows in a seeded order."""
    opened = list(range(min(buffer, len(sizes))))
    upcoming = len(opened)
    rows = [rng.permutation(sizes[block]) for block in opened]
    left = [sizes[block] for block in opened]
    uniforms = iter(rng.random(sum(sizes)))
    while opened:
        slot = int(np.searchsorted(np.cumsum(left), next(uniforms) * sum(left), side="right"))
        block = opened[slot]
        left[slot] -= 1
        yield block, int(rows[slot][left[slot]])
        if left[slot] == 0:
            if upcoming < len(sizes):
                opened[slot], rows[slot], left[slot] = upcoming, rng.permutation(sizes[upcoming]), sizes[upcoming]
                upcoming += 1
            else:
                del opened[slot], rows[slot], left[slot]


def _trim(cache: OrderedDict, size: int) -> None:
    while len(cache) > size:
        cache.popitem(last=False)
