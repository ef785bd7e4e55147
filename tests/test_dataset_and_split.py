"""The Galaxy10 h5 reader, folder conversion, and the stratified split."""

import json

import h5py
import numpy as np
import pytest

from galaxylib.data.galaxy10 import DatasetError, open_galaxy10, resized_cache
from galaxylib.data.labelled_images import convert_labelled
from galaxylib.data.split import SplitError, load_split, make_split, save_split
from galaxylib.preprocessing import load_image


def write_real_format_h5(path, n=20, seed=0):
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=rng.integers(0, 256, (n, 256, 256, 3), dtype=np.uint8), chunks=(1, 256, 256, 3))
        f.create_dataset("ans", data=(np.arange(n) % 10).astype(np.uint8))
        for key in ("ra", "dec", "redshift"):
            f.create_dataset(key, data=rng.random(n))
        f.create_dataset("pxscale", data=np.full(n, 0.262))
    return path


def test_the_reader_opens_a_real_format_file_and_reads_rows_in_any_order(tmp_path):
    data = open_galaxy10(write_real_format_h5(tmp_path / "g10.h5"))
    assert data.n_images == 20 and not data.synthetic
    assert list(data.labels()[:12]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    with h5py.File(data.path) as f:
        expected = f["images"][[2, 5, 9]]
    np.testing.assert_array_equal(data.read_images([9, 2, 5]), expected[[2, 0, 1]])


def test_a_file_without_the_galaxy10_keys_is_refused(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(DatasetError, match="missing"):
        open_galaxy10(tmp_path / "other.h5")


def test_a_non_hdf5_file_is_refused(tmp_path):
    (tmp_path / "fake.h5").write_text("not hdf5")
    with pytest.raises(DatasetError, match="not a readable HDF5"):
        open_galaxy10(tmp_path / "fake.h5")


def test_the_resized_cache_is_the_preprocessing_function_applied_to_each_row(tmp_path):
    data = open_galaxy10(write_real_format_h5(tmp_path / "g10.h5", n=6))
    cache = resized_cache(data, 48, cache_dir=tmp_path / "cache", show_progress=False)
    assert cache.shape == (6, 48, 48, 3) and cache.dtype == np.uint8
    np.testing.assert_array_equal(cache[4].astype(np.float32), load_image(data.read_images([4])[0], 48))


def test_a_folder_of_real_cutouts_with_labels_csv_becomes_a_galaxy10_listing(samples_dir, tmp_path):
    listing = convert_labelled(
        samples_dir, tmp_path / "samples.h5", image_size=64, cache_dir=tmp_path / "cache", show_progress=False
    )
    data = open_galaxy10(listing)
    assert data.n_images == 40
    assert np.bincount(data.labels(), minlength=10).tolist() == [4] * 10
    assert resized_cache(data, 64, tmp_path / "cache", show_progress=False).shape == (40, 64, 64, 3)


def test_the_split_is_stratified_seeded_and_disjoint():
    labels = np.repeat(np.arange(10), 40)
    split = make_split(labels, "sha", seed=1)
    assert split.sizes() == {"train": 280, "val": 60, "test": 60}
    for part in (split.train, split.val, split.test):
        counts = np.bincount(labels[part], minlength=10)
        assert counts.max() - counts.min() <= 1  # every class in the same proportion
    assert not set(split.train) & set(split.val) and not set(split.val) & set(split.test)
    again = make_split(labels, "sha", seed=1)
    np.testing.assert_array_equal(split.test, again.test)


def test_a_saved_split_refuses_another_dataset(tmp_path):
    split = make_split(np.repeat(np.arange(10), 10), "a" * 64)
    path = save_split(split, tmp_path / "split.json")
    assert json.loads(path.read_text())["dataset_sha256"] == "a" * 64
    np.testing.assert_array_equal(load_split(path, "a" * 64).val, split.val)
    with pytest.raises(SplitError, match="re-run the data preparation"):
        load_split(path, "b" * 64)
