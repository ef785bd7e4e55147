"""Training input streamed from disk: index batches, rows read from a memory map, per-worker shares.

galaxylib.modeling.input_pipeline replaces copying the train and validation rows into one
in-memory tensor: these tests pin what the stream must keep from that (every row once per
epoch, the same order for the same seed, the labels beside their pixels) and what it adds
(each worker's share of a global batch, class weights that survive distribution).
"""

from __future__ import annotations

import numpy as np
import pytest

from galaxylib.modeling.input_pipeline import (
    batches_of,
    epoch_orders,
    feature_reader,
    image_reader,
    read_rows,
    rows_dataset,
    view_examples,
    worker_slices,
)


def test_each_epoch_is_cut_into_its_own_batches_so_an_epoch_never_runs_short():
    orders = epoch_orders(np.arange(10), np.zeros(10, np.int64), epochs=3, seed=0, balance="none", n_classes=2)
    batches = list(batches_of(orders, 4))
    assert [len(b) for b in batches] == [4, 4, 2] * 3  # ceil(10 / 4) = 3 steps every epoch
    for epoch in range(3):
        assert sorted(np.concatenate(batches[3 * epoch : 3 * epoch + 3])) == list(range(10))
    dropped = list(batches_of(epoch_orders(np.arange(10), np.zeros(10), 3, 0, "none", 2), 4, drop_remainder=True))
    assert [len(b) for b in dropped] == [4, 4] * 3


def test_the_order_is_the_same_for_the_same_seed_and_drawn_one_epoch_at_a_time():
    labels = np.arange(50) % 5
    first = np.stack(list(epoch_orders(np.arange(50), labels, 4, seed=3, balance="oversample", n_classes=5)))
    again = np.stack(list(epoch_orders(np.arange(50), labels, 4, seed=3, balance="oversample", n_classes=5)))
    np.testing.assert_array_equal(first, again)
    stream = epoch_orders(
        np.arange(10**6), np.zeros(10**6, np.int64), epochs=10**6, seed=0, balance="none", n_classes=1
    )
    assert len(next(stream)) == 10**6  # a generator: a million epochs of a million rows cost one epoch's order


def test_rows_come_back_in_the_order_asked_whatever_order_they_are_read_in(tmp_path):
    path = tmp_path / "cache.npy"
    cache = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(20, 4, 4, 3))
    cache[:] = np.arange(20, dtype=np.uint8)[:, None, None, None]
    cache.flush()
    images = np.load(path, mmap_mode="r")
    rows = np.array([7, 2, 19, 2, 0])
    np.testing.assert_array_equal(read_rows(images, rows)[:, 0, 0, 0], rows)
    x, y = image_reader(images, np.arange(20) * 10)(rows)
    np.testing.assert_array_equal(y, rows * 10)


def test_the_dataset_yields_float_pixels_labels_and_class_weights_from_a_memory_map(tmp_path):
    import tensorflow as tf

    path = tmp_path / "cache.npy"
    cache = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(12, 8, 8, 3))
    cache[:] = np.arange(12, dtype=np.uint8)[:, None, None, None]
    cache.flush()
    images, labels = np.load(path, mmap_mode="r"), np.arange(12) % 3
    ds = rows_dataset(
        lambda: iter([np.array([3, 1]), np.array([11])]),
        image_reader(images, labels),
        (8, 8, 3),
        np.uint8,
        tf.float32,
        class_weights={0: 1.0, 1: 2.0, 2: 0.5},
    )
    (x1, y1, w1), (x2, y2, w2) = [tuple(t.numpy() for t in batch) for batch in ds]
    assert x1.dtype == np.float32 and x1.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(x1[:, 0, 0, 0], [3, 1])
    np.testing.assert_array_equal(y1, [0, 1])
    np.testing.assert_array_equal(w1, [1.0, 2.0])  # each example's class weight is its sample weight
    np.testing.assert_array_equal(y2, [2])
    np.testing.assert_array_equal(w2, [0.5])


def test_head_examples_are_every_view_of_a_row_read_from_the_feature_cache():
    features = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)  # (views, rows, width)
    examples = view_examples(np.array([4, 1]), views=2, n=5)
    np.testing.assert_array_equal(examples, [4, 1, 9, 6])
    x, y = feature_reader(features, np.array([0, 1, 2, 3, 4]))(examples)
    np.testing.assert_array_equal(x, features.reshape(10, 3)[[4, 1, 9, 6]])
    np.testing.assert_array_equal(y, [4, 1, 4, 1])


@pytest.mark.parametrize("pipelines, per_replica", [(1, 4), (2, 4), (2, 2), (4, 2)])
def test_the_workers_shares_of_each_global_batch_cover_it_once(pipelines, per_replica):
    global_batches = [np.arange(8) + 8 * k for k in range(3)]
    shares = [list(worker_slices(iter(global_batches), p, pipelines, per_replica)) for p in range(pipelines)]
    for k, batch in enumerate(global_batches):
        steps = len(shares[0]) // len(global_batches)  # per-replica batches each worker yields per global batch
        seen = np.concatenate([np.concatenate(s[k * steps : (k + 1) * steps]) for s in shares])
        np.testing.assert_array_equal(np.sort(seen), batch)
    assert all(len(b) == per_replica for s in shares for b in s)
