"""Where training runs: one device, every local device (``mirrored``), or several machines
(``multi_worker``), all through ``tf.distribute``.

``train.strategy`` picks it:
- ``one``: TensorFlow's default strategy, one device (what every run did before);
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over every local GPU, or over
  ``train.cpu_devices`` logical CPU devices (for tests on a CPU); the global batch
  (``train.batch_size``) is split among the replicas;
- ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` across machines, the cluster
  read from ``TF_CONFIG`` or, under ``srun``, from Slurm (``SlurmClusterResolver``). Each worker
  reads its own part of every global batch; only the chief writes the artifact and the reports.

``check_strategy`` validates the parameters without importing TensorFlow, so a bad strategy or
an impossible device count stops a run before any work.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

STRATEGIES = ("one", "mirrored", "multi_worker")


class StrategyError(ValueError):
    """A strategy that cannot run here: unknown, too few devices, no cluster description."""


@dataclass
class Placement:
    """The strategy a run trains under, and what the artifact records of it."""

    strategy: Any  # tf.distribute.Strategy
    name: str  # one of STRATEGIES
    replicas: int  # replicas in sync, over every worker
    workers: int = 1
    is_chief: bool = True


def cluster_from_environment() -> tuple[str, int, int] | None:
    """(source, this task's index, number of workers) from ``TF_CONFIG`` or Slurm, or None."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if text:
        try:
            config = json.loads(text)
            workers = config["cluster"].get("worker", []) + config["cluster"].get("chief", [])
            task = config["task"]
            index = int(task["index"]) + (1 if task["type"] == "worker" and "chief" in config["cluster"] else 0)
        except (ValueError, KeyError, TypeError) as exc:
            raise StrategyError(f"TF_CONFIG is not a cluster description ({exc}): {text[:200]}") from exc
        return "TF_CONFIG", index, len(workers)
    if os.environ.get("SLURM_PROCID") is not None and os.environ.get("SLURM_STEP_NUM_TASKS"):
        return "Slurm", int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_STEP_NUM_TASKS"])
    return None


def check_strategy(strategy: str, cpu_devices: int, batch_size: int, max_train_minutes: float) -> None:
    """Refuse what cannot run, before any work (no TensorFlow needed)."""
    if strategy not in STRATEGIES:
        raise StrategyError(f"train.strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    if int(cpu_devices) < 0:
        raise StrategyError(f"train.cpu_devices must be 0 (the CPU as one device) or more, not {cpu_devices}")
    if strategy == "mirrored" and int(cpu_devices) == 1:
        raise StrategyError(
            "train.strategy mirrored on train.cpu_devices 1 has one replica: use 2 or more, or 0 for GPUs"
        )
    if strategy == "multi_worker":
        cluster = cluster_from_environment()
        if cluster is None:
            raise StrategyError(
                "train.strategy multi_worker needs the cluster: set TF_CONFIG on every worker, or start the "
                "workers with srun (docs/training.md, 'Several devices and machines')"
            )
        if float(max_train_minutes or 0) > 0:
            raise StrategyError(
                "train.strategy multi_worker needs train.max_train_minutes 0: a wall-clock budget would stop "
                "the workers at different steps; bound the run by epochs instead (lr_schedule cosine or constant)"
            )
    if int(batch_size) < 1:
        raise StrategyError(f"train.batch_size must be at least 1, not {batch_size}")


def split_cpu(devices: int) -> None:
    """Make the CPU ``devices`` logical devices (for ``mirrored`` on a CPU). Must run before
    TensorFlow starts its devices."""
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * devices)
    except RuntimeError as exc:
        current = len(tf.config.list_logical_devices("CPU"))
        if current != devices:
            raise StrategyError(
                f"train.cpu_devices {devices}: TensorFlow already started with {current} CPU device(s) in this "
                "process; start a fresh process (train.sh does) to split the CPU"
            ) from exc


def make_placement(
    strategy: str = "one", cpu_devices: int = 0, batch_size: int = 32, max_train_minutes: float = 0
) -> Placement:
    """The strategy to train under; ``check_strategy`` first."""
    check_strategy(strategy, cpu_devices, batch_size, max_train_minutes)
    import tensorflow as tf

    if int(cpu_devices) > 0:
        split_cpu(int(cpu_devices))
    if strategy == "one":
        return Placement(tf.distribute.get_strategy(), "one", 1)
    gpus = tf.config.list_physical_devices("GPU")  # physical: listing logical ones would start TensorFlow
    if strategy == "mirrored":
        if gpus and not cpu_devices:
            chosen = tf.distribute.MirroredStrategy()  # every local GPU, NCCL all-reduce
        else:
            cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
            if len(cpus) < 2:
                raise StrategyError(
                    "train.strategy mirrored found one device (no GPU): set train.cpu_devices 2 or more to split the CPU"
                )
            chosen = tf.distribute.MirroredStrategy(devices=cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
        placement = Placement(chosen, "mirrored", int(chosen.num_replicas_in_sync))
    else:
        source, index, workers = cluster_from_environment()  # checked above
        resolver = (
            tf.distribute.cluster_resolver.TFConfigClusterResolver()
            if source == "TF_CONFIG"
            else tf.distribute.cluster_resolver.SlurmClusterResolver()
        )
        implementation = (
            tf.distribute.experimental.CommunicationImplementation.NCCL
            if gpus
            else tf.distribute.experimental.CommunicationImplementation.RING
        )
        chosen = tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=resolver,
            communication_options=tf.distribute.experimental.CommunicationOptions(implementation=implementation),
        )
        placement = Placement(chosen, "multi_worker", int(chosen.num_replicas_in_sync), workers, index == 0)
    if int(batch_size) % placement.replicas:
        raise StrategyError(
            f"train.batch_size {batch_size} (the global batch) does not split evenly over {placement.replicas} replicas"
        )
    return placement


def synchronise_batchnorm(model, on: bool) -> list:
    """Make the training BatchNormalization layers compute their statistics over the global batch
    (all replicas) while ``on``; returns the layers changed. The saved model keeps them plain."""
    import keras

    changed = []
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable and layer.synchronized != on:
            layer.synchronized = on
            changed.append(layer)
    return changed


def _all_layers(model) -> list:
    out = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers"):
            out.extend(_all_layers(layer))
    return out
