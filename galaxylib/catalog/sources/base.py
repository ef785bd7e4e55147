"""What every catalogue source shares: the interface, a work shard, and the names of the columns."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from galaxylib.inference.classify import ImageInput

ID_COLUMN = "id_str"
PATH_COLUMN = "file_loc"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
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


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def listing_fingerprint(files: list[Path]) -> str:
    """A folder or a set of tars, identified by names, sizes and mtimes (hashing millions of
    cutouts to plan a run would cost as much as the run)."""
    digest = hashlib.sha256()
    for p in files:
        st = p.stat()
        digest.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()
