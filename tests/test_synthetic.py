"""The synthetic Galaxy10 renderer: reproducible, shaped like the real file, and morphologically honest."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import ndimage

from galaxylib.classes import NUM_CLASSES
from galaxylib.data import synthetic
from galaxylib.data.synthetic import make_synthetic_arrays, render_galaxy, write_synthetic_h5

ROUND_SMOOTH, CIGAR_SMOOTH = 2, 4
EDGE_ON_WITHOUT_BULGE, EDGE_ON_WITH_BULGE = 8, 9

# Keys, dtypes and per-item shapes of the real Galaxy10_DECals.h5.
GALAXY10_LAYOUT = {
    "images": (np.uint8, (256, 256, 3)),
    "ans": (np.uint8, ()),
    "ra": (np.float64, ()),
    "dec": (np.float64, ()),
    "redshift": (np.float64, ()),
    "pxscale": (np.float64, ()),
}


@pytest.fixture(scope="module")
def small_set() -> tuple[np.ndarray, np.ndarray]:
    return make_synthetic_arrays(n_per_class=2, seed=7, size=64)


@pytest.fixture(scope="module")
def full_size_set() -> tuple[np.ndarray, np.ndarray]:
    return make_synthetic_arrays(n_per_class=1, seed=3)


@pytest.fixture(scope="module")
def h5_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_h5(
        tmp_path_factory.mktemp("h5") / "Galaxy10_DECals.h5", n_per_class=1, seed=3, show_progress=False
    )


def _axis_ratio(image: np.ndarray, level: float) -> float:
    """Minor/major axis ratio (second moments) of the connected light above ``level`` x the central peak."""
    lum = image.astype(float).mean(-1)
    lum -= np.median(lum)
    yy, xx = np.mgrid[: lum.shape[0], : lum.shape[1]]
    near_centre = np.hypot(yy - lum.shape[0] / 2, xx - lum.shape[1] / 2) < 10
    brightest = np.unravel_index(np.argmax(np.where(near_centre, lum, -np.inf)), lum.shape)
    labels, _ = ndimage.label(lum > level * lum[brightest])
    core = labels == labels[brightest]  # the galaxy itself, not stars that pass the threshold
    w = lum[core]
    x, y = xx[core] - np.average(xx[core], weights=w), yy[core] - np.average(yy[core], weights=w)
    eigenvalues = np.linalg.eigvalsh(np.cov(np.stack([x, y]), aweights=w))
    return float(np.sqrt(eigenvalues[0] / eigenvalues[1]))


def _median_axis_ratio(class_index: int, level: float, n: int = 6) -> float:
    return float(
        np.median(
            [_axis_ratio(render_galaxy(class_index, np.random.default_rng([class_index, i])), level) for i in range(n)]
        )
    )


def test_render_galaxy_returns_uint8_rgb_of_the_requested_size() -> None:
    for size in (64, 256):
        image = render_galaxy(5, np.random.default_rng(0), size=size)
        assert image.shape == (size, size, 3)
        assert image.dtype == np.uint8


def test_render_galaxy_rejects_an_unknown_class() -> None:
    with pytest.raises(ValueError):
        render_galaxy(NUM_CLASSES, np.random.default_rng(0))


def test_arrays_have_galaxy10_shapes_and_dtypes(small_set: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = small_set
    assert images.shape == (2 * NUM_CLASSES, 64, 64, 3) and images.dtype == np.uint8
    assert labels.shape == (2 * NUM_CLASSES,) and labels.dtype == np.uint8


def test_same_seed_gives_identical_arrays(small_set: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = make_synthetic_arrays(n_per_class=2, seed=7, size=64)
    np.testing.assert_array_equal(images, small_set[0])
    np.testing.assert_array_equal(labels, small_set[1])


def test_different_seed_gives_different_images(small_set: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = make_synthetic_arrays(n_per_class=2, seed=8, size=64)
    assert not np.array_equal(images, small_set[0])


def test_labels_are_balanced_over_all_ten_classes(small_set: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = small_set
    np.testing.assert_array_equal(np.bincount(labels, minlength=NUM_CLASSES), np.full(NUM_CLASSES, 2))


def test_labels_are_shuffled_not_grouped_by_class(small_set: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = small_set
    assert not np.array_equal(labels, np.sort(labels))


def test_galaxy_is_centred_on_a_dark_sky(full_size_set: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = full_size_set
    lum = images.astype(float).mean(-1)
    border = np.ones(lum.shape[1:], bool)
    border[16:-16, 16:-16] = False
    sky = np.median(lum[:, border], axis=1)
    centre = lum[:, 120:136, 120:136].max(axis=(1, 2))
    assert np.all(sky < 45)  # DECaLS-like sky sits near 30, SDSS-like near 5
    assert np.all(centre > sky + 80)


def test_h5_has_the_real_galaxy10_keys_dtypes_and_shapes(h5_file: Path) -> None:
    with h5py.File(h5_file, "r") as f:
        assert set(f.keys()) == set(GALAXY10_LAYOUT)
        for key, (dtype, item_shape) in GALAXY10_LAYOUT.items():
            assert f[key].dtype == dtype, key
            assert f[key].shape == (NUM_CLASSES, *item_shape), key
        assert f["images"].chunks == (1, 256, 256, 3)  # one image per chunk: cheap random access
        np.testing.assert_allclose(f["pxscale"][:], 0.262)


def test_h5_is_marked_synthetic(h5_file: Path) -> None:
    with h5py.File(h5_file, "r") as f:
        assert bool(f.attrs["synthetic"]) is True
        assert f.attrs["generator"] == "galaxylib.data.synthetic"
        assert int(f.attrs["seed"]) == 3


def test_h5_holds_the_same_images_as_the_arrays(h5_file: Path, full_size_set: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = full_size_set
    with h5py.File(h5_file, "r") as f:
        np.testing.assert_array_equal(f["images"][:], images)
        np.testing.assert_array_equal(f["ans"][:], labels)


def test_h5_leaves_no_temporary_file(h5_file: Path) -> None:
    assert [p.name for p in h5_file.parent.iterdir()] == [h5_file.name]


def test_interrupted_h5_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: object, **kwargs: object) -> np.ndarray:
        raise RuntimeError("simulated crash mid-write")

    monkeypatch.setattr(synthetic, "render_galaxy", crash)
    with pytest.raises(RuntimeError):  # one worker: the patched renderer runs in this process
        write_synthetic_h5(tmp_path / "Galaxy10_DECals.h5", n_per_class=1, show_progress=False, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_the_h5_is_the_same_whatever_the_number_of_rendering_processes(tmp_path: Path) -> None:
    one = write_synthetic_h5(tmp_path / "one.h5", n_per_class=1, seed=5, show_progress=False, workers=1)
    two = write_synthetic_h5(tmp_path / "two.h5", n_per_class=1, seed=5, show_progress=False, workers=2)
    with h5py.File(one) as a, h5py.File(two) as b:
        assert np.array_equal(a["images"][:], b["images"][:])
        assert np.array_equal(a["ans"][:], b["ans"][:])


def test_cigar_shaped_galaxies_are_more_elongated_than_round_ones() -> None:
    assert _median_axis_ratio(CIGAR_SMOOTH, level=0.25) < 0.5 < _median_axis_ratio(ROUND_SMOOTH, level=0.25)


def test_edge_on_with_bulge_has_a_rounder_core_than_without() -> None:
    without = _median_axis_ratio(EDGE_ON_WITHOUT_BULGE, level=0.5)
    with_bulge = _median_axis_ratio(EDGE_ON_WITH_BULGE, level=0.5)
    assert without < 0.25
    assert with_bulge > without + 0.08
