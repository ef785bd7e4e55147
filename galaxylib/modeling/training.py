"""Training: augmentation, class balance, early stopping, MLflow logging.

Augmentation lives in a training-only wrapper around the model, so the saved
model (and its TFLite export) is exactly the inference network.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from galaxylib.modeling.fused_batchnorm import fused_batchnorm

MODES = ("full", "head", "finetune")


@dataclass
class TrainParams:
    # "full": the network trains as trainable_layers says; "head": the backbone is frozen and the
    # head trains on cached features; "finetune": "head" first, then the last trainable_layers
    # backbone layers train with the head (galaxylib/modeling/head.py).
    mode: str = "full"
    head_epochs: int = (
        300  # head mode: the cosine schedule's length; early stopping on the views' val loss may end it sooner
    )
    head_learning_rate: float = 1e-3
    head_batch_size: int = 256
    head_patience: int = 25
    epochs: int = 100
    batch_size: int = 32
    patience: int = 10  # early stopping on val_loss, best weights restored
    monitor: str = "val_loss"
    # "class_weight" | "oversample" | "logit_adjust" (the loss sees the logits shifted by
    # tau * log(class prior): Menon et al. 2021; the saved model answers with plain softmax) | "none"
    balance: str = "class_weight"
    logit_adjust_tau: float = 1.5
    augment_dihedral: bool = True  # the 8 rotations and flips
    augment_brightness: float = 0.1  # +-10 % brightness
    augment_zoom: float = 0.1  # +-10 % zoom
    # "constant" | "cosine" (decays to 0 over `epochs`) | "plateau" | "cosine_budget" (decays
    # to 0 over `max_train_minutes` of wall clock, then stops: the schedule completes on a
    # slow machine too, at the cost of a step count that depends on the machine's speed)
    lr_schedule: str = "constant"
    max_train_minutes: float = 0  # 0 = no wall-clock cap
    fused_batchnorm: bool = True  # TensorFlow's fused kernel in training steps (galaxylib/fused_batchnorm.py)
    # Where training runs (galaxylib/modeling/distribute.py): "one" device, "mirrored" over every local
    # GPU (or cpu_devices logical CPUs), or "multi_worker" across machines (TF_CONFIG or Slurm).
    strategy: str = "one"
    cpu_devices: int = 0  # > 0 splits the CPU into this many logical devices (mirrored on a CPU, for tests)
    # "auto": mixed_float16 when a GPU trains (the softmax stays float32); true or false to force it
    mixed_precision: str | bool = "auto"
    seed: int = 42

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> TrainParams:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})


BALANCES = ("class_weight", "oversample", "logit_adjust", "none")


def training_loss(params: TrainParams, train_labels: np.ndarray, n_classes: int):
    """The loss for probabilities from a softmax: plain cross-entropy, or the logit-adjusted one.

    Logit adjustment trains as if the rare classes' logits were lowered by tau * log(prior),
    so the plain model that is saved favours them at inference; it balances classes without
    weighting examples (docs/training.md, "Real galaxies")."""
    if params.balance not in BALANCES:
        raise ValueError(f"balance must be one of {', '.join(BALANCES)}, not {params.balance!r}")
    if params.balance != "logit_adjust":
        return "sparse_categorical_crossentropy"
    import keras
    from keras import ops

    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    shift = (float(params.logit_adjust_tau) * np.log(np.maximum(counts, 1) / counts.sum())).astype(np.float32)

    def logit_adjusted_crossentropy(y_true, y_pred):
        logits = ops.log(ops.clip(y_pred, 1e-7, 1.0)) + shift
        return keras.losses.sparse_categorical_crossentropy(y_true, logits, from_logits=True)

    return logit_adjusted_crossentropy


def class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """Inverse-frequency weights (sklearn's 'balanced'); absent classes get 1."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    present = counts > 0
    weights = np.ones(n_classes)
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return {i: float(w) for i, w in enumerate(weights)}


def _augmenter(params: TrainParams):
    import keras
    import tensorflow as tf

    class RandomDihedral(keras.layers.Layer):
        """One of the 8 rotations/flips drawn for each image: a galaxy has no preferred
        orientation. Each element of the group is a transpose or not, then a left-right flip or
        not, then an up-down flip or not: three coin tosses per image, three selects per batch
        (a whole batch turned alike would give BatchNormalization batches of one orientation)."""

        def call(self, images, training=None):
            if not training:
                return images
            n = tf.shape(images)[0]

            def toss():
                return tf.reshape(tf.random.uniform([n]) < 0.5, [-1, 1, 1, 1])

            images = tf.where(toss(), tf.transpose(images, [0, 2, 1, 3]), images)
            images = tf.where(toss(), tf.reverse(images, [2]), images)
            return tf.where(toss(), tf.reverse(images, [1]), images)

    layers = []
    if params.augment_dihedral:
        layers.append(RandomDihedral(name="aug_dihedral"))
    if params.augment_zoom:
        z = float(params.augment_zoom)
        layers.append(keras.layers.RandomZoom((-z, z), fill_mode="reflect", seed=params.seed, name="aug_zoom"))
    if params.augment_brightness:
        b = float(params.augment_brightness)
        layers.append(keras.layers.RandomBrightness(b, value_range=(0, 255), seed=params.seed, name="aug_brightness"))
    return layers


def train_model(
    model,
    images: np.ndarray,
    labels: np.ndarray,
    split,
    params: TrainParams,
    n_classes: int,
    on_epoch: Callable[[int, dict], None] | None = None,
    placement=None,
) -> dict[str, list[float]]:
    """Fit on ``split.train``, select on ``split.val``; returns the Keras history.

    ``images`` is the resized cache (a memory map): batches are read from it as training goes
    (``galaxylib.modeling.input_pipeline``), so memory does not grow with the dataset. Under a
    ``placement`` of several replicas (``galaxylib.modeling.distribute``), the global batch
    ``params.batch_size`` is split among them, each worker reads only its share, and the
    BatchNormalization layers that train use the statistics of the global batch. Build ``model``
    inside ``placement.strategy.scope()``."""
    import keras
    import tensorflow as tf

    from galaxylib.modeling.distribute import synchronise_batchnorm
    from galaxylib.modeling.input_pipeline import (
        batches_of,
        epoch_orders,
        image_reader,
        rows_dataset,
        worker_slices,
    )

    keras.utils.set_random_seed(params.seed)
    labels = np.asarray(labels, dtype=np.int64)
    loss = training_loss(params, labels[split.train], n_classes)
    weights = class_weights(labels[split.train], n_classes) if params.balance == "class_weight" else None
    epochs, batch = int(params.epochs), int(params.batch_size)
    size = int(model.input_shape[1])
    read = image_reader(images, labels)
    val_rows = np.asarray(split.val, dtype=np.int64)

    def orders():
        return epoch_orders(split.train, labels, epochs, params.seed, params.balance, n_classes)

    def val_batches():
        return (val_rows[i : i + batch] for i in range(0, len(val_rows), batch))

    strategy = placement.strategy if placement is not None else tf.distribute.get_strategy()
    distributed = placement is not None and (placement.replicas > 1 or placement.workers > 1)
    if not distributed:
        steps = math.ceil(len(split.train) / batch)
        train_ds = rows_dataset(
            lambda: batches_of(orders(), batch), read, (size, size, 3), np.uint8, tf.float32, class_weights=weights
        )
    else:
        steps = len(split.train) // batch  # only whole global batches, so every replica steps together
        if steps == 0:
            raise ValueError(f"{len(split.train)} training images make no global batch of {batch}")

        def per_worker(context):
            per_replica = context.get_per_replica_batch_size(batch)
            return rows_dataset(
                lambda: worker_slices(
                    batches_of(orders(), batch, drop_remainder=True),
                    context.input_pipeline_id,
                    context.num_input_pipelines,
                    per_replica,
                ),
                read,
                (size, size, 3),
                np.uint8,
                tf.float32,
                class_weights=weights,
            )

        train_ds = strategy.distribute_datasets_from_function(per_worker)
    val_ds = rows_dataset(val_batches, read, (size, size, 3), np.uint8, tf.float32)
    if distributed:  # every worker evaluates every validation batch: the same val_loss everywhere
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        val_ds = val_ds.with_options(options)

    with strategy.scope():
        inputs = keras.Input((size, size, 3))
        x = inputs
        for layer in _augmenter(params):
            x = layer(x)
        model_class = _vector_logs_model() if placement is not None and placement.workers > 1 else keras.Model
        trainer = model_class(inputs, model(x), name="trainer")
        # under mixed precision Keras wraps the optimizer in a LossScaleOptimizer: the schedule goes
        # to the one inside, and compile wraps the new one again
        optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
        if params.lr_schedule == "cosine":
            base_lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
            optimizer = type(optimizer)(
                learning_rate=keras.optimizers.schedules.CosineDecay(base_lr, decay_steps=steps * epochs)
            )
        elif params.lr_schedule == "cosine_budget" and not params.max_train_minutes:
            raise ValueError("lr_schedule cosine_budget needs max_train_minutes > 0")
        elif params.lr_schedule not in ("constant", "plateau", "cosine_budget"):
            raise ValueError(
                f"lr_schedule must be constant, cosine, cosine_budget or plateau, not {params.lr_schedule!r}"
            )
        trainer.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    if placement is not None and placement.workers > 1:
        # Keras 3.15 builds a model that holds its strategy by all-reducing a first batch
        # (Trainer._maybe_symbolic_build), which fails under MultiWorkerMirroredStrategy ("Attempt
        # to convert a value (PerReplica...)"). A trainer without a strategy of its own defers the
        # build to the first traced step; it still trains under ours (fit runs in its scope below).
        trainer._distribute_strategy = None

    callbacks: list = [
        keras.callbacks.EarlyStopping(
            monitor=params.monitor, patience=int(params.patience), restore_best_weights=True, verbose=1
        )
    ]
    if params.lr_schedule == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=params.monitor, factor=0.3, patience=max(1, int(params.patience) // 3), verbose=1
            )
        )
    if params.lr_schedule == "cosine_budget":
        callbacks.append(
            _BudgetCosine(float(keras.ops.convert_to_numpy(optimizer.learning_rate)), params.max_train_minutes * 60)
        )
    elif params.max_train_minutes:
        callbacks.append(_WallClockStop(params.max_train_minutes * 60))
    if on_epoch is not None:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: on_epoch(e, dict(logs or {}))))
    synchronised = synchronise_batchnorm(model, True) if distributed else []
    try:
        # the training step is traced inside fit
        with strategy.scope(), fused_batchnorm(params.fused_batchnorm):
            history = trainer.fit(
                train_ds,
                validation_data=val_ds,
                epochs=epochs,
                steps_per_epoch=steps,
                shuffle=False,
                callbacks=callbacks,
                verbose=2,
            )
    finally:
        for layer in synchronised:  # the saved model is the plain one
            layer.synchronized = False
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def _vector_logs_model():
    """A Keras model whose training and test steps log 1-element vectors. Keras 3.15 averages each
    logged value over the workers of a MultiWorkerMirroredStrategy along its axis 0, which a
    scalar lacks ("Invalid reduction dimension 0 for input with 0 dimensions": tensorflow#72388);
    a vector of one averages to the same number."""
    import keras
    from keras import ops

    class VectorLogsModel(keras.Model):
        def train_step(self, data):
            return {k: ops.reshape(v, (1,)) for k, v in super().train_step(data).items()}

        def test_step(self, data):
            return {k: ops.reshape(v, (1,)) for k, v in super().test_step(data).items()}

    return VectorLogsModel


