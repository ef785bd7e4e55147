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
        """One of the 8 rotations/flips per image: a galaxy has no preferred orientation."""

        def call(self, images, training=None):
            if not training:
                return images
            k = tf.random.uniform([], 0, 4, dtype=tf.int32)
            images = tf.image.rot90(images, k)
            flip = tf.random.uniform([]) < 0.5
            return tf.cond(flip, lambda: tf.image.flip_left_right(images), lambda: images)

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


def epoch_orders(
    indices: np.ndarray, labels: np.ndarray, epochs: int, seed: int, balance: str, n_classes: int
) -> np.ndarray:
    """Every epoch's sample order, drawn up front: a fresh permutation per epoch, or
    (``balance="oversample"``) draws weighted so each class is seen equally often."""
    rng = np.random.default_rng(seed)
    indices = np.asarray(indices)
    if balance == "oversample":
        counts = np.bincount(labels[indices], minlength=n_classes).astype(float)
        p = 1.0 / counts[labels[indices]]
        return rng.choice(indices, size=(epochs, len(indices)), p=p / p.sum())
    return np.stack([rng.permutation(indices) for _ in range(epochs)])


def _dataset(images, labels: np.ndarray, order: np.ndarray, batch_size: int):
    """A tf.data pipeline over uint8 images already in memory.

    No Python runs per batch (a keras PyDataset ran at half the speed here and once
    hung between epochs), so the two cores go to the network.
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(order.astype(np.int64)).batch(batch_size)
    ds = ds.map(
        lambda i: (tf.cast(tf.gather(images, i), tf.float32), tf.gather(labels, i)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.prefetch(2)


def train_model(
    model,
    images: np.ndarray,
    labels: np.ndarray,
    split,
    params: TrainParams,
    n_classes: int,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> dict[str, list[float]]:
    """Fit on ``split.train``, select on ``split.val``; returns the Keras history."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(params.seed)
    labels = np.asarray(labels, dtype=np.int64)
    loss = training_loss(params, labels[split.train], n_classes)
    weights = class_weights(labels[split.train], n_classes) if params.balance == "class_weight" else None

    # Only train and val rows are read, once, in index order (cheap on a memmap).
    used = np.union1d(split.train, split.val)
    position = np.full(len(labels), -1, dtype=np.int64)
    position[used] = np.arange(len(used))
    pixels = tf.constant(np.asarray(images[used]))
    used_labels = tf.constant(labels[used])
    epochs = int(params.epochs)
    steps = math.ceil(len(split.train) / params.batch_size)
    train_order = position[epoch_orders(split.train, labels, epochs, params.seed, params.balance, n_classes)].reshape(
        -1
    )
    train_ds = _dataset(pixels, used_labels, train_order, params.batch_size)
    val_ds = _dataset(pixels, used_labels, position[np.asarray(split.val)], params.batch_size)

    size = model.input_shape[1]
    inputs = keras.Input((size, size, 3))
    x = inputs
    for layer in _augmenter(params):
        x = layer(x)
    trainer = keras.Model(inputs, model(x), name="trainer")
    optimizer = model.optimizer
    if params.lr_schedule == "cosine":
        base_lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        optimizer = type(optimizer)(
            learning_rate=keras.optimizers.schedules.CosineDecay(base_lr, decay_steps=steps * epochs)
        )
    elif params.lr_schedule == "cosine_budget" and not params.max_train_minutes:
        raise ValueError("lr_schedule cosine_budget needs max_train_minutes > 0")
    elif params.lr_schedule not in ("constant", "plateau", "cosine_budget"):
        raise ValueError(f"lr_schedule must be constant, cosine, cosine_budget or plateau, not {params.lr_schedule!r}")
    trainer.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])

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
    with fused_batchnorm(params.fused_batchnorm):  # the training step is traced inside fit
        history = trainer.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            steps_per_epoch=steps,
            shuffle=False,
            class_weight=weights,
            callbacks=callbacks,
            verbose=2,
        )
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


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
