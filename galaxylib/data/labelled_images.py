"""Labelled images from files into the Galaxy10 h5 layout: a folder with labels.csv, or a catalogue.

A catalogue is what ``./predict.sh --catalog`` reads (galaxy-datasets' convention): a Parquet or
CSV table with ``file_loc`` (relative to the catalogue's folder, or absolute), an optional
``id_str``, and a label column; ``./train.sh --dataset labels.parquet -p data.label_column NAME``
trains on it. The class table follows labels.csv's rules (galaxylib.data.labels).

The conversion decodes on every core (one process each), a chunk at a time, and writes into a
partial file that records which rows are done, so a run stopped anywhere resumes where it
stopped. An unreadable image is listed and left out, up to ``data.max_unreadable`` of them;
past that the conversion stops with the list.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from galaxylib.data.galaxy10 import CUTOUT_SIZE, DatasetError
from galaxylib.data.labels import LabelledFolder, LabelsError, class_table, read_labelled_folder
from galaxylib.files import atomic_path, atomic_write_json
from galaxylib.preprocessing import ImageError, decode_image, preprocess_uint8
from galaxylib.processes import without_main_module

PATH_COLUMN, ID_COLUMN = "file_loc", "id_str"
CATALOGUE_SUFFIXES = (".parquet", ".pq", ".csv")
CHUNK = 64  # images a worker decodes per task
UNREADABLE_FILE = "unreadable.json"  # beside the h5: the files left out, with why


def read_labelled_catalogue(path: str | os.PathLike, label_column: str = "label") -> LabelledFolder:
    """A catalogue's rows as a listing: every row needs a ``file_loc`` and a label. The files are
    not opened here (an unreadable one is found, listed and left out by the conversion)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        if path.suffix.lower() == ".csv":
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
        else:
            table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise LabelsError(f"cannot read the catalogue {path}: {exc}") from exc
    missing = [c for c in (PATH_COLUMN, label_column) if c not in table.column_names]
    if missing:
        raise LabelsError(
            f"the catalogue {path} needs the columns {PATH_COLUMN!r} and {label_column!r} (missing: "
            f"{', '.join(missing)}; its columns: {', '.join(table.column_names)}); choose the label column with "
            "-p data.label_column NAME"
        )
    locations = table.column(PATH_COLUMN).to_pylist()
    values = ["" if v is None else str(v).strip() for v in table.column(label_column).to_pylist()]
    ids = table.column(ID_COLUMN).to_pylist() if ID_COLUMN in table.column_names else locations
    for row, (location, value) in enumerate(zip(locations, values), start=1):
        if not location or not value:
            raise LabelsError(
                f"the catalogue {path}: data row {row} (the first is 1) has no {PATH_COLUMN} or {label_column}"
            )
    if not locations:
        raise LabelsError(f"the catalogue {path} has no rows")
    names = class_table(path.parent, values)
    index_of = {name: i for i, name in enumerate(names)}
    labels = []
    for row, value in enumerate(values, start=1):
        if value in index_of:
            labels.append(index_of[value])
        elif value.lstrip("-").isdigit() and 0 <= int(value) < len(names):
            labels.append(int(value))
        else:
            raise LabelsError(
                f"the catalogue {path}: data row {row} has {label_column} {value!r}, not one of {list(names)}"
            )
    base = path.resolve().parent
    paths = tuple(Path(p) if os.path.isabs(p) else base / p for p in locations)
    return LabelledFolder(path.parent, tuple(str(i) for i in ids), paths, tuple(labels), names, label_column)


