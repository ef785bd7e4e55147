"""The inputs of a catalogue run, each cut into work shards and read back one chunk at a time.

Four kinds, one interface (:class:`Source`):
- a **catalogue** (Parquet or CSV) with ``id_str`` and ``file_loc`` (relative to the
  catalogue's folder, or absolute); every other column passes through to the output. It is
  normalised once into a Parquet copy whose row group ``i`` is work shard ``i``, so any
  shard is read without scanning the catalogue (a CSV cannot be sought by row);
- a **folder** of JPEG/PNG cutouts (listed once into the same normalised table);
- a **Galaxy10-format h5**: shards are row ranges, images read a chunk at a time, and the
  file's other per-row datasets (``ra``, ``dec``, ``ans``, ...) pass through;
- **WebDataset tar shards** (galaxy-datasets' format: ``__key__`` is the id, ``image.jpg``
  the cutout): one tar is one work shard.

Nothing here holds more than one work shard's rows, or more than one chunk's pixels, at a time.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from galaxylib.catalog.csv_blocks import iter_csv_batches
from galaxylib.files import atomic_path, atomic_write_json, remember_sha256, sha256_file, trusted_sha256
from galaxylib.inference.classify import ImageInput

ID_COLUMN = "id_str"
PATH_COLUMN = "file_loc"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
H5_SUFFIXES = {".h5", ".hdf5"}
CSV_SUFFIXES = {".csv"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
TAR_SUFFIXES = {".tar"}
# Bumped when the normalised table's layout, or a check made while normalising, changes: a copy
# planned by older code is then made again, so a resumed run's rows pass today's checks (2: ids).
NORMALISED_FORMAT = 2
# An id such as 1.2376487206937559e+18 was written from a float: its last digits are gone.
EXPONENT_ID = r"^\s*[+-]?[0-9]+(\.[0-9]*)?[eE][+-]?[0-9]+\s*$"
NORMALISED_GLOB = "input-*"  # a catalogue's normalised copy in _plan, and its stamp
BATCH_ROWS = 8192  # rows normalised at a time: memory stays flat whatever the catalogue's size


class CatalogError(ValueError):
    """An input that cannot be planned or read: missing columns, unreadable file, bad option."""


@dataclass(frozen=True)
class ShardSpec:
    """One work shard: rows ``start .. start + rows`` of a table or h5, or one tar file."""

    index: int
    start: int = 0
    rows: int | None = None  # None for a tar, whose rows are known once it is read
    path: str | None = None  # the tar of a WebDataset shard

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "start": self.start, "rows": self.rows, "path": self.path}


@dataclass
class ShardInput:
    """What a shard reader hands the runner: its checksum, then chunks of (rows, images)."""

    checksum: str
    chunks: Iterator[tuple[Any, list[ImageInput]]]  # (pyarrow.Table of id_str + pass-through, inputs)


def canonical_checksum(table: Any, extra: dict[str, Any] | None = None) -> str:
    """SHA-256 of a table's column names, types and values (and ``extra``): the same rows give
    the same checksum whatever the Parquet encoding or the pyarrow version."""
    digest = hashlib.sha256(json.dumps(extra or {}, sort_keys=True, default=str).encode())
    for name in table.column_names:
        column = table.column(name)
        digest.update(f"\0{name}\0{column.type}\0".encode())
        digest.update(json.dumps(column.to_pylist(), default=str).encode())
    return digest.hexdigest()


class Source:
    """The interface every input kind implements."""

    kind: str = ""

    def describe(self) -> dict[str, Any]:
        """JSON that reopens this source in another process (a Dask worker): kind and paths."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identifies the whole input: a different catalogue makes a different plan."""
        raise NotImplementedError

    def plan(self, shard_rows: int, work_dir: Path, show_progress: bool = False) -> list[ShardSpec]:
        raise NotImplementedError

    def passthrough_columns(self) -> list[str]:
        """The columns after ``id_str`` that go to the output as they are (valid after ``plan``)."""
        raise NotImplementedError

    def read(self, spec: ShardSpec, chunk_rows: int) -> ShardInput:
        raise NotImplementedError


# --------------------------------------------------------------------------- tables


def _pyarrow():
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    return pa, pc, pq


