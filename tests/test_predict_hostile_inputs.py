"""./predict.sh given odd inputs: every input gets its line in the CSV, the others go on, and
nothing is a traceback.

A file name that is not UTF-8, a FIFO (or socket, or device) where a cutout should be, an h5
whose ``images`` are not the Galaxy10 layout, an h5 without labels, a name too long for the
database: each is written here, under tmp_path, beside real cutouts.
"""

from __future__ import annotations

import csv
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from galaxylib.apps.predict_cli import count_inputs
from galaxylib.config import PROJECT_ROOT
from galaxylib.data.galaxy10 import DatasetError, open_galaxy10
from galaxylib.inference.classify import path_from_name, path_name, read_regular_file
from galaxylib.preprocessing import MAX_IMAGE_PIXELS, ImageError
from galaxylib.store.database import PredictionStore
from galaxylib.store.table import FILENAME_MAX_LENGTH

BAD_NAME = b"bad\xffname.jpg"  # 0xff never occurs in UTF-8


def run_predict(*args: str | os.PathLike, database_url: str | None = None, timeout: float = 300):
    """predict.sh as a user runs it; the timeout turns a hang (a FIFO read forever) into a failure."""
    env = {**os.environ, "PYTHON": sys.executable}
    if database_url:
        env["DATABASE_URL"] = database_url
    return subprocess.run(
        [str(PROJECT_ROOT / "predict.sh"), *map(os.fsdecode, args)],
        capture_output=True,
        text=True,
        errors="backslashreplace",  # stderr names files that are not UTF-8
        env=env,
        timeout=timeout,
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:  # strict: the CSV must be valid UTF-8
        return list(csv.DictReader(fh))


def lines_by_name(path: Path) -> dict[str, dict[str, str]]:
    return {line["filename"]: line for line in read_csv(path)}


def copy_cutouts(sample_files: list[Path], folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    copies = [folder / src.name for src in sample_files[:n]]
    for src, dst in zip(sample_files, copies):
        dst.write_bytes(src.read_bytes())
    return copies


def cutout_array(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# --- 1. file names that are not UTF-8 ---


def test_a_name_that_is_not_utf8_is_written_with_backslash_escapes_and_reads_back_to_its_bytes():
    assert path_name(b"/data/bad\xffname.jpg") == "/data/bad\\xffname.jpg"
    assert path_name("/data/galaxie-\u00e9t\u00e9.jpg") == "/data/galaxie-\u00e9t\u00e9.jpg"  # UTF-8 names as they are
    assert path_name(b"/data/back\\slash.jpg") == "/data/back\\\\slash.jpg"  # so that the escapes stay unambiguous
    assert path_name(os.fsdecode(b"/data/bad\xffname.jpg")) == "/data/bad\\xffname.jpg"  # str from os.listdir too
    assert path_from_name("/data/bad\\xffname.jpg") == b"/data/bad\xffname.jpg"


@given(st.binary(min_size=1).filter(lambda b: b"\0" not in b))
def test_every_possible_name_round_trips_through_valid_utf8(raw: bytes):
    name = path_name(raw)
    name.encode("utf-8")  # valid text for the CSV and a PostgreSQL text column
    assert path_from_name(name) == raw


def test_a_file_whose_name_is_not_utf8_is_classified_and_logged_under_its_escaped_name(
    tiny_artifact, sample_files, tmp_path, database_url
):
    folder = tmp_path / "cutouts"
    good = copy_cutouts(sample_files, folder, 2)
    bad = os.path.join(os.fsencode(folder), BAD_NAME)
    with open(bad, "wb") as fh:
        fh.write(sample_files[2].read_bytes())
    out = tmp_path / "out.csv"
    result = run_predict("--model", tiny_artifact, folder, "--out", out, database_url=database_url)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = lines_by_name(out)
    escaped = f"{folder}/bad\\xffname.jpg"
    assert set(lines) == {str(p) for p in good} | {escaped}
    assert all(line["predicted_class"] and not line["error"] for line in lines.values())
    assert path_from_name(escaped) == bad  # the CSV's name leads back to the file
    store = PredictionStore(database_url)
    try:
        [record] = [r for r in store.list(limit=10)[0] if "bad" in r.filename]
        assert record.filename == escaped and str(record.id) == lines[escaped]["prediction_id"]
        assert store.count() == 3
    finally:
        store.close()


def test_without_the_database_the_csv_still_names_files_not_utf8_an_h5_and_its_rows_too(
    tiny_artifact, sample_files, tmp_path
):
    folder = os.fsencode(tmp_path)
    bad = os.path.join(folder, BAD_NAME)
    with open(bad, "wb") as fh:
        fh.write(sample_files[0].read_bytes())
    broken = os.path.join(folder, b"broken\xe9.jpg")  # Latin-1, not UTF-8; and not an image
    with open(broken, "w") as fh:
        fh.write("not a galaxy")
    h5 = os.path.join(folder, b"rows\xfe.h5")
    with h5py.File(h5, "w") as f:
        f.create_dataset("images", data=cutout_array(sample_files[1])[None])
    out = tmp_path / "out.csv"
    result = run_predict("--model", tiny_artifact, bad, broken, h5, sample_files[2], "--out", out, "--no-db")
    assert result.returncode == 0, result.stderr
    lines = lines_by_name(out)
    assert list(lines) == [
        f"{tmp_path}/bad\\xffname.jpg",
        f"{tmp_path}/broken\\xe9.jpg",
        f"{tmp_path}/rows\\xfe.h5[0]",
        str(sample_files[2]),
    ]
    assert [bool(line["predicted_class"]) for line in lines.values()] == [True, False, True, True]
    assert lines[f"{tmp_path}/broken\\xe9.jpg"]["error"].startswith(f"{tmp_path}/broken\\xe9.jpg: not a JPEG or PNG")


# --- 2. FIFOs, sockets and devices ---


def test_a_fifo_or_socket_or_device_is_an_error_line_and_never_read(tiny_artifact, sample_files, tmp_path):
    """A FIFO with no writer would block a read forever; each is refused from its type alone."""
    folder = tmp_path / "cutouts"
    good = copy_cutouts(sample_files, folder, 2)
    os.mkfifo(folder / "pipe.jpg")  # found in a folder
    os.mknod(folder / "socket.png", stat.S_IFSOCK | 0o600)
    named = tmp_path / "named-pipe.jpg"
    os.mkfifo(named)  # named on the command line
    out = tmp_path / "out.csv"
    result = run_predict("--model", tiny_artifact, folder, named, "/dev/null", "--out", out, "--no-db", timeout=300)
    assert result.returncode == 0, result.stderr
    lines = lines_by_name(out)
    refused = [str(folder / "pipe.jpg"), str(folder / "socket.png"), str(named), "/dev/null"]
    assert set(lines) == {str(p) for p in good} | set(refused)
    for name in refused:
        assert "not a regular file" in lines[name]["error"], lines[name]
        assert not lines[name]["predicted_class"]
    assert all(lines[str(p)]["predicted_class"] for p in good)
    assert "Traceback" not in result.stderr


def test_a_fifo_swapped_in_after_the_type_check_is_refused_without_blocking(tmp_path, monkeypatch):
    """The race: the path was a regular file when stat'ed and is a FIFO when opened. The open
    does not wait for a writer (O_NONBLOCK) and the type is checked again on what was opened."""
    fifo = tmp_path / "swapped.jpg"
    os.mkfifo(fifo)
    regular, real_stat = os.stat(__file__), os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: regular if os.fspath(p) == str(fifo) else real_stat(p, *a, **k))
    with pytest.raises(ImageError, match=r"swapped\.jpg: not a regular file \(a FIFO"):
        read_regular_file(fifo, "swapped.jpg")


# --- 3. h5 files that are not in the Galaxy10 layout, or have no labels ---


def write_h5(path: Path, **datasets) -> Path:
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            if isinstance(value, str) and value == "group":
                f.create_group(key)
            else:
                f.create_dataset(key, data=value)
    return path


def big_h5(path: Path) -> Path:
    """One row over the pixel limit a file is held to: compressed and never written, a few KB on disk."""
    side = math.isqrt(MAX_IMAGE_PIXELS) + 1
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "images", shape=(1, side, side, 3), dtype=np.uint8, chunks=(1, 512, 512, 3), compression="gzip"
        )
    return path


@pytest.fixture
def unusable_h5s(tmp_path) -> dict[str, tuple[Path, str]]:
    """Each odd h5 a user could hand over, with the words its error line must say."""
    rng = np.random.default_rng(0)
    labels = np.zeros(2, np.uint8)
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "text.h5").write_text("not HDF5 at all")
    return {
        "float32": (
            write_h5(folder / "float32.h5", images=rng.random((2, 16, 16, 3), np.float32), ans=labels),
            "float32",
        ),
        "grey": (write_h5(folder / "grey.h5", images=np.zeros((2, 16, 16), np.uint8), ans=labels), "(2, 16, 16)"),
        "chw": (write_h5(folder / "chw.h5", images=np.zeros((2, 3, 16, 16), np.uint8), ans=labels), "(2, 3, 16, 16)"),
        "scalar": (write_h5(folder / "scalar.h5", images=np.uint8(7), ans=labels), "()"),
        "group": (write_h5(folder / "group.h5", images="group", ans=labels), "group"),
        "no images": (write_h5(folder / "labels-only.h5", ans=labels), "missing"),
        "no rows": (write_h5(folder / "empty.h5", images=np.zeros((0, 64, 64, 3), np.uint8)), "holds no images"),
        "too big": (big_h5(folder / "huge.h5"), "over the limit"),
        "not hdf5": (folder / "text.h5", "not a readable HDF5 file"),
    }


