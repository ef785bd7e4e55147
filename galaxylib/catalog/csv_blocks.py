r"""A CSV catalogue read as record batches, a few blocks of the file in memory at a time.

Where one record ends is pyarrow's call, not this module's: ``pyarrow.csv.open_csv`` with
``newlines_in_values=True`` cuts its blocks with the same rules as its parser (a quote opens a
quoted field only at the start of a field, so ``img"1.jpg`` is a plain value; a quoted field may
hold commas, doubled quotes and line breaks). Whatever ``pyarrow.csv.read_csv`` accepts with
``PARSE_OPTIONS``, this reader accepts, with the same rows (counting quotes to find record ends
would cut inside a quoted field after a stray quote in an unquoted one).

Memory: the streaming reader reads at most 32 blocks ahead of its consumer (Arrow's background
generator), so the peak is a few megabytes whatever the file's size. Measured here (pyarrow 26,
blocks of 256 KiB): peak RSS 103 MB reading a 7 MB catalogue and 102 MB reading a 277 MB one, in 0.6 s; the
interpreter with pyarrow imported is 76 MB. A record longer than a block (pyarrow refuses to
straddle it) restarts the stream with blocks four times larger, skipping the rows already handed
out: rare, and the peak then follows the longest record.

pyarrow 26 drops the ``\n`` of a quoted ``\r\n`` that a block boundary splits (apache/arrow#51368,
``read_csv`` too, at its default block size): the file is handed to it through ``_NoSplitCrlf``,
which never ends a read between those two bytes.

Types: the streaming reader infers them from its first block; here they are inferred from the
first ``INFER_BYTES`` (about 10k rows of a typical catalogue), a column empty there becomes text
(Arrow's null type takes no later value), and every column is pinned for the whole file. A later
value that does not fit its column's type is an error, as with pyarrow's own streaming reader.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any, BinaryIO

INFER_BYTES = 1024 * 1024  # the records the types are inferred from
BLOCK_BYTES = 64 * 1024  # the streaming reader's block: it reads up to 32 of them ahead (2 MB)
GROWTH = 4  # a record longer than a block: the stream restarts with blocks this much larger
MIN_BLOCK_BYTES = 4  # pyarrow wants a byte-order mark whole in the first block; _NoSplitCrlf reads of 2 or more
PARSE_OPTIONS: dict[str, Any] = {"newlines_in_values": True}  # pyarrow.csv.ParseOptions: quoted line breaks
# What pyarrow says when a block cannot hold one record (or the header): the block is too small,
# the file is not wrong. Matched by text: pyarrow raises ArrowInvalid for both and for bad files.
_TOO_SMALL = ("straddl", "Empty CSV file or block")


def _block_too_small(exc: Exception) -> bool:
    return any(marker in str(exc) for marker in _TOO_SMALL)


class _NoSplitCrlf(io.RawIOBase):
    r"""A binary file whose reads never end between a ``\r`` and the ``\n`` after it: pyarrow reads
    its blocks with ``read(block_size)`` and, when one ends with ``\r`` and the next starts with
    ``\n``, drops that ``\n`` even inside a quoted field (apache/arrow#51368). Reads of at least
    ``MIN_BLOCK_BYTES`` are asked for, so holding one ``\r`` back never leaves a read empty."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.pending = b""  # held back from the last read

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.pending + self.raw.read(size - len(self.pending) if size >= 0 else -1)
        self.pending = b""
        if len(data) > 1 and data.endswith(b"\r"):
            after = self.raw.read(1)
            if after == b"\n":
                data, self.pending = data[:-1], b"\r\n"
            else:
                self.pending = after
        return data


def _open(raw: BinaryIO, block_bytes: int, column_types: dict[str, Any]) -> Any:
    import pyarrow.csv as pcsv

    return pcsv.open_csv(
        _NoSplitCrlf(raw),
        read_options=pcsv.ReadOptions(block_size=max(block_bytes, MIN_BLOCK_BYTES), use_threads=False),
        parse_options=pcsv.ParseOptions(**PARSE_OPTIONS),
        convert_options=pcsv.ConvertOptions(column_types=column_types),
    )


def _first_block_schema(path: str | os.PathLike, column_types: dict[str, Any], infer_bytes: int, size: int) -> Any:
    """The types of the records in the file's first ``infer_bytes``; a column empty throughout is
    text. Read from a copy of that block and one byte more, so the block ends at a whole record and
    the reader's look-ahead goes no further into the file."""
    import pyarrow as pa

    with open(path, "rb") as raw:
        head = raw.read(infer_bytes + 1)
    try:
        with _open(io.BytesIO(head), infer_bytes, column_types) as reader:
            schema = reader.schema
    except pa.ArrowInvalid:
        # No whole record in the first block, or a bad one: the copy's cut end may be the cause,
        # so the file itself is read, with larger blocks while pyarrow says a block is too small.
        while True:
            try:
                with open(path, "rb") as raw, _open(raw, infer_bytes, column_types) as reader:
                    schema = reader.schema
                break
            except pa.ArrowInvalid as exc:
                if not _block_too_small(exc) or infer_bytes >= size:
                    raise
                infer_bytes *= GROWTH
    return pa.schema([pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in schema])


def iter_csv_batches(
    path: str | os.PathLike,
    column_types: dict[str, Any],
    block_bytes: int = BLOCK_BYTES,
    infer_bytes: int = INFER_BYTES,
) -> Iterator[Any]:
    """Record batches of the CSV at ``path``; ``column_types`` pins some columns (the rest are
    inferred from the first ``infer_bytes`` and kept for the whole file). The first item is the
    schema, so a caller can check the columns before any batch."""
    import pyarrow as pa

    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        start = fh.read(4096).removeprefix(b"\xef\xbb\xbf")
    if not start.strip():
        raise ValueError("the file is empty (no header line)")
    schema = _first_block_schema(path, column_types, infer_bytes, size)
    yield schema
    types = {field.name: field.type for field in schema}
    handed = 0  # rows yielded so far: a restarted stream skips them
    while True:
        try:
            with open(path, "rb") as raw, _open(raw, block_bytes, types) as reader:
                skip = handed
                for batch in reader:
                    if skip >= batch.num_rows:
                        skip -= batch.num_rows
                        continue
                    batch, skip = batch.slice(skip), 0
                    handed += batch.num_rows
                    yield batch
            return
        except pa.ArrowInvalid as exc:
            if not _block_too_small(exc) or block_bytes >= size:
                raise
            block_bytes *= GROWTH
