"""Reading training data in place (readers.py, order.py, data.RankRows): what each step holds, who reads what.

The folders are laid out as magma-data writes them (``train_fixtures.shard_folder``; one real run for the
loader-worker test), read by the real Parquet readers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from train_fixtures import shard_folder, tiny_magma, tom_shards

from magma_data.train import MagmaProcessor
from magma_data.train import readers as readers_module
from magma_data.train.data import Collator, RankRows, TrainingSamples
from magma_data.train.order import Order, OrderConfig, buffer_draws
from magma_data.train.readers import MagmaShards, SplitRule, count_rows, open_data, split_rows
from magma_data.train.readers import DataSpec as Spec
from magma_data.train.samples import SampleMaker
from magma_data.train.settings import TrainConfig
from magma_data.train.trainer import StepPlan

TRAIN = SplitRule("train", 0.25)
IDS = ["sample_id"]


class Recording(MagmaShards):
    """A magma-data reader that notes the blocks whose rows it reads, and every file it opens."""

    def __init__(self, reader: MagmaShards):
        super().__init__(reader.name, reader.files, reader.weight, reader.run_config)
        self.read: list[tuple[int, int]] = []

    def rows(self, shard, block, indices, columns):
        self.read.append((shard, block))
        return super().rows(shard, block, indices, columns)


def _readers(folder, *weights: float) -> list[Recording]:
    specs = [Spec(folder, weight) for weight in weights or (1.0,)]
    return [Recording(reader) for reader in open_data(specs)]


def _plan(steps: int, batch_size: int, grad_accum: int = 1, world_size: int = 1, epoch_length: int | None = None):
    config = TrainConfig.from_recipe("finetune", data=("x",), model="m", output="o", batch_size=batch_size,
                                     grad_accum=grad_accum, max_steps=steps, validation_fraction=TRAIN.fraction)
    return StepPlan(config, world_size, epoch_length)


def _order(readers, lanes: int, seed: int = 0, window: int = 2, buffer: int = 2) -> Order:
    return Order(readers, OrderConfig(seed, lanes, window, buffer))


def _steps(rows: RankRows, plan: StepPlan) -> list[list[list[str]]]:
    """Per step, this process's micro-batches as sample ids."""
    batches = [[row.row["sample_id"] for row in batch] for batch in rows]
    return [batches[i : i + plan.config.grad_accum] for i in range(0, len(batches), plan.config.grad_accum)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two sources: 8 shards of 10 rows and 2 of 6 (row groups of 4), windows of 3 rows a video."""
    return shard_folder(tmp_path_factory.mktemp("shards"), {"ego": [10] * 8, "oxe": [6, 6]})


def _train_ids(readers) -> list[str]:
    return [row["sample_id"] for reader in readers for row in split_rows(reader, TRAIN, columns=IDS)]


def test_the_buffer_draws_every_row_once_from_a_few_open_blocks():
    sizes = [4, 4, 2, 3]
    draws = list(buffer_draws(sizes, 2, np.random.default_rng(0)))
    assert sorted(draws) == [(block, row) for block, size in enumerate(sizes) for row in range(size)]
    assert {block for block, _ in draws[:3]} <= {0, 1}  # block 2 opens only when one of the first two is empty
    assert draws == list(buffer_draws(sizes, 2, np.random.default_rng(0)))
    one_at_a_time = [block for block, _ in buffer_draws(sizes, 1, np.random.default_rng(0))]
    assert one_at_a_time == [0] * 4 + [1] * 4 + [2] * 2 + [3] * 3


def test_one_lane_reads_every_row_of_the_split_once_an_epoch_in_an_order_drawn_from_the_seed(folder):
    readers = _readers(folder)
    expected = sorted(_train_ids(readers))
    assert sum(count_rows(reader, TRAIN) for reader in readers) == len(expected) and 0 < len(expected) < 92
    plan = _plan(steps=2 * len(expected), batch_size=1)

    def run(seed: int) -> list[str]:
        return [ids[0][0] for ids in _steps(RankRows(_order(readers, 1, seed), TRAIN, IDS, plan, 0), plan)]

    first = run(0)
    epoch0, epoch1 = first[: len(expected)], first[len(expected) :]
    assert sorted(epoch0) == sorted(epoch1) == expected
    assert epoch0 != epoch1 and run(0) == first and run(1) != first


def test_weights_are_shares_of_a_sources_shards_each_epoch(tmp_path):
    readers = open_data([Spec(shard_folder(tmp_path / "a", {"a": [4] * 4}), 1.0),
                         Spec(shard_folder(tmp_path / "b", {"b": [4] * 20}), 0.25)])
    order = _order(readers, 1)
    first, second = order.epoch_shards(0), order.epoch_shards(1)
    assert sorted(first[first[:, 0] == 0, 1].tolist()) == [0, 1, 2, 3]  # weight 1: every shard once
    assert (first[:, 0] == 1).sum() == 5 and len(set(first[first[:, 0] == 1, 1])) == 5  # 0.25: 5 of its 20
    assert set(first[first[:, 0] == 1, 1]) != set(second[second[:, 0] == 1, 1])  # other shards next epoch
    assert order.rows_per_epoch([16, 80]) == 16 + 20
    assert np.array_equal(_order(readers, 1).epoch_shards(0), first)
    doubled = _order(open_data([Spec(tmp_path / "a", 2.0)]), 1).epoch_shards(0)
    assert sorted(doubled[:, 1].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match=r"round\(0.1 x 4 shards\) = 0 shards"):
        _order(open_data([Spec(tmp_path / "a", 0.1)]), 1)


def test_processes_read_only_their_own_blocks_and_their_steps_equal_one_process_accumulating(folder):
    """2 processes x 1 micro-batch and 1 process x 2 micro-batches: the same 2 lanes, the same rows per step."""
    one_plan = _plan(steps=12, batch_size=2, grad_accum=2)  # 24 rows a lane: within its first epoch
    one_readers = _readers(folder, 1.0)
    one = _steps(RankRows(_order(one_readers, 2), TRAIN, IDS, one_plan, 0), one_plan)

    two_plan = _plan(steps=12, batch_size=2, world_size=2)
    processes = [_readers(folder, 1.0) for _ in range(2)]
    two = [_steps(RankRows(_order(readers, 2), TRAIN, IDS, two_plan, rank), two_plan) for rank, readers in
           enumerate(processes)]
    assert [[a[0], b[0]] for a, b in zip(*two)] == one  # step s: process 0's micro-batch, then process 1's

    def blocks(readers):
        return [(reader.name, shard, block) for reader in readers for shard, block in reader.read]

    rank0, rank1 = blocks(processes[0]), blocks(processes[1])
    assert not set(rank0) & set(rank1)  # each block read by one process
    assert sorted(rank0 + rank1) == sorted(blocks(one_readers))
    assert len(set(rank0)) == len(rank0) and len(set(rank1)) == len(rank1)  # each block once


def test_a_resume_from_the_saved_lane_positions_continues_with_the_rows_of_the_uninterrupted_run(folder):
    """Stopped at step 23 (lanes past their first epoch, mid-window): the same rows from there on, reading only
    the blocks open at that point again."""
    plan = _plan(steps=40, batch_size=3, grad_accum=2)
    readers = _readers(folder, 1.0)
    whole = RankRows(_order(readers, 2), TRAIN, IDS, plan, 0)
    batches, reads_before = [], 0
    for batch in whole:
        batches.append([row.row["sample_id"] for row in batch])
        if len(batches) == 23 * 2:
            reads_before = sum(len(reader.read) for reader in readers)
    steps = [batches[i : i + 2] for i in range(0, len(batches), 2)]
    reads_after = sum(len(reader.read) for reader in readers) - reads_before
    assert len(steps) == 40 and 23 * 3 > len(_train_ids(readers)) / 2  # past one epoch of a lane
    positions = whole.positions(23)
    assert all(position.epoch >= 1 and position.before < 23 * 3 for position in positions.values())  # mid-window

    readers = _readers(folder, 1.0)
    resumed = RankRows(_order(readers, 2), TRAIN, IDS, plan, 0, start_step=23, positions=positions)
    assert _steps(resumed, plan) == steps[23:]
    assert reads_after <= sum(len(reader.read) for reader in readers) <= reads_after + 2 * 2  # 2 lanes' open blocks


def test_fewer_blocks_than_lanes_are_halved_so_every_lane_gets_rows(tmp_path):
    readers = open_data([Spec(shard_folder(tmp_path / "small", {"small": [5]}, rows_per_group=8))])  # one block
    plan, order = _plan(steps=2, batch_size=1, grad_accum=4), _order(readers, 4)
    steps = _steps(RankRows(order, SplitRule("all", 0), IDS, plan, 0), plan)
    sizes = [sum(block.rows for block in order.lane_blocks(0, 0, lane)) for lane in range(4)]
    assert sorted(sizes) == [1, 1, 1, 2]
    first_epoch = [steps[step][lane][0] for lane in range(4) for step in range(sizes[lane])]
    assert sorted(first_epoch) == [f"small-0-{row}" for row in range(5)]

    one_row = open_data([Spec(shard_folder(tmp_path / "tiny", {"tiny": [1]}))])
    with pytest.raises(ValueError, match="too few blocks .* processes x --grad-accum lanes"):
        list(RankRows(_order(one_row, 2), SplitRule("all", 0), IDS, _plan(steps=2, batch_size=1, grad_accum=2), 0))


def test_opening_reads_nothing_and_the_first_batch_reads_only_the_first_windows_footers(folder, monkeypatch):
    opened = []
    original = readers_module.pq.ParquetFile

    def opening(path, *args, **kwargs):
        opened.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(readers_module.pq, "ParquetFile", opening)
    readers = _readers(folder)
    assert opened == []
    order = _order(readers, 1, window=2, buffer=2)
    plan = _plan(steps=5, batch_size=2)
    next(iter(RankRows(order, TRAIN, IDS, plan, 0)))
    window = {str(readers[source].files[shard]) for source, shard in order.epoch_shards(0)[:2]}
    assert set(opened) <= window and len(readers[0].read) + len(readers[1].read) <= 2


def test_the_rows_of_each_batch_do_not_depend_on_the_number_of_loader_workers(tmp_path_factory):
    readers = open_data([Spec(tom_shards(tmp_path_factory))])
    processor = MagmaProcessor.from_pretrained(tiny_magma(tmp_path_factory))
    plan = _plan(steps=4, batch_size=2, grad_accum=2)
    rule = SplitRule("all", 0)

    def batches(workers: int) -> list[torch.Tensor]:
        rows = RankRows(_order(readers, 2), rule, None, plan, 0)
        loader = DataLoader(TrainingSamples(readers, SampleMaker(processor), seed=0), batch_sampler=rows,
                            collate_fn=Collator(processor.tokenizer.pad_token_id), num_workers=workers)
        return [batch.inputs["input_ids"] for batch in loader]

    alone, with_workers = batches(0), batches(2)
    assert len(alone) == 8 and all(torch.equal(a, b) for a, b in zip(alone, with_workers, strict=True))


def test_eval_processes_share_the_split_by_block_and_stop_at_the_limit(folder):
    (reader, _) = open_data([Spec(folder)])
    every = [row["sample_id"] for row in split_rows(reader, TRAIN, columns=IDS)]
    parts = [[row["sample_id"] for row in split_rows(reader, TRAIN, None, rank, 2, IDS)] for rank in range(2)]
    assert sorted(parts[0] + parts[1]) == sorted(every) and parts[0] and parts[1]
    assert [row["sample_id"] for row in split_rows(reader, TRAIN, 7, columns=IDS)] == every[:7]
    limited = [[row["sample_id"] for row in split_rows(reader, TRAIN, 7, rank, 2, IDS)] for rank in range(2)]
    assert sorted(limited[0] + limited[1]) == sorted(every[:7])