def test_an_unusable_h5_is_one_error_line_and_the_other_inputs_go_on(
    tiny_artifact, sample_files, unusable_h5s, tmp_path
):
    out = tmp_path / "out.csv"
    paths = [path for path, _ in unusable_h5s.values()]
    result = run_predict("--model", tiny_artifact, *paths, sample_files[0], "--out", out, "--no-db")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = read_csv(out)
    assert [line["filename"] for line in lines] == [*map(str, paths), str(sample_files[0])]
    for line, (path, says) in zip(lines, unusable_h5s.values()):
        assert says in line["error"] and not line["predicted_class"], line
        assert str(path) in result.stderr
    assert lines[-1]["predicted_class"] and not lines[-1]["error"]


def test_counting_the_inputs_for_the_progress_bar_survives_every_odd_input(unusable_h5s, tmp_path):
    os.mkfifo(tmp_path / "pipe.h5")
    odd = [path for path, _ in unusable_h5s.values()] + [tmp_path / "pipe.h5", tmp_path / "missing.h5"]
    assert count_inputs(odd) == len(odd)  # one line each


def test_an_h5_without_labels_is_classified_row_by_row(tiny_artifact, sample_files, tmp_path, sqlite_url):
    """Predicting needs no labels: ``ans`` is for training."""
    images = np.stack([cutout_array(p) for p in sample_files[:3]])
    h5 = write_h5(tmp_path / "unlabelled.h5", images=images)
    out = tmp_path / "out.csv"
    result = run_predict("--model", tiny_artifact, h5, "--out", out, database_url=sqlite_url)
    assert result.returncode == 0, result.stderr
    lines = read_csv(out)
    assert [line["filename"] for line in lines] == [f"{h5}[{i}]" for i in range(3)]
    assert all(line["predicted_class"] and line["prediction_id"] for line in lines)


