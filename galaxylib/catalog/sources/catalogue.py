"""Catalogues: a CSV or Parquet table with ``id_str`` and ``file_loc`` (relative to the
catalogue's folder, or absolute); every other column passes through to the output.

An id is one value per row, read as text: a string, or an integer, a date, a decimal... (Arrow
writes it as text). A float (its last digits are gone), a boolean (two ids for a whole catalogue)
and a list or struct (several values per row) are refused before any row is read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from galaxylib.catalog.csv_blocks import iter_csv_batches
from galaxylib.catalog.sources.base import BATCH_ROWS, EXPONENT_ID, ID_COLUMN, PATH_COLUMN, CatalogError
from galaxylib.catalog.sources.table import TableSource, batch_slices, pyarrow_modules
from galaxylib.files import remember_sha256, sha256_file, trusted_sha256


def column_type_problem(name: str, column_type: Any) -> str | None:
    """Why a Parquet column of this type cannot give ``name`` (``id_str`` or ``file_loc``) one
    string per row, or None: Arrow then casts each value to its text (an integer to its digits, a
    date to 2024-05-01...). Checked on the schema, before any row is read."""
    pa, pc, _ = pyarrow_modules()
    value_type = column_type.value_type if pa.types.is_dictionary(column_type) else column_type  # a categorical
    if name == ID_COLUMN and pa.types.is_floating(value_type):
        # A float64 id keeps 15-16 digits: an SDSS objid such as 1237648720693755918 would
        # come out as '1.237648720693756e+18', shared by neighbouring objects.
        return (
            "floating-point ids lose digits (1237648720693755918 becomes 1.237648720693756e+18) and "
            "two galaxies can share one. Casting the column back will not restore them: export the "
            "ids again from their source, as integers or strings"
        )
    if name == ID_COLUMN and pa.types.is_boolean(value_type):
        return "true and false are two ids for the whole catalogue. Give each row its own id, an integer or a string"
    if pa.types.is_nested(value_type):
        return f"that is several values in a row, and each row needs one {name}"
    try:
        pc.cast(pa.array([], value_type), pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return f"its values cannot be written as text, and {name} is text"
    return None


def read_error(path: Any, kind: str, exc: Exception, row: int | None) -> CatalogError:
    """A one-line CatalogError for what pyarrow could not read (``row``: the rows read before it,
    None while opening), with what to do about it: a parse error is the file's quoting, a
    conversion error a column whose type changes after the rows its type was inferred from."""
    text = str(exc).replace("\r", "\\r").replace("\n", "\\n")  # pyarrow quotes the bad row as it is
    where = (
        f"the catalogue {path} as {kind.upper()}"
        if row is None
        else f"the catalogue {path} at data row {row + 1} or later"
    )
    if "CSV parse error" in text:
        hint = (
            "A value holding a comma, a line break, or a quote at its start must be quoted "
            '("..."), with each quote inside it doubled'
        )
    elif "conversion error" in text:
        hint = (
            "The catalogue's first rows gave that column another type: give the column one type "
            "throughout, or convert the catalogue to Parquet"
        )
    else:
        hint = ""
    return CatalogError(f"cannot read {where}: {text}" + (f". {hint}" if hint else ""))


class CatalogueSource(TableSource):
    """A catalogue file: identified by its SHA-256, its rows checked as they are normalised (an id
    in every row, no id that a float has rounded)."""

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            try:  # trusted from its sidecar while size and mtime hold; read 1 MiB at a time
                self._fingerprint = trusted_sha256(self.path) or sha256_file(self.path, chunk_size=1 << 20)
                remember_sha256(self.path, self._fingerprint)
            except OSError as exc:
                raise CatalogError(f"cannot read the catalogue {self.path}: {exc.strerror or exc}") from exc
        return self._fingerprint

    def _open(self) -> tuple[list[str], Iterator[Any]]:
        """The file's column names and its record batches."""
        raise NotImplementedError

    def _batches(self) -> Iterator[Any]:
        """The catalogue as record batches with id_str and file_loc as strings, paths resolved."""
        pa, pc, _ = pyarrow_modules()
        base = self.path.resolve().parent
        try:
            names, batches = self._open()
        except CatalogError:
            raise
        except (OSError, ValueError, pa.ArrowException) as exc:  # pyarrow.ArrowInvalid is a ValueError
            raise read_error(self.path, self.kind, exc, None) from exc
        missing = [c for c in (ID_COLUMN, PATH_COLUMN) if c not in names]
        if missing:
            raise CatalogError(
                f"the catalogue {self.path} has no column {', '.join(map(repr, missing))} "
                f"(its columns: {', '.join(names) or 'none'}); it needs {ID_COLUMN!r} and "
                f"{PATH_COLUMN!r} (the image, relative to the catalogue's folder or absolute)"
            )
        row = 0
        try:
            for batch in batch_slices(batches, BATCH_ROWS):
                batch = batch.select([n for n in batch.schema.names if not n.startswith("__index_level_")])
                ids = pc.cast(batch.column(ID_COLUMN), pa.string())
                # A CSV reads a blank cell as "", not null: both are a row without an id.
                blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(ids), ""), True)
                if pc.any(blank).as_py():
                    first = row + int(np.flatnonzero(np.asarray(blank))[0])
                    raise CatalogError(
                        f"the catalogue {self.path}: data row {first + 1} (the first is 1) has no "
                        f"{ID_COLUMN}; every row needs one"
                    )
                floated = pc.fill_null(pc.match_substring_regex(ids, EXPONENT_ID), False)
                if pc.any(floated).as_py():
                    first = int(np.flatnonzero(np.asarray(floated))[0])
                    raise CatalogError(
                        f"the catalogue {self.path}: data row {row + first + 1} (the first is 1) has "
                        f"{ID_COLUMN} {ids[first].as_py()!r}, a number in exponent notation: it was "
                        "written from floating point, so its last digits are gone and neighbouring "
                        "objects can share it. Export the ids again from their source, as integers "
                        "or strings"
                    )
                locs = pc.cast(batch.column(PATH_COLUMN), pa.string()).to_pylist()
                resolved = pa.array(
                    [None if not loc else (loc if os.path.isabs(loc) else str(base / loc)) for loc in locs], pa.string()
                )
                columns = {ID_COLUMN: ids, PATH_COLUMN: resolved}
                for name in batch.schema.names:
                    if name not in columns:
                        columns[name] = batch.column(name)
                row += batch.num_rows
                yield pa.record_batch(columns)
        except (OSError, ValueError, pa.ArrowException) as exc:
            if isinstance(exc, CatalogError):
                raise
            raise read_error(self.path, self.kind, exc, row) from exc


class CsvCatalogue(CatalogueSource):
    kind = "csv"

    def _open(self) -> tuple[list[str], Iterator[Any]]:
        pa, _, _ = pyarrow_modules()
        batches: Iterator[Any] = iter_csv_batches(self.path, {ID_COLUMN: pa.string(), PATH_COLUMN: pa.string()})
        return next(batches).names, batches  # the schema comes first


class ParquetCatalogue(CatalogueSource):
    kind = "parquet"

    def _open(self) -> tuple[list[str], Iterator[Any]]:
        _, _, pq = pyarrow_modules()
        pf = pq.ParquetFile(self.path)
        names = pf.schema_arrow.names
        for name in (ID_COLUMN, PATH_COLUMN):
            if name in names:
                column_type = pf.schema_arrow.field(name).type
                problem = column_type_problem(name, column_type)
                if problem:
                    raise CatalogError(f"the catalogue {self.path} stores {name} as {column_type}: {problem}")
        return names, pf.iter_batches(batch_size=BATCH_ROWS)
