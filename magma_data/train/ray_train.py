"""``--ray-address``: the training loop on a Ray cluster's workers, through Ray Train.

A thin layer: Ray Train's ``TorchTrainer`` starts ``--workers`` processes (one GPU each when the
cluster has GPUs), sets up their process group (NCCL on GPUs, gloo otherwise) and the variables
torchrun would set (RANK, WORLD_SIZE, LOCAL_RANK), and each runs ``trainer.train`` unchanged:
the same data order, checkpoints, resume and logs as under torchrun. Ray's own checkpoint and
result storage is not used; the workers write ``--output`` themselves, so it must be storage
every node reaches (a shared file system), as for ``magma-data run`` on a cluster.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .readers import DataSpec
from .settings import TrainConfig
from .trainer import train


def train_on_ray(config: TrainConfig) -> None:
    """``config.workers`` processes on the cluster at ``config.ray_address``, each running ``train``."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = absolute_paths(config)  # workers run in folders of Ray's choosing
    ray.init(address=config.ray_address)
    try:
        use_gpu = ray.cluster_resources().get("GPU", 0) >= 1
        trainer = TorchTrainer(
            _train_worker,
            train_loop_config={"config": config},
            scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=use_gpu),
            run_config=RunConfig(name="magma-train", storage_path=str(config.output.resolve() / "ray")),
        )
        trainer.fit()
    finally:
        ray.shutdown()


def absolute_paths(config: TrainConfig) -> TrainConfig:
    specs = [DataSpec.parse(entry) for entry in config.data]
    return dataclasses.replace(
        config,
        data=tuple(f"{spec.path.resolve()}:{spec.weight}" for spec in specs),
        model=config.model.resolve(),
        output=config.output.resolve(),
    )


def _train_worker(loop_config: dict[str, Any]) -> None:
    train(loop_config["config"])