class TableSource(Source):
    """A catalogue (CSV or Parquet) or a folder of cutouts, normalised once into a Parquet
    table whose row group i is work shard i (columns id_str, file_loc, pass-through...)."""

    def __init__(self, path: Path, kind: str, normalised: Path | None = None):
        self.path = Path(path)
        self.kind = kind
        self.normalised = Path(normalised) if normalised else None
        self._fingerprint: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path),
                "normalised": str(self.normalised) if self.normalised else None}

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            if self.kind == "folder":
                self._fingerprint = _listing_fingerprint(_list_images(self.path))
            else:
                try:  # trusted from its sidecar while size and mtime hold; read 1 MiB at a time
                    self._fingerprint = trusted_sha256(self.path) or sha256_file(self.path, chunk_size=1 << 20)
                    remember_sha256(self.path, self._fingerprint)
                except OSError as exc:
                    raise CatalogError(f"cannot read the catalogue {self.path}: {exc.strerror or exc}") from exc
        return self._fingerprint

    def plan(self, shard_rows: int, work_dir: Path, show_progress: bool = False) -> list[ShardSpec]:
        pa, _, pq = _pyarrow()
        target = work_dir / f"input-{self.fingerprint()[:16]}-{shard_rows}.parquet"
        if not _normalised_ok(target, shard_rows):
            with atomic_path(target) as tmp:
                total = self._normalise(tmp, shard_rows, show_progress)
            # Hand the reader's buffers back before the long part of the run: the allocator keeps
            # freed memory otherwise, and the peak would grow with the catalogue.
            pa.default_memory_pool().release_unused()
            # The stamp, written after the copy is in place, is what makes it trusted.
            atomic_write_json(_stamp_path(target), {"format": NORMALISED_FORMAT, "shard_rows": shard_rows,
                                                    "rows": total})
        self.normalised = target
        meta = pq.ParquetFile(target).metadata
        specs, start = [], 0
        for i in range(meta.num_row_groups):
            n = meta.row_group(i).num_rows
            specs.append(ShardSpec(index=i, start=start, rows=n))
            start += n
        return specs

    def passthrough_columns(self) -> list[str]:
        _, _, pq = _pyarrow()
        names = pq.read_schema(self._require_normalised()).names
        return [n for n in names if n not in (ID_COLUMN, PATH_COLUMN)]

    def _require_normalised(self) -> Path:
        if self.normalised is None or not self.normalised.is_file():
            raise CatalogError(f"{self.path}: not planned yet (its normalised copy is missing)")
        return self.normalised

    def read(self, spec: ShardSpec, chunk_rows: int) -> ShardInput:
        _, _, pq = _pyarrow()
        table = pq.ParquetFile(self._require_normalised()).read_row_group(spec.index)
        checksum = canonical_checksum(table, {"shard": spec.index, "start": spec.start})

        def chunks() -> Iterator[tuple[Any, list[ImageInput]]]:
            for start in range(0, table.num_rows, chunk_rows):
                part = table.slice(start, chunk_rows)
                ids = part.column(ID_COLUMN).to_pylist()
                locs = part.column(PATH_COLUMN).to_pylist()
                items = [ImageInput.from_path(loc, name=loc) if loc else ImageInput(name=f"{i}: no {PATH_COLUMN}")
                         for i, loc in zip(ids, locs)]
                yield part.drop_columns([PATH_COLUMN]), items

        return ShardInput(checksum, chunks())

    # -- normalisation

    def _batches(self) -> Iterator[Any]:
        """The catalogue as record batches with id_str and file_loc as strings, paths resolved."""
        pa, pc, pq = _pyarrow()
        if self.kind == "folder":
            files = _list_images(self.path)
            if not files:
                raise CatalogError(f"{self.path} holds no .jpg, .jpeg or .png files")
            for start in range(0, len(files), 65536):
                part = files[start:start + 65536]
                yield pa.record_batch({ID_COLUMN: pa.array([p.relative_to(self.path).as_posix() for p in part],
                                                           pa.string()),
                                       PATH_COLUMN: pa.array([str(p) for p in part], pa.string())})
            return
        base = self.path.resolve().parent
        try:
            if self.kind == "csv":
                batches: Iterator[Any] = iter_csv_batches(self.path, {ID_COLUMN: pa.string(), PATH_COLUMN: pa.string()})
                names = next(batches).names  # the schema comes first
            else:
                pf = pq.ParquetFile(self.path)
                names = pf.schema_arrow.names
                batches = pf.iter_batches(batch_size=BATCH_ROWS)
        except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
            raise CatalogError(f"cannot read the catalogue {self.path} as {self.kind.upper()}: {exc}") from exc
        missing = [c for c in (ID_COLUMN, PATH_COLUMN) if c not in names]
        if missing:
            raise CatalogError(f"the catalogue {self.path} has no column {', '.join(map(repr, missing))} "
                               f"(its columns: {', '.join(names) or 'none'}); it needs {ID_COLUMN!r} and "
                               f"{PATH_COLUMN!r} (the image, relative to the catalogue's folder or absolute)")
        if self.kind == "parquet":
            id_type = pf.schema_arrow.field(ID_COLUMN).type
            if pa.types.is_floating(id_type):
                # A float64 id keeps 15-16 digits: an SDSS objid such as 1237648720693755918 would
                # come out as '1.237648720693756e+18', shared by neighbouring objects.
                raise CatalogError(f"the catalogue {self.path} stores {ID_COLUMN} as {id_type}: floating-point "
                                   "ids lose digits (1237648720693755918 becomes 1.237648720693756e+18) and "
                                   "two galaxies can share one. Casting the column back will not restore them: "
                                   "export the ids again from their source, as integers or strings")
        row = 0
        try:
            for batch in _slices(batches, BATCH_ROWS):
                batch = batch.select([n for n in batch.schema.names if not n.startswith("__index_level_")])
                ids = pc.cast(batch.column(ID_COLUMN), pa.string())
                # A CSV reads a blank cell as "", not null: both are a row without an id.
                blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(ids), ""), True)
                if pc.any(blank).as_py():
                    first = row + int(np.flatnonzero(np.asarray(blank))[0])
                    raise CatalogError(f"the catalogue {self.path}: data row {first + 1} (the first is 1) has no "
                                       f"{ID_COLUMN}; every row needs one")
                floated = pc.fill_null(pc.match_substring_regex(ids, EXPONENT_ID), False)
                if pc.any(floated).as_py():
                    first = int(np.flatnonzero(np.asarray(floated))[0])
                    raise CatalogError(f"the catalogue {self.path}: data row {row + first + 1} (the first is 1) has "
                                       f"{ID_COLUMN} {ids[first].as_py()!r}, a number in exponent notation: it was "
                                       "written from floating point, so its last digits are gone and neighbouring "
                                       "objects can share it. Export the ids again from their source, as integers "
                                       "or strings")
                locs = pc.cast(batch.column(PATH_COLUMN), pa.string()).to_pylist()
                resolved = pa.array([None if not loc else (loc if os.path.isabs(loc) else str(base / loc))
                                     for loc in locs], pa.string())
                columns = {ID_COLUMN: ids, PATH_COLUMN: resolved}
                for name in batch.schema.names:
                    if name not in columns:
                        columns[name] = batch.column(name)
                row += batch.num_rows
                yield pa.record_batch(columns)
        except (OSError, ValueError) as exc:
            if isinstance(exc, CatalogError):
                raise
            raise CatalogError(f"cannot read the catalogue {self.path} (near row {row}): {exc}. Give the column a "
                               "consistent type, or convert the catalogue to Parquet") from exc

    def _normalise(self, target: Path, shard_rows: int, show_progress: bool) -> int:
        pa, _, pq = _pyarrow()
        from tqdm import tqdm

        writer = None
        pending: list[Any] = []
        held = total = 0
        with tqdm(desc=f"Planning {self.path.name}", unit="row", disable=not show_progress) as bar:
            def flush(final: bool) -> None:
                nonlocal pending, held, writer
                if not pending:
                    return
                table = pa.Table.from_batches(pending)
                cut = table.num_rows if final else table.num_rows // shard_rows * shard_rows
                if cut:
                    if writer is None:
                        writer = pq.ParquetWriter(target, table.schema)
                    writer.write_table(table.slice(0, cut), row_group_size=shard_rows)
                rest = table.slice(cut)
                pending, held = ([rest.combine_chunks().to_batches()[0]] if rest.num_rows else []), rest.num_rows

            try:
                for batch in self._batches():
                    pending.append(batch)
                    held += batch.num_rows
                    total += batch.num_rows
                    bar.update(batch.num_rows)
                    if held >= shard_rows:
                        flush(final=False)
                flush(final=True)
            finally:
                if writer is not None:
                    writer.close()
        if total == 0:
            raise CatalogError(f"the catalogue {self.path} has no rows")
        return total


