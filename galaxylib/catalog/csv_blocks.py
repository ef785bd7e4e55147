"""A CSV catalogue read as record batches, one block of the file in memory at a time.

pyarrow's streaming CSV reader (``pyarrow.csv.open_csv``) reads ahead of its consumer, and its
peak grows with the file: 11 MB of Arrow memory for an 8 MB catalogue and 42 MB for a 70 MB
one, measured here; apache/gluten#5766 reports 1.7 GB for a 2 GB file. A survey catalogue is
hundreds of megabytes, so this reader cuts the file itself, at line ends outside quoted fields,
and parses each block on its own with the types the first block inferred (what the streaming
reader does too). Its peak is one block, whatever the catalogue's size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, BinaryIO

INFER_BYTES = 1024 * 1024  # the first block, that the types are inferred from (~10k rows of a typical catalogue)
BLOCK_BYTES = 256 * 1024  # every later block: the peak stays near the first block's


def _read_block(fh: BinaryIO, block_bytes: int) -> bytes:
    """About ``block_bytes`` of whole records: cut at a newline that is not inside a quoted field.
    RFC 4180 doubles a quote inside a quoted field, so an odd count of quotes means the cut is
    inside one and the next line belongs to it."""
    block = fh.read(block_bytes)
    if not block:
        return b""
    block += fh.readline()
    quotes = block.count(b'"')
    while quotes % 2:
        more = fh.readline()
        if not more:  # an unterminated quote: let the parser report it
            break
        quotes += more.count(b'"')
        block += more
    return block


def iter_csv_batches(
    path: str | os.PathLike,
    column_types: dict[str, Any],
    block_bytes: int = BLOCK_BYTES,
    infer_bytes: int = INFER_BYTES,
) -> Iterator[Any]:
    """Record batches of the CSV at ``path``; ``column_types`` pins some columns (the rest are
    inferred from the first block and kept for every later one). The first item is the schema,
    so a caller can check the columns before any batch."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    with open(path, "rb") as fh:
        header = fh.readline()
        while header.count(b'"') % 2:  # a quoted column name spanning lines
            more = fh.readline()
            if not more:
                break
            header += more
        if not header.strip():
            raise ValueError("the file is empty (no header line)")
        types = dict(column_types)
        first = True
        while True:
            block = _read_block(fh, infer_bytes if first else block_bytes)
            if not block and not first:
                return
            table = pcsv.read_csv(
                pa.py_buffer(header + block),
                read_options=pcsv.ReadOptions(use_threads=False, block_size=len(header + block) + 1),
                convert_options=pcsv.ConvertOptions(column_types=types),
            )
            if first:
                # A column empty throughout the first block is read as text, not as Arrow's null
                # type, which no later value could be converted to.
                schema = pa.schema(
                    [pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in table.schema]
                )
                table = table.cast(schema)
                types = {field.name: field.type for field in schema}
                yield schema
                first = False
            yield from table.to_batches()
            if not block:
                return
