"""A labelled catalogue trains like a folder: ``--dataset labels.parquet -p data.label_column NAME``.

The catalogue is the format ``--catalog`` reads (``id_str``, ``file_loc``, any other columns) with
a label column. Preparation decodes on every core, resumes where it stopped, and lists the
images it cannot read, up to ``data.max_unreadable`` of them.
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
from galaxylib.data import labelled_images
from galaxylib.data.galaxy10 import DatasetError, open_galaxy10
from galaxylib.data.labelled_images import labelled_to_h5, read_labelled_catalogue
from galaxylib.data.labels import LabelsError
from galaxylib.data.resolve import resolve_dataset


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
def test_a_catalogue_becomes_an_h5_with_its_class_table_and_ids(real_rows, tmp_path, suffix):
    catalogue = write_catalogue(tmp_path / "cat" / f"labels{suffix}", real_rows)
    data = resolve_dataset(str(catalogue), workdir=tmp_path / "data", label_column="shape", show_progress=False)
    assert data.class_names == ("disk", "round") and data.n_images == len(real_rows)
    np.testing.assert_array_equal(data.labels(), [i % 2 for i in range(len(real_rows))])
    with h5py.File(data.path, "r") as f:
        assert [n.decode() for n in f["filenames"][:3]] == ["DESI-000", "DESI-001", "DESI-002"]
    again = resolve_dataset(str(catalogue), workdir=tmp_path / "data", label_column="shape", show_progress=False)
    assert again.path == data.path  # made once, then reused


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
    assert "FileNotFoundError" in listed[1]["error"]


def test_a_stopped_preparation_resumes_where_it_stopped(real_rows, tmp_path, monkeypatch):
    catalogue = write_catalogue(tmp_path / "cat" / "labels.parquet", real_rows)
    listing = read_labelled_catalogue(catalogue, "shape")
    monkeypatch.setattr(labelled_images, "CHUNK", 8)
    decoded: list[str] = []
    real_decode = labelled_images._decode_chunk

    def decode_then_stop(paths):
        if len(decoded) >= 16:
            raise KeyboardInterrupt  # Ctrl-C after two chunks
        decoded.extend(paths)
        return real_decode(paths)

    monkeypatch.setattr(labelled_images, "_decode_chunk", decode_then_stop)
    out = tmp_path / "data" / "cat.h5"
    with pytest.raises(KeyboardInterrupt):
        labelled_to_h5(listing, out, source="test", workers=1, show_progress=False)
    assert not out.exists() and out.with_name("cat.h5.partial").is_file()
    first = list(decoded)
    monkeypatch.setattr(labelled_images, "_decode_chunk", lambda paths: decoded.extend(paths) or real_decode(paths))
    labelled_to_h5(listing, out, source="test", workers=1, show_progress=False)
    assert decoded[len(first) :] == [str(p) for p in listing.paths[16:]]  # only what was left
    assert open_galaxy10(out).n_images == len(real_rows) and not out.with_name("cat.h5.partial").exists()


def test_several_workers_decode_the_same_pixels_as_one(real_rows, tmp_path, monkeypatch):
    monkeypatch.setattr(labelled_images, "CHUNK", 8)  # five chunks, so the two processes share them
    catalogue = write_catalogue(tmp_path / "cat" / "labels.parquet", real_rows)
    listing = read_labelled_catalogue(catalogue, "shape")
    one = labelled_to_h5(listing, tmp_path / "one.h5", source="one", workers=1, show_progress=False)
    two = labelled_to_h5(listing, tmp_path / "two.h5", source="two", workers=2, show_progress=False)
    with h5py.File(one, "r") as a, h5py.File(two, "r") as b:
        np.testing.assert_array_equal(a["images"][:], b["images"][:])


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
