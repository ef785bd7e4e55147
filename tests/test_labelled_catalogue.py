"""A labelled catalogue trains like a folder: ``--dataset labels.parquet -p data.label_column NAME``.

The catalogue is the format ``--catalog`` reads (``id_str``, ``file_loc``, any other columns) with
a label column. Preparation decodes each file once, straight to the model's size, on every core;
it resumes where it stopped, and lists the images it cannot read, up to ``data.max_unreadable``.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from galaxylib.config import PROJECT_ROOT
from galaxylib.data import decoded_files
from galaxylib.data.galaxy10 import DatasetError, cache_path, open_galaxy10, resized_cache
from galaxylib.data.labelled_images import prepare_labelled, read_labelled_catalogue
from galaxylib.data.labels import LabelsError
from galaxylib.data.resolve import resolve_dataset
from galaxylib.preprocessing import load_image


def write_catalogue(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.suffix == ".csv":
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.table({k: [r[k] for r in rows] for k in rows[0]}), path)
    return path


@pytest.fixture
def real_rows(sample_files, tmp_path):
    """The real sample cutouts as catalogue rows: relative file_loc, and a two-class morphology label."""
    images = tmp_path / "cat" / "cutouts"
    images.mkdir(parents=True)
    rows = []
    for i, f in enumerate(sample_files):
        (images / f.name).write_bytes(f.read_bytes())
        rows.append({"id_str": f"DESI-{i:03d}", "file_loc": f"cutouts/{f.name}", "shape": "round" if i % 2 else "disk"})
    return rows


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_a_catalogue_becomes_a_listing_with_its_class_table_and_ids(real_rows, tmp_path, suffix):
    catalogue = write_catalogue(tmp_path / "cat" / f"labels{suffix}", real_rows)
    data = resolve_dataset(str(catalogue), workdir=tmp_path / "data", label_column="shape", show_progress=False)
    assert data.class_names == ("disk", "round") and data.n_images == len(real_rows)
    np.testing.assert_array_equal(data.labels(), [i % 2 for i in range(len(real_rows))])
    with h5py.File(data.path, "r") as f:
        assert [n.decode() for n in f["filenames"][:3]] == ["DESI-000", "DESI-001", "DESI-002"]
    again = resolve_dataset(str(catalogue), workdir=tmp_path / "data", label_column="shape", show_progress=False)
    assert again.path == data.path  # made once, then reused


def test_preparation_decodes_the_files_straight_to_the_model_size_with_no_256px_copy(real_rows, tmp_path):
    catalogue = write_catalogue(tmp_path / "cat" / "labels.parquet", real_rows)
    cache = tmp_path / "data" / "cache"
    data = resolve_dataset(
        str(catalogue),
        workdir=tmp_path / "data",
        cache_dir=cache,
        image_size=40,
        crop=0.8,
        label_column="shape",
        show_progress=False,
    )
    with h5py.File(data.path, "r") as f:
        assert "images" not in f and f["file_loc"].shape == (len(real_rows),)
    assert data.image_files and data.path.stat().st_size < 100_000  # names and labels, no pixels
    assert [p.name for p in cache.iterdir() if p.suffix == ".npy"] == [cache_path(data, 40, cache, 0.8).name]
    pixels = resized_cache(data, 40, cache, show_progress=False, crop=0.8)  # found, not rebuilt
    first = tmp_path / "cat" / real_rows[0]["file_loc"]
    np.testing.assert_array_equal(pixels[0].astype(np.float32), load_image(first, 40, 0.8))  # as served
    assert data.read_images([0]).shape == (1, 256, 256, 3)  # galleries still see the cutout
    picked = data.read_images([3, 1, 3])  # any order, repeats allowed, as for an h5 of pixels
    np.testing.assert_array_equal(picked, np.stack([data.read_images([i])[0] for i in (3, 1, 3)]))
    assert not np.array_equal(picked[0], picked[1])


def test_another_size_is_decoded_from_the_files_and_a_vanished_file_is_named(real_rows, tmp_path):
    catalogue = write_catalogue(tmp_path / "cat" / "labels.parquet", real_rows)
    cache = tmp_path / "data" / "cache"
    data = resolve_dataset(
        str(catalogue), workdir=tmp_path / "data", image_size=32, label_column="shape", show_progress=False
    )
    bigger = resized_cache(data, 48, cache, show_progress=False)
    second = tmp_path / "cat" / real_rows[1]["file_loc"]
    np.testing.assert_array_equal(bigger[1].astype(np.float32), load_image(second, 48))
    second.unlink()
    with pytest.raises(DatasetError, match=rf"1 image file\(s\) .* can no longer be read.*{second.name}"):
        resized_cache(data, 56, cache, show_progress=False)
    assert not cache_path(data, 56, cache).exists()


def test_a_catalogue_without_its_columns_or_labels_is_refused_with_what_it_has(real_rows, tmp_path):
    catalogue = write_catalogue(tmp_path / "cat" / "labels.parquet", real_rows)
    with pytest.raises(LabelsError, match="needs the columns 'file_loc' and 'morphology'.*id_str, file_loc, shape"):
        read_labelled_catalogue(catalogue, "morphology")
    blank = write_catalogue(tmp_path / "cat" / "blank.csv", [*real_rows[:3], {**real_rows[3], "shape": ""}])
    with pytest.raises(LabelsError, match="data row 4 .* has no file_loc or shape"):
        read_labelled_catalogue(blank, "shape")


def test_unreadable_images_are_listed_and_left_out_up_to_the_limit(real_rows, tmp_path):
    folder = tmp_path / "cat"
    (folder / "cutouts" / "broken.jpg").write_bytes(b"not a jpeg")
    rows = [
        *real_rows,
        {"id_str": "broken", "file_loc": "cutouts/broken.jpg", "shape": "disk"},
        {"id_str": "gone", "file_loc": "cutouts/missing.jpg", "shape": "round"},
    ]
    catalogue = write_catalogue(folder / "labels.parquet", rows)
    with pytest.raises(DatasetError, match=r"2 of 42 images could not be read, more than data.max_unreadable \(1\)"):
        resolve_dataset(
            str(catalogue), workdir=tmp_path / "data", label_column="shape", show_progress=False, max_unreadable=1
        )
    data = resolve_dataset(
        str(catalogue), workdir=tmp_path / "data", label_column="shape", show_progress=False, max_unreadable=2
    )
    assert data.n_images == len(real_rows)
    listed = json.loads(data.path.with_name(data.path.stem + ".unreadable.json").read_text())["left_out"]
    assert [Path(r["file"]).name for r in listed] == ["broken.jpg", "missing.jpg"]
    assert "no such file" in listed[1]["error"]


def test_a_stopped_preparation_resumes_where_it_stopped(real_rows, tmp_path, monkeypatch):
    catalogue = write_catalogue(tmp_path / "cat" / "labels.parquet", real_rows)
    listing = read_labelled_catalogue(catalogue, "shape")
    monkeypatch.setattr(decoded_files, "CHUNK", 8)
    decoded: list[str] = []
    real_decode = decoded_files._decode_chunk

    def decode_then_stop(paths, size, crop):
        if len(decoded) >= 16:
            raise KeyboardInterrupt  # Ctrl-C after two chunks
        decoded.extend(paths)
        return real_decode(paths, size, crop)

    monkeypatch.setattr(decoded_files, "_decode_chunk", decode_then_stop)
    out, cache = tmp_path / "data" / "cat.h5", tmp_path / "data" / "cache"
    prepare = dict(source="test", image_size=32, cache_dir=cache, workers=1, show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        prepare_labelled(listing, out, **prepare)
    assert not out.exists() and [p.name for p in cache.glob("*.partial.npy")]
    first = list(decoded)
    monkeypatch.setattr(
        decoded_files,
        "_decode_chunk",
        lambda paths, size, crop: decoded.extend(paths) or real_decode(paths, size, crop),
    )
    prepare_labelled(listing, out, **prepare)
    assert decoded[len(first) :] == [str(p) for p in listing.paths[16:]]  # only what was left
    data = open_galaxy10(out)
    assert data.n_images == len(real_rows) and not list(cache.glob("*.partial*.npy"))
    whole = prepare_labelled(listing, tmp_path / "again" / "cat.h5", **{**prepare, "cache_dir": tmp_path / "again"})
    np.testing.assert_array_equal(
        resized_cache(data, 32, cache, show_progress=False),
        resized_cache(open_galaxy10(whole), 32, tmp_path / "again", show_progress=False),
    )


def test_several_workers_decode_the_same_pixels_as_one(real_rows, tmp_path, monkeypatch):
    monkeypatch.setattr(decoded_files, "CHUNK", 8)  # five chunks, so the two processes share them
    catalogue = write_catalogue(tmp_path / "cat" / "labels.parquet", real_rows)
    listing = read_labelled_catalogue(catalogue, "shape")
    caches = []
    for workers in (1, 2):
        folder = tmp_path / f"workers{workers}"
        out = prepare_labelled(
            listing,
            folder / "cat.h5",
            source="t",
            image_size=32,
            cache_dir=folder,
            workers=workers,
            show_progress=False,
        )
        caches.append(resized_cache(open_galaxy10(out), 32, folder, show_progress=False))
    np.testing.assert_array_equal(caches[0], caches[1])


@pytest.mark.slow
def test_a_catalogue_of_real_cutouts_trains_end_to_end_and_its_model_classifies(real_rows, tmp_path, sample_files):
    catalogue = write_catalogue(tmp_path / "cat" / "labels.parquet", real_rows)
    env = {**os.environ, "PYTHON": sys.executable, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    run = subprocess.run(
        [
            str(PROJECT_ROOT / "train.sh"),
            "--config",
            "configs/tiny.yaml",
            "--dataset",
            str(catalogue),
            "-p",
            "data.label_column",
            "shape",
            "--run-name",
            "catalogue",
            "--reports-root",
            str(tmp_path / "reports"),
            "--models-root",
            str(tmp_path / "models"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT_ROOT,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    model = tmp_path / "models" / "catalogue"
    sidecar = json.loads((model / "model.json").read_text())
    assert sidecar["class_names"] == ["disk", "round"] and sidecar["calibration"] and sidecar["ood"]
    out = tmp_path / "p.csv"
    classified = subprocess.run(
        [str(PROJECT_ROOT / "predict.sh"), "--model", str(model), *map(str, sample_files[:3]), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable, "DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}"},
    )
    assert classified.returncode == 0, classified.stderr
    assert {row["predicted_class"] for row in csv.DictReader(open(out))} <= {"disk", "round"}


def test_a_fifo_in_a_catalogue_is_listed_as_unreadable_not_waited_on(real_rows, tmp_path):
    """A FIFO with no writer would block a reader forever: it is refused from its stat, unopened."""
    os.mkfifo(tmp_path / "cat" / "cutouts" / "pipe.jpg")
    rows = [*real_rows, {"id_str": "pipe", "file_loc": "cutouts/pipe.jpg", "shape": "disk"}]
    catalogue = write_catalogue(tmp_path / "cat" / "labels.parquet", rows)
    script = (
        "import json, sys; from pathlib import Path; from galaxylib.data.resolve import resolve_dataset; "
        f"d = resolve_dataset({str(catalogue)!r}, workdir=Path({str(tmp_path / 'data')!r}), label_column='shape', "
        "show_progress=False, max_unreadable=1); "
        "print(json.dumps(json.loads(d.path.with_name(d.path.stem + '.unreadable.json').read_text())['left_out']))"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    (left_out,) = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(left_out["file"]).name == "pipe.jpg" and "not a regular file (a FIFO)" in left_out["error"]
