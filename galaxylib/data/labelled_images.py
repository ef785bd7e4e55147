"""Labelled image files as a training set: a folder with labels.csv, or a catalogue.

A catalogue is what ``./predict.sh --catalog`` reads (galaxy-datasets' convention): a Parquet or
CSV table with ``file_loc`` (relative to the catalogue's folder, or absolute), an optional
``id_str``, and a label column; ``./train.sh --dataset labels.parquet -p data.label_column NAME``
trains on it. The class table follows labels.csv's rules (galaxylib.data.labels).

Preparation writes a listing h5 (the Galaxy10 layout with ``file_loc`` in place of ``images``)
and decodes each file once, straight to the model's size, into the resized cache every later
step reads (``galaxylib.data.decoded_files``: every core, resumable). No 256 px copy is made.
An unreadable image is listed and left out, up to ``data.max_unreadable`` of them; past that
preparation stops with the list.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from galaxylib.data.decoded_files import decode_files, decoding_lock, discard_partial
from galaxylib.data.galaxy10 import FILES_DATASET, DatasetError, cache_path, open_galaxy10
from galaxylib.data.labels import LabelledFolder, LabelsError, class_table, read_labelled_folder
from galaxylib.files import atomic_path, atomic_write_json

PATH_COLUMN, ID_COLUMN = "file_loc", "id_str"
CATALOGUE_SUFFIXES = (".parquet", ".pq", ".csv")
UNREADABLE_FILE = "unreadable.json"  # beside the h5: the files left out, with why


def read_labelled_catalogue(path: str | os.PathLike, label_column: str = "label") -> LabelledFolder:
    """A catalogue's rows as a listing: every row needs a ``file_loc`` and a label. The files are
    not opened here (an unreadable one is found, listed and left out by the conversion). A CSV is
    read with ``predict.sh --catalog``'s rules: quoted line breaks allowed, a byte-order mark
    ignored, and ``file_loc``, the label and ``id_str`` read as text (an id ``0012`` keeps its zeros)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from galaxylib.data.labels import is_index

    path = Path(path)
    try:
        if path.suffix.lower() == ".csv":
            text = {name: pa.string() for name in (PATH_COLUMN, label_column, ID_COLUMN)}
            table = pacsv.read_csv(
                path,
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(column_types=text, strings_can_be_null=True),
            )
        else:
            table = pq.read_table(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise LabelsError(f"cannot read the catalogue {path}: {exc}") from exc
    missing = [c for c in (PATH_COLUMN, label_column) if c not in table.column_names]
    if missing:
        raise LabelsError(
            f"the catalogue {path} needs the columns {PATH_COLUMN!r} and {label_column!r} (missing: "
            f"{', '.join(missing)}; its columns: {', '.join(table.column_names)}); choose the label column with "
            "-p data.label_column NAME"
        )
    try:
        locations = pc.cast(table.column(PATH_COLUMN), pa.string()).to_pylist()
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid) as exc:
        raise LabelsError(
            f"the catalogue {path} stores {PATH_COLUMN} as {table.schema.field(PATH_COLUMN).type}: "
            "it needs one path per row, as text"
        ) from exc
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
        elif is_index(value) and 0 <= int(value) < len(names):
            labels.append(int(value))
        else:
            raise LabelsError(
                f"the catalogue {path}: data row {row} has {label_column} {value!r}, not one of {list(names)}"
            )
    base = path.resolve().parent
    paths = tuple(Path(p) if os.path.isabs(p) else base / p for p in locations)
    return LabelledFolder(path.parent, tuple(str(i) for i in ids), paths, tuple(labels), names, label_column)


