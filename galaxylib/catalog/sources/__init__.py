"""The inputs of a catalogue run, each cut into work shards and read back one chunk at a time.

Four kinds, one interface (:class:`Source`), a module each:
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

import os
from pathlib import Path
from typing import Any

from galaxylib.catalog.sources.base import (
    ID_COLUMN,
    IMAGE_SUFFIXES,
    NORMALISED_GLOB,
    PATH_COLUMN,
    CatalogError,
    ShardInput,
    ShardSpec,
    Source,
    canonical_checksum,
)
from galaxylib.catalog.sources.catalogue import CsvCatalogue, ParquetCatalogue
from galaxylib.catalog.sources.folder import FolderSource
from galaxylib.catalog.sources.h5 import H5Source
from galaxylib.catalog.sources.webdataset import WebDatasetSource, expand_tars

__all__ = [
    "ID_COLUMN",
    "NORMALISED_GLOB",
    "PATH_COLUMN",
    "CatalogError",
    "ShardInput",
    "ShardSpec",
    "Source",
    "canonical_checksum",
    "open_source",
    "reopen_source",
]

CSV_SUFFIXES = {".csv"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
H5_SUFFIXES = {".h5", ".hdf5"}
TAR_SUFFIXES = {".tar"}
TABLE_SOURCES = {cls.kind: cls for cls in (CsvCatalogue, ParquetCatalogue, FolderSource)}


def open_source(spec: str | os.PathLike) -> Source:
    """The right reader for a path: .parquet/.csv catalogue, folder (of cutouts or of tars), .h5, tar(s)."""
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        tars = sorted(p for p in path.iterdir() if p.suffix.lower() in TAR_SUFFIXES and p.is_file())
        if tars and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
            return WebDatasetSource(tars, text)
        return FolderSource(path)
    suffix = path.suffix.lower()
    if suffix in TAR_SUFFIXES or "{" in text or any(c in text for c in "*?["):
        return WebDatasetSource(expand_tars(text), text)
    if not path.exists():
        raise CatalogError(f"no catalogue at {path}")
    if suffix in H5_SUFFIXES:
        return H5Source(path)
    if suffix in CSV_SUFFIXES:
        return CsvCatalogue(path)
    if suffix in PARQUET_SUFFIXES:
        return ParquetCatalogue(path)
    raise CatalogError(
        f"{path}: a catalogue must be .parquet or .csv (or a folder of cutouts, a Galaxy10 .h5, "
        "or WebDataset .tar shards)"
    )


def reopen_source(described: dict[str, Any]) -> Source:
    """The source :meth:`Source.describe` wrote, in another process (a Dask worker, a Slurm task)."""
    kind = described["kind"]
    if kind in TABLE_SOURCES:
        return TABLE_SOURCES[kind](Path(described["path"]), described.get("normalised"))
    if kind == "h5":
        return H5Source(Path(described["path"]))
    if kind == "webdataset":
        return WebDatasetSource([Path(t) for t in described["tars"]], described.get("spec", ""))
    raise CatalogError(f"unknown source kind {kind!r} in the plan")