def test_a_listing_h5_without_labels_classifies_its_files_and_a_missing_one_is_its_own_line(
    tiny_artifact, sample_files, tmp_path
):
    listed = [str(p) for p in sample_files[:2]] + [str(tmp_path / "gone.jpg"), str(sample_files[2])]
    h5 = write_h5(tmp_path / "listing.h5", file_loc=np.array(listed, dtype=h5py.string_dtype()))
    out = tmp_path / "out.csv"
    result = run_predict("--model", tiny_artifact, h5, "--out", out, "--no-db")
    assert result.returncode == 0, result.stderr
    lines = read_csv(out)
    assert [line["filename"] for line in lines] == [f"{h5}[{i}]" for i in range(4)]
    assert [bool(line["predicted_class"]) for line in lines] == [True, True, False, True]
    assert "gone.jpg" in lines[2]["error"] and "no such file" in lines[2]["error"]


def test_training_still_needs_labels_and_an_odd_h5_is_a_dataset_error_there_too(unusable_h5s, tmp_path):
    unlabelled = write_h5(tmp_path / "unlabelled.h5", images=np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"missing \['ans'\]"):
        open_galaxy10(unlabelled)
    assert open_galaxy10(unlabelled, labels=False).n_images == 2
    for kind in ("float32", "grey", "chw", "scalar", "group", "no images", "not hdf5"):  # the layout's own checks
        path, says = unusable_h5s[kind]
        with pytest.raises(DatasetError) as caught:
            open_galaxy10(path)
        assert says in str(caught.value)
    group_labels = write_h5(tmp_path / "group-labels.h5", images=np.zeros((2, 16, 16, 3), np.uint8), ans="group")
    with pytest.raises(DatasetError, match="'ans' must be a dataset"):
        open_galaxy10(group_labels)


