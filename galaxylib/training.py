"""Training: augmentation, class balance, early stopping, MLflow logging.

Augmentation lives in a training-only wrapper around the model, so the saved
model (and its TFLite export) is exactly the inference network.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np

from galaxylib.classes import NUM_CLASSES


@dataclass
class TrainParams:
    epochs: int = 100
    batch_size: int = 32
    patience: int = 10  # early stopping on val_loss, best weights restored
    monitor: str = "val_loss"
    balance: str = "class_weight"  # "class_weight" | "oversample" | "none"
    augment_dihedral: bool = True  # the 8 rotations and flips
    augment_brightness: float = 0.1  # +-10 % brightness
    augment_zoom: float = 0.1  # +-10 % zoom
    lr_schedule: str = "constant"  # "constant" | "cosine" (decays to 0 over `epochs`) | "plateau"
    max_train_minutes: float = 0  # 0 = no wall-clock cap
    seed: int = 42

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> "TrainParams":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Inverse-frequency weights (sklearn's 'balanced'); absent classes get 1."""
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(float)
    present = counts > 0
    weights = np.ones(NUM_CLASSES)
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


def _batches(images: np.ndarray, labels: np.ndarray, indices: np.ndarray, batch_size: int,
             shuffle: bool, seed: int, sample_weights_by_class: np.ndarray | None = None):
    """A keras PyDataset over a uint8 array (memmap), read by index one batch at a time."""
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.rng = np.random.default_rng(seed)
            self.order = np.array(indices)
            self.on_epoch_end()

        def __len__(self):
            return math.ceil(len(indices) / batch_size)

        def on_epoch_end(self):
            if sample_weights_by_class is not None:  # oversampling: rare classes drawn more often
                p = sample_weights_by_class[labels[indices]]
                self.order = self.rng.choice(indices, size=len(indices), p=p / p.sum())
            elif shuffle:
                self.order = self.rng.permutation(indices)

        def __getitem__(self, i):
            batch = np.sort(self.order[i * batch_size:(i + 1) * batch_size])  # sorted reads from the memmap
            return images[batch].astype(np.float32), labels[batch]

    return Batches()


def train_model(model, images: np.ndarray, labels: np.ndarray, split, params: TrainParams,
                on_epoch: Callable[[int, dict], None] | None = None) -> dict[str, list[float]]:
    """Fit on ``split.train``, select on ``split.val``; returns the Keras history."""
    import keras

    keras.utils.set_random_seed(params.seed)
    labels = np.asarray(labels, dtype=np.int64)
    oversample = None
    weights = None
    if params.balance == "class_weight":
        weights = class_weights(labels[split.train])
    elif params.balance == "oversample":
        counts = np.bincount(labels[split.train], minlength=NUM_CLASSES).astype(float)
        oversample = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    elif params.balance != "none":
        raise ValueError(f"balance must be class_weight, oversample or none, not {params.balance!r}")

    train_seq = _batches(images, labels, split.train, params.batch_size, True, params.seed, oversample)
    val_seq = _batches(images, labels, split.val, params.batch_size, False, params.seed)

    size = model.input_shape[1]
    inputs = keras.Input((size, size, 3))
    x = inputs
    for layer in _augmenter(params):
        x = layer(x)
    trainer = keras.Model(inputs, model(x), name="trainer")
    optimizer = model.optimizer
    if params.lr_schedule == "cosine":
        base_lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        optimizer = type(optimizer)(learning_rate=keras.optimizers.schedules.CosineDecay(
            base_lr, decay_steps=len(train_seq) * int(params.epochs)))
    elif params.lr_schedule not in ("constant", "plateau"):
        raise ValueError(f"lr_schedule must be constant, cosine or plateau, not {params.lr_schedule!r}")
    trainer.compile(optimizer=optimizer, loss=model.loss, metrics=["accuracy"])

    callbacks: list = [keras.callbacks.EarlyStopping(
        monitor=params.monitor, patience=int(params.patience), restore_best_weights=True, verbose=1)]
    if params.lr_schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=params.monitor, factor=0.3,
                                                           patience=max(1, int(params.patience) // 3), verbose=1))
    if params.max_train_minutes:
        callbacks.append(_WallClockStop(params.max_train_minutes * 60))
    if on_epoch is not None:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: on_epoch(e, dict(logs or {}))))
    history = trainer.fit(train_seq, validation_data=val_seq, epochs=int(params.epochs),
                          class_weight=weights, callbacks=callbacks, verbose=2)
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


def predict_probabilities(model, images: np.ndarray, indices: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Keras-side probabilities for evaluation (the served path uses TFLite)."""
    out = []
    for start in range(0, len(indices), batch_size):
        batch = indices[start:start + batch_size]
        out.append(model.predict_on_batch(images[batch].astype(np.float32)))
    return np.concatenate(out) if out else np.zeros((0, NUM_CLASSES), np.float32)