def prepare_labelled(
    listing: LabelledFolder,
    out_path: str | os.PathLike,
    *,
    source: str,
    image_size: int,
    crop: float = 1.0,
    cache_dir: str | os.PathLike,
    max_unreadable: int = 0,
    workers: int | None = None,
    show_progress: bool = True,
) -> Path:
    """The listing h5 at ``out_path`` and its ``image_size`` cache in ``cache_dir``, decoded on
    ``workers`` processes (all cores by default), resuming a stopped preparation; unreadable
    images are left out and listed in ``<stem>.unreadable.json`` beside it, up to ``max_unreadable``."""
    out_path, cache_dir = Path(out_path), Path(cache_dir)
    n = len(listing)
    used = sorted(set(listing.labels))
    if len(used) < 2:  # refused here, before decoding or training, not when the artifact is written
        raise DatasetError(
            f"{listing.folder}: every image is labelled {listing.class_names[used[0]]!r} (column "
            f"{listing.label_column!r}); a classifier needs images of at least two classes"
        )
    partial = cache_dir / f"{out_path.stem}_{image_size}px_crop{crop:.3f}.partial"
    with decoding_lock(partial):
        if out_path.is_file():  # another process prepared it while this one waited
            return out_path
        decoded, unreadable = decode_files(
            listing.paths, image_size, crop, partial, workers=workers, show_progress=show_progress
        )
        report = [{"row": i, "file": str(listing.paths[i]), "error": why} for i, why in sorted(unreadable.items())]
        if len(report) > max_unreadable:
            shown = "; ".join(f"{r['file']} ({r['error']})" for r in report[:5])
            raise DatasetError(
                f"{len(report)} of {n} images could not be read, more than data.max_unreadable ({max_unreadable}): "
                f"{shown}{' ...' if len(report) > 5 else ''}. Fix or remove them, or allow them with "
                "-p data.max_unreadable N"
            )
        keep = np.array([i for i in range(n) if i not in unreadable], dtype=np.int64)
        _write_listing(out_path, listing, keep)
        target = cache_path(open_galaxy10(out_path), image_size, cache_dir, crop)
        if len(keep) == n:
            os.replace(decoded, target)
        else:  # the readable rows, in order
            pixels = np.load(decoded, mmap_mode="r")
            with atomic_path(target) as tmp:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(keep), *pixels.shape[1:]))
                for start in range(0, len(keep), 256):
                    out[start : start + 256] = pixels[keep[start : start + 256]]
                out.flush()
                del out
            del pixels
        discard_partial(partial)
    atomic_write_json(out_path.with_name(out_path.stem + "." + UNREADABLE_FILE), {"source": source, "left_out": report})
    if report:
        print(f"{len(report)} unreadable image(s) left out (listed in {out_path.stem}.{UNREADABLE_FILE})")
    return out_path


def read_labelled(path: str | os.PathLike, label_column: str = "label") -> LabelledFolder:
    """A folder with labels.csv, or a labelled catalogue file."""
    path = Path(path)
    return read_labelled_folder(path, label_column) if path.is_dir() else read_labelled_catalogue(path, label_column)


def convert_labelled(
    path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    image_size: int,
    crop: float = 1.0,
    cache_dir: str | os.PathLike,
    show_progress: bool = True,
    label_column: str = "label",
    max_unreadable: int = 0,
) -> Path:
    """A folder of cutouts + labels.csv, or a labelled catalogue, as a listing h5 with its class
    table in the ``class_names`` attribute, and its pixels in the ``image_size`` cache."""
    try:
        listing = read_labelled(path, label_column)
    except LabelsError as exc:
        raise DatasetError(str(exc)) from exc
    return prepare_labelled(
        listing,
        out_path,
        source=str(Path(path).resolve()),
        image_size=image_size,
        crop=crop,
        cache_dir=cache_dir,
        max_unreadable=max_unreadable,
        show_progress=show_progress,
    )


def _write_listing(out_path: Path, listing: LabelledFolder, keep: np.ndarray) -> None:
    """The readable rows, in order, as the listing h5 every later step reads."""
    labels = np.asarray(listing.labels, np.int64)[keep]
    if len(set(labels.tolist())) < 2:
        raise DatasetError(
            f"{listing.folder}: the readable images are all of one class (column {listing.label_column!r}); "
            "a classifier needs images of at least two classes"
        )
    strings = h5py.string_dtype()
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset(FILES_DATASET, data=np.array([str(listing.paths[i]) for i in keep], dtype=strings))
        f.create_dataset("ans", data=labels.astype(np.uint8 if len(listing.class_names) <= 256 else np.int64))
        for name in ("ra", "dec", "redshift", "pxscale"):
            f.create_dataset(name, data=np.full(len(keep), np.nan))
        f.create_dataset("filenames", data=np.array([listing.filenames[i] for i in keep], dtype=strings))
        f.attrs["source_folder"] = str(Path(listing.folder).resolve())
        f.attrs["label_column"] = listing.label_column
        f.attrs["class_names"] = list(listing.class_names)