def test_a_catalogue_h5_without_labels_is_classified(tiny_artifact, sample_files, tmp_path):
    from galaxylib.catalog.run import predict_catalog

    h5 = write_h5(tmp_path / "unlabelled.h5", images=np.stack([cutout_array(p) for p in sample_files[:3]]))
    result = predict_catalog(tiny_artifact, str(h5), tmp_path / "out", show_progress=False)
    assert result.ok and result.rows == 3 and result.errors == 0


# --- 4. h5 rows the preprocessing refuses ---


def test_an_h5_row_too_small_to_be_a_cutout_is_its_own_error_line(tiny_artifact, sample_files, tmp_path):
    """Like a file under 8 px, a 4x4 row is refused; the rows and files beside it go on."""
    tiny = write_h5(tmp_path / "tiny.h5", images=np.full((3, 4, 4, 3), 128, np.uint8), ans=np.zeros(3, np.uint8))
    good = write_h5(
        tmp_path / "good.h5", images=np.stack([cutout_array(p) for p in sample_files[:2]]), ans=np.zeros(2, np.uint8)
    )
    out = tmp_path / "out.csv"
    result = run_predict("--model", tiny_artifact, tiny, good, sample_files[2], "--out", out, "--no-db")
    assert result.returncode == 0, result.stderr
    lines = read_csv(out)
    assert [line["filename"] for line in lines] == [
        *(f"{tiny}[{i}]" for i in range(3)),
        *(f"{good}[{i}]" for i in range(2)),
        str(sample_files[2]),
    ]
    assert all("too small" in line["error"] and not line["predicted_class"] for line in lines[:3])
    assert f"{tiny}[2]: " in result.stderr  # the row is named in the report
    assert all(line["predicted_class"] and not line["error"] for line in lines[3:])


# --- names the database cannot hold ---


def test_a_name_too_long_for_the_database_is_classified_in_the_csv_and_said_so(
    tiny_artifact, sample_files, tmp_path, database_url
):
    """The filename column holds 512 characters; a deep path (or a long name that is not UTF-8,
    four characters a byte once escaped) is still classified, and the others are still logged."""
    deep = tmp_path.joinpath(*(["d" * 100] * (FILENAME_MAX_LENGTH // 100 + 1)))
    [long_one] = copy_cutouts(sample_files, deep, 1)
    out = tmp_path / "out.csv"
    result = run_predict("--model", tiny_artifact, long_one, sample_files[1], "--out", out, database_url=database_url)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = lines_by_name(out)
    assert lines[str(long_one)]["predicted_class"] and not lines[str(long_one)]["prediction_id"]
    assert lines[str(sample_files[1])]["prediction_id"]
    assert "not logged" in result.stderr and "512" in result.stderr
    store = PredictionStore(database_url)
    try:
        assert [r.filename for r in store.list()[0]] == [str(sample_files[1])]
    finally:
        store.close()