def _slices(batches: Iterator[Any], rows: int) -> Iterator[Any]:
    """Record batches cut to at most ``rows`` rows (a CSV block can hold far more)."""
    for batch in batches:
        for offset in range(0, batch.num_rows, rows):
            yield batch.slice(offset, rows)


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".json")


def _normalised_ok(target: Path, shard_rows: int) -> bool:
    """A normalised copy is reused only when whole and made by this code (its stamp matches)."""
    try:
        info = json.loads(_stamp_path(target).read_text())
        _, _, pq = _pyarrow()
        meta = pq.ParquetFile(target).metadata
        return (info.get("format") == NORMALISED_FORMAT and info.get("shard_rows") == shard_rows
                and info.get("rows") == meta.num_rows)
    except (OSError, ValueError, TypeError):
        return False


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _listing_fingerprint(files: list[Path]) -> str:
    """A folder or a set of tars, identified by names, sizes and mtimes (hashing millions of
    cutouts to plan a run would cost as much as the run)."""
    digest = hashlib.sha256()
    for p in files:
        st = p.stat()
        digest.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# ------------------------------------------------------------------------------ h5


class H5Source(Source):
    """A Galaxy10-format h5: work shard i is rows [i * shard_rows, ...), read a chunk at a time."""

    kind = "h5"

    def __init__(self, path: Path):
        from galaxylib.data.galaxy10 import DatasetError, open_galaxy10

        self.path = Path(path)
        try:
            self.data = open_galaxy10(self.path)
        except DatasetError as exc:
            raise CatalogError(str(exc)) from exc
        self._columns = self._find_columns()

    def _find_columns(self) -> list[str]:
        """Every other per-row dataset (ra, dec, redshift, ans, filenames...) passes through."""
        import h5py

        with h5py.File(self.path, "r") as f:
            return sorted(k for k, v in f.items() if k != "images" and isinstance(v, h5py.Dataset)
                          and v.shape == (self.data.n_images,) and k != ID_COLUMN)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path)}

    def fingerprint(self) -> str:
        return self.data.fingerprint()

    def plan(self, shard_rows: int, work_dir: Path, show_progress: bool = False) -> list[ShardSpec]:
        n = self.data.n_images
        if n == 0:
            raise CatalogError(f"{self.path} holds no images")
        return [ShardSpec(index=i, start=s, rows=min(shard_rows, n - s))
                for i, s in enumerate(range(0, n, shard_rows))]

    def passthrough_columns(self) -> list[str]:
        return list(self._columns)

    def read(self, spec: ShardSpec, chunk_rows: int) -> ShardInput:
        import h5py
        import pyarrow as pa

        stop = spec.start + int(spec.rows or 0)
        with h5py.File(self.path, "r") as f:
            columns: dict[str, Any] = {ID_COLUMN: pa.array([f"{self.path.name}[{i}]" for i in range(spec.start, stop)],
                                                           pa.string())}
            for name in self._columns:
                values = f[name][spec.start:stop]
                if values.dtype.kind in "SO":
                    values = [v.decode() if isinstance(v, bytes) else str(v) for v in values]
                columns[name] = pa.array(values)
        table = pa.table(columns)
        checksum = canonical_checksum(table, {"file": self.fingerprint(), "start": spec.start, "stop": stop})

        def chunks() -> Iterator[tuple[Any, list[ImageInput]]]:
            with h5py.File(self.path, "r") as f:
                images = f["images"]
                for a in range(spec.start, stop, chunk_rows):
                    b = min(a + chunk_rows, stop)
                    part = table.slice(a - spec.start, b - a)
                    names = part.column(ID_COLUMN).to_pylist()
                    pixels = images[a:b]
                    yield part, [ImageInput.from_array(img, name) for img, name in zip(pixels, names)]

        return ShardInput(checksum, chunks())


