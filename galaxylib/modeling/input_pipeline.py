"""Training batches streamed from disk through ``tf.data``: memory does not grow with the dataset.

The resized cache (``galaxylib.data.galaxy10.resized_cache``) and head mode's feature cache
(``galaxylib.modeling.head.view_features``) are uint8 and float32 ``.npy`` files opened as
memory maps. A batch is a list of row indices; ``tf.data`` reads each batch's rows from the map
in parallel (sorted, so reads run forward through the file) and keeps at most ``PREFETCH``
batches ahead. Shuffling is a fresh permutation of the row indices every epoch (8 bytes a row,
drawn one epoch at a time), so every epoch sees every row once, as in-memory training did, and
the order is the same as before for the same seed.

With several replicas (``galaxylib.modeling.distribute``), every worker draws the same global
order and reads only its own slice of each global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

PREFETCH = 2  # batches read ahead of the training step


def epoch_orders(
    indices: np.ndarray, labels: np.ndarray, epochs: int, seed: int, balance: str, n_classes: int
) -> Iterator[np.ndarray]:
    """Each epoch's sample order, drawn when it is needed: a fresh permutation per epoch, or
    (``balance="oversample"``) draws weighted so each class is seen equally often."""
    rng = np.random.default_rng(seed)
    indices = np.asarray(indices)
    if balance == "oversample":
        counts = np.bincount(labels[indices], minlength=n_classes).astype(float)
        p = 1.0 / counts[labels[indices]]
        p = p / p.sum()
        for _ in range(epochs):
            yield rng.choice(indices, size=len(indices), p=p)
        return
    for _ in range(epochs):
        yield rng.permutation(indices)


def batches_of(orders: Iterator[np.ndarray], batch_size: int, drop_remainder: bool = False) -> Iterator[np.ndarray]:
    """Each epoch's order cut into batches: ``ceil(n / batch_size)`` of them an epoch, the last one
    short (or left out with ``drop_remainder``), so an epoch of ``steps_per_epoch`` steps never
    runs out of data."""
    for order in orders:
        order = np.asarray(order, dtype=np.int64)
        stop = len(order) - len(order) % batch_size if drop_remainder else len(order)
        for start in range(0, stop, batch_size):
            yield order[start : start + batch_size]


def read_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` read in file order (forward through a memory map), returned in ``rows`` order."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
    out[order] = array[rows[order]]
    return out


def rows_dataset(
    batches: Callable[[], Iterator[np.ndarray]],
    read: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    x_shape: tuple[int, ...],
    x_dtype,
    cast_to=None,
    class_weights: dict[int, float] | None = None,
):
    """A ``tf.data.Dataset`` of (x, y), or (x, y, w) with ``class_weights``: index batches from
    ``batches()``, each read by ``read`` (in NumPy, off the training thread), optionally cast
    (uint8 pixels to float32). Each example's class weight travels as its sample weight, which
    is what Keras's ``class_weight`` does, and also works on a distributed dataset."""
    import tensorflow as tf

    weight_of = None
    if class_weights is not None:
        weight_of = tf.constant([class_weights[k] for k in range(len(class_weights))], tf.float32)

    def load(rows):
        x, y = tf.numpy_function(read, [rows], (tf.as_dtype(x_dtype), tf.int64), stateful=False)
        x.set_shape([None, *x_shape])
        y.set_shape([None])
        x = tf.cast(x, cast_to) if cast_to is not None else x
        return (x, y) if weight_of is None else (x, y, tf.gather(weight_of, y))

    ds = tf.data.Dataset.from_generator(batches, output_signature=tf.TensorSpec([None], tf.int64))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(PREFETCH)


def image_reader(images: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Rows of the resized cache and their labels."""
    labels = np.asarray(labels, dtype=np.int64)

    def read(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return read_rows(images, rows), labels[rows]

    return read


def feature_reader(features: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Examples of a (V, N, F) view-feature cache: example ``v * N + r`` is row r in view v."""
    labels = np.asarray(labels, dtype=np.int64)
    n = features.shape[1]
    flat = features.reshape(-1, features.shape[-1])  # a view of the map, not a copy

    def read(examples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return read_rows(flat, examples), labels[np.asarray(examples) % n]

    return read


def view_examples(rows: np.ndarray, views: int, n: int) -> np.ndarray:
    """The example ids of ``rows`` in every one of ``views`` views (view-major, as the cache is)."""
    rows = np.asarray(rows, dtype=np.int64)
    return (np.arange(views, dtype=np.int64)[:, None] * n + rows[None, :]).reshape(-1)


def worker_slices(
    global_batches: Iterator[np.ndarray], pipeline: int, pipelines: int, per_replica: int
) -> Iterator[np.ndarray]:
    """This input pipeline's share of each global batch, as per-replica batches (the strategy
    hands consecutive ones to its local replicas)."""
    for batch in global_batches:
        share = np.array_split(batch, pipelines)[pipeline]
        for start in range(0, len(share), per_replica):
            yield share[start : start + per_replica]