def _WallClockStop(seconds: float):
    import keras

    class WallClockStop(keras.callbacks.Callback):
        """Stops after the epoch that crosses the budget (EarlyStopping still restores the best)."""

        def on_train_begin(self, logs=None):
            self.start = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            if time.monotonic() - self.start > seconds:
                print(f"Stopping: the {seconds / 60:.1f}-minute training budget is spent.")
                self.model.stop_training = True

    return WallClockStop()


def _BudgetCosine(base_lr: float, seconds: float):
    import keras

    class BudgetCosine(keras.callbacks.Callback):
        """Cosine learning-rate decay over a wall-clock budget, then a stop.

        The budget counts from the start of training (graph tracing included); the
        decay runs from the end of the first batch, when steps take their steady time.
        Validation still runs on the cut-short last epoch.
        """

        def on_train_begin(self, logs=None):
            self.deadline = time.monotonic() + seconds
            self.decay_start = None

        def on_train_batch_begin(self, batch, logs=None):
            now = time.monotonic()
            if self.decay_start is None:
                lr = base_lr
            else:
                span = max(self.deadline - self.decay_start, 1e-9)
                lr = 0.5 * base_lr * (1 + math.cos(math.pi * min(1.0, (now - self.decay_start) / span)))
            self.model.optimizer.learning_rate.assign(lr)

        def on_train_batch_end(self, batch, logs=None):
            now = time.monotonic()
            if self.decay_start is None:
                self.decay_start = now
            if now >= self.deadline and not self.model.stop_training:
                print(f"Stopping: the {seconds / 60:.1f}-minute training budget is spent (learning rate decayed to 0).")
                self.model.stop_training = True

    return BudgetCosine()


def predict_probabilities(model, images: np.ndarray, indices: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Keras-side probabilities for evaluation (the served path uses TFLite)."""
    out = []
    for start in range(0, len(indices), batch_size):
        batch = indices[start : start + batch_size]
        out.append(model.predict_on_batch(images[batch].astype(np.float32)))
    return np.concatenate(out) if out else np.zeros((0, int(model.output_shape[-1])), np.float32)