# ---------------------------------------------------------------------- webdataset


class WebDatasetSource(Source):
    """WebDataset tar shards; one tar is one work shard, its samples' ``__key__`` the id."""

    kind = "webdataset"

    def __init__(self, tars: list[Path], spec: str):
        if not tars:
            raise CatalogError(f"no WebDataset .tar shards match {spec}")
        missing = [t for t in tars if not t.is_file()]
        if missing:
            raise CatalogError(f"WebDataset shard {missing[0]} does not exist")
        self.tars = tars
        self.spec = spec

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "tars": [str(t) for t in self.tars], "spec": self.spec}

    def fingerprint(self) -> str:
        return _listing_fingerprint(self.tars)

    def plan(self, shard_rows: int, work_dir: Path, show_progress: bool = False) -> list[ShardSpec]:
        return [ShardSpec(index=i, path=str(t)) for i, t in enumerate(self.tars)]

    def passthrough_columns(self) -> list[str]:
        return []

    def read(self, spec: ShardSpec, chunk_rows: int) -> ShardInput:
        import pyarrow as pa
        import webdataset as wds

        tar = Path(str(spec.path))
        checksum = sha256_file(tar)

        def chunks() -> Iterator[tuple[Any, list[ImageInput]]]:
            ids: list[str] = []
            items: list[ImageInput] = []
            dataset = wds.WebDataset(str(tar), shardshuffle=False, empty_check=False)
            for sample in dataset:
                key = str(sample["__key__"])
                image = next((v for k, v in sample.items() if not k.startswith("__")
                              and k.rsplit(".", 1)[-1].lower() in ("jpg", "jpeg", "png")), None)
                ids.append(key)
                items.append(ImageInput.from_bytes(image, f"{tar.name}:{key}") if image is not None
                             else ImageInput(name=f"{tar.name}:{key}: no .jpg or .png member"))
                if len(items) >= chunk_rows:
                    yield pa.table({ID_COLUMN: pa.array(ids, pa.string())}), items
                    ids, items = [], []
            if items:
                yield pa.table({ID_COLUMN: pa.array(ids, pa.string())}), items

        return ShardInput(checksum, chunks())


