"""The sources that are normalised once into a Parquet table: catalogues and folders.

The table's row group ``i`` is work shard ``i``, so any shard is read without scanning the
input again (a CSV cannot be sought by row). Nothing here holds more than ``BATCH_ROWS`` rows of
the input, or one work shard's rows, at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from galaxylib.catalog.sources.base import (
    ID_COLUMN,
    NORMALISED_FORMAT,
    PATH_COLUMN,
    CatalogError,
    ShardInput,
    ShardSpec,
    Source,
    canonical_checksum,
)
from galaxylib.files import atomic_path, atomic_write_json
from galaxylib.inference.classify import ImageInput


def pyarrow_modules():
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    return pa, pc, pq


class TableSource(Source):
    """An input normalised once into a Parquet table whose row group i is work shard i (columns
    id_str, file_loc, pass-through...). Subclasses say how to read their rows (``_batches``) and
    what identifies them (``fingerprint``)."""

    def __init__(self, path: Path, normalised: Path | None = None):
        self.path = Path(path)
        self.normalised = Path(normalised) if normalised else None
        self._fingerprint: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": str(self.path),
            "normalised": str(self.normalised) if self.normalised else None,
        }

    def plan(self, shard_rows: int, work_dir: Path, show_progress: bool = False) -> list[ShardSpec]:
        pa, _, pq = pyarrow_modules()
        target = work_dir / f"input-{self.fingerprint()[:16]}-{shard_rows}.parquet"
        if not _normalised_ok(target, shard_rows):
            with atomic_path(target) as tmp:
                total = self._normalise(tmp, shard_rows, show_progress)
            # Hand the reader's buffers back before the long part of the run: the allocator keeps
            # freed memory otherwise, and the peak would grow with the catalogue.
            pa.default_memory_pool().release_unused()
            # The stamp, written after the copy is in place, is what makes it trusted.
            atomic_write_json(
                _stamp_path(target), {"format": NORMALISED_FORMAT, "shard_rows": shard_rows, "rows": total}
            )
        self.normalised = target
        meta = pq.ParquetFile(target).metadata
        specs, start = [], 0
        for i in range(meta.num_row_groups):
            n = meta.row_group(i).num_rows
            specs.append(ShardSpec(index=i, start=start, rows=n))
            start += n
        return specs

    def passthrough_columns(self) -> list[str]:
        _, _, pq = pyarrow_modules()
        names = pq.read_schema(self._require_normalised()).names
        return [n for n in names if n not in (ID_COLUMN, PATH_COLUMN)]

    def _require_normalised(self) -> Path:
        if self.normalised is None or not self.normalised.is_file():
            raise CatalogError(f"{self.path}: not planned yet (its normalised copy is missing)")
        return self.normalised

    def read(self, spec: ShardSpec, chunk_rows: int) -> ShardInput:
        _, _, pq = pyarrow_modules()
        table = pq.ParquetFile(self._require_normalised()).read_row_group(spec.index)
        checksum = canonical_checksum(table, {"shard": spec.index, "start": spec.start})

        def chunks() -> Iterator[tuple[Any, list[ImageInput]]]:
            for start in range(0, table.num_rows, chunk_rows):
                part = table.slice(start, chunk_rows)
                ids = part.column(ID_COLUMN).to_pylist()
                locs = part.column(PATH_COLUMN).to_pylist()
                items = [
                    ImageInput.from_path(loc, name=loc) if loc else ImageInput(name=f"{i}: no {PATH_COLUMN}")
                    for i, loc in zip(ids, locs)
                ]
                yield part.drop_columns([PATH_COLUMN]), items

        return ShardInput(checksum, chunks())

    def _batches(self) -> Iterator[Any]:
        """The input as record batches with id_str and file_loc as strings, paths absolute."""
        raise NotImplementedError

    def _normalise(self, target: Path, shard_rows: int, show_progress: bool) -> int:
        pa, _, pq = pyarrow_modules()
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


def batch_slices(batches: Iterator[Any], rows: int) -> Iterator[Any]:
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
        _, _, pq = pyarrow_modules()
        meta = pq.ParquetFile(target).metadata
        return (
            info.get("format") == NORMALISED_FORMAT
            and info.get("shard_rows") == shard_rows
            and info.get("rows") == meta.num_rows
        )
    except (OSError, ValueError, TypeError):
        return False