def _decode_chunk(paths: list[str]) -> tuple[np.ndarray, list[str | None]]:
    """A worker's task: cutouts at the h5's size, and for each a reason it could not be read."""
    out = np.zeros((len(paths), CUTOUT_SIZE, CUTOUT_SIZE, 3), np.uint8)
    errors: list[str | None] = []
    for i, path in enumerate(paths):
        try:
            out[i] = preprocess_uint8(decode_image(Path(path).read_bytes()), CUTOUT_SIZE)
            errors.append(None)
        except (OSError, ImageError, ValueError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return out, errors


def labelled_to_h5(
    listing: LabelledFolder,
    out_path: str | os.PathLike,
    *,
    source: str,
    max_unreadable: int = 0,
    workers: int | None = None,
    show_progress: bool = True,
) -> Path:
    """Decode every listed image into the Galaxy10 h5 layout at ``out_path``, on ``workers``
    processes (all cores by default), resuming a stopped conversion; unreadable images are left
    out and listed in ``unreadable.json`` beside it, up to ``max_unreadable``."""
    out_path = Path(out_path)
    n = len(listing)
    used = sorted(set(listing.labels))
    if len(used) < 2:  # refused here, before decoding or training, not when the artifact is written
        raise DatasetError(
            f"{listing.folder}: every image is labelled {listing.class_names[used[0]]!r} (column "
            f"{listing.label_column!r}); a classifier needs images of at least two classes"
        )
    partial = out_path.with_name(out_path.name + ".partial")
    key = json.dumps([source, listing.label_column, n], sort_keys=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(partial, "a") as f:
        if f.attrs.get("key") != key:  # another input's, or a fresh start
            for name in list(f):
                del f[name]
            f.create_dataset(
                "images", (n, CUTOUT_SIZE, CUTOUT_SIZE, 3), np.uint8, chunks=(1, CUTOUT_SIZE, CUTOUT_SIZE, 3)
            )
            f.create_dataset("done", data=np.zeros(n, bool))
            f.create_dataset("error", (n,), dtype=h5py.string_dtype())
            f.attrs["key"] = key
        done = f["done"][:]
    todo = [i for i in range(0, n, CHUNK) if not done[i : i + CHUNK].all()]
    workers = max(1, workers or os.cpu_count() or 1)
    with (
        tqdm(total=n, initial=int(done.sum()), desc="Decoding images", unit="img", disable=not show_progress) as bar,
        h5py.File(partial, "a") as f,
    ):
        # spawned, not forked: a notebook's kernel holds threads a fork would copy mid-flight
        pool = (
            ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
            if workers > 1 and len(todo) > 1
            else None
        )
        try:
            chunks = [[str(p) for p in listing.paths[i : i + CHUNK]] for i in todo]
            if pool is None:
                results = map(_decode_chunk, chunks)
            else:
                with without_main_module():  # every task is submitted, and every worker started, here
                    results = pool.map(_decode_chunk, chunks)
            for start, (pixels, errors) in zip(todo, results):
                stop = start + len(errors)
                f["images"][start:stop] = pixels
                f["error"][start:stop] = [e or "" for e in errors]
                f["done"][start:stop] = True
                f.flush()  # a stop after this line resumes after this chunk
                bar.update(len(errors))
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        errors = [e.decode() if isinstance(e, bytes) else e for e in f["error"][:]]
    bad = [i for i, e in enumerate(errors) if e]
    report = [{"row": i, "file": str(listing.paths[i]), "error": errors[i]} for i in bad]
    if len(bad) > max_unreadable:
        shown = "; ".join(f"{r['file']} ({r['error']})" for r in report[:5])
        raise DatasetError(
            f"{len(bad)} of {n} images could not be read, more than data.max_unreadable ({max_unreadable}): {shown}"
            f"{' ...' if len(bad) > 5 else ''}. Fix or remove them, or allow them with -p data.max_unreadable N"
        )
    keep = np.array([i for i in range(n) if not errors[i]], dtype=np.int64)
    _write_final(partial, out_path, listing, keep)
    atomic_write_json(out_path.with_name(out_path.stem + "." + UNREADABLE_FILE), {"source": source, "left_out": report})
    if bad:
        print(f"{len(bad)} unreadable image(s) left out (listed in {out_path.stem}.{UNREADABLE_FILE})")
    partial.unlink(missing_ok=True)
    return out_path


def read_labelled(path: str | os.PathLike, label_column: str = "label") -> LabelledFolder:
    """A folder with labels.csv, or a labelled catalogue file."""
    path = Path(path)
    return read_labelled_folder(path, label_column) if path.is_dir() else read_labelled_catalogue(path, label_column)


def convert_labelled(
    path: str | os.PathLike,
    out_path: str | os.PathLike,
    show_progress: bool = True,
    label_column: str = "label",
    max_unreadable: int = 0,
) -> Path:
    """A folder of cutouts + labels.csv, or a labelled catalogue, in the Galaxy10 h5 layout
    (256x256), with its class table in the ``class_names`` attribute."""
    try:
        listing = read_labelled(path, label_column)
    except LabelsError as exc:
        raise DatasetError(str(exc)) from exc
    return labelled_to_h5(
        listing, out_path, source=str(Path(path).resolve()), max_unreadable=max_unreadable, show_progress=show_progress
    )


def _write_final(partial: Path, out_path: Path, listing: LabelledFolder, keep: np.ndarray) -> None:
    """The readable rows, in order, as the h5 every later step reads."""
    labels = np.asarray(listing.labels, np.int64)[keep]
    if len(set(labels.tolist())) < 2:
        raise DatasetError(
            f"{listing.folder}: the readable images are all of one class (column {listing.label_column!r}); "
            "a classifier needs images of at least two classes"
        )
    with atomic_path(out_path) as tmp, h5py.File(partial, "r") as src, h5py.File(tmp, "w") as f:
        images = f.create_dataset(
            "images", (len(keep), CUTOUT_SIZE, CUTOUT_SIZE, 3), np.uint8, chunks=(1, CUTOUT_SIZE, CUTOUT_SIZE, 3)
        )
        for start in range(0, len(keep), 256):
            images[start : start + 256] = src["images"][keep[start : start + 256]]
        f.create_dataset("ans", data=labels.astype(np.uint8 if len(listing.class_names) <= 256 else np.int64))
        for name in ("ra", "dec", "redshift", "pxscale"):
            f.create_dataset(name, data=np.full(len(keep), np.nan))
        f.create_dataset("filenames", data=np.array([listing.filenames[i] for i in keep], dtype=h5py.string_dtype()))
        f.attrs["source_folder"] = str(Path(listing.folder).resolve())
        f.attrs["label_column"] = listing.label_column
        f.attrs["class_names"] = list(listing.class_names)