# ---------------------------------------------------------------------- dispatch


def _expand_tars(spec: str) -> list[Path]:
    """A tar, a folder of tars, a glob or a brace pattern (``shards-{000..009}.tar``)."""
    import glob

    from braceexpand import braceexpand  # a webdataset dependency

    out: list[Path] = []
    for pattern in braceexpand(spec):
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        out.extend(Path(m) for m in matches)
    return out


def open_source(spec: str | os.PathLike) -> Source:
    """The right reader for a path: .parquet/.csv catalogue, folder (of cutouts or of tars), .h5, tar(s)."""
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        tars = sorted(p for p in path.iterdir() if p.suffix.lower() in TAR_SUFFIXES and p.is_file())
        if tars and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
            return WebDatasetSource(tars, text)
        return TableSource(path, "folder")
    suffix = path.suffix.lower()
    if suffix in TAR_SUFFIXES or "{" in text or any(c in text for c in "*?["):
        return WebDatasetSource(_expand_tars(text), text)
    if not path.exists():
        raise CatalogError(f"no catalogue at {path}")
    if suffix in H5_SUFFIXES:
        return H5Source(path)
    if suffix in CSV_SUFFIXES:
        return TableSource(path, "csv")
    if suffix in PARQUET_SUFFIXES:
        return TableSource(path, "parquet")
    raise CatalogError(f"{path}: a catalogue must be .parquet or .csv (or a folder of cutouts, a Galaxy10 .h5, "
                       "or WebDataset .tar shards)")


def reopen_source(described: dict[str, Any]) -> Source:
    """The source :meth:`Source.describe` wrote, in another process (a Dask worker, a Slurm task)."""
    kind = described["kind"]
    if kind in ("csv", "parquet", "folder"):
        return TableSource(Path(described["path"]), kind, described.get("normalised"))
    if kind == "h5":
        return H5Source(Path(described["path"]))
    if kind == "webdataset":
        return WebDatasetSource([Path(t) for t in described["tars"]], described.get("spec", ""))
    raise CatalogError(f"unknown source kind {kind!r} in the plan")
