"""A CSV catalogue is read one block at a time (galaxylib.catalog.csv_blocks) and gives exactly
what pyarrow's whole-file reader gives: quoted commas and newlines that straddle a block's end,
Windows line ends, and the types of the first block kept for the rest."""

from __future__ import annotations

import csv
import random

import pyarrow as pa
import pyarrow.csv as pcsv
import pytest

from galaxylib.catalog import csv_blocks
from galaxylib.catalog.csv_blocks import iter_csv_batches

PINNED = {"id_str": pa.string(), "file_loc": pa.string()}


def read_in_blocks(path, **kwargs) -> pa.Table:
    items = iter_csv_batches(path, PINNED, **kwargs)
    schema = next(items)
    return pa.Table.from_batches(list(items), schema=schema)


def tricky_catalogue(path, rows: int, lineterminator: str = "\n"):
    """Comments with commas, quotes and line breaks inside quoted fields, among plain rows."""
    rng = random.Random(1)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator=lineterminator)
        writer.writerow(["id_str", "file_loc", "ra", "dec", "note"])
        for i in range(rows):
            note = rng.choice(["", "plain", 'says "hi", twice', "two\nlines", "a, b\r\nc", '"quoted"'])
            writer.writerow(
                [f"G{i:05d}", f"images/g{i}.jpg", f"{rng.uniform(0, 360):.5f}", f"{rng.uniform(-30, 80):.5f}", note]
            )
    return path


@pytest.mark.parametrize("lineterminator", ["\n", "\r\n"])
def test_small_blocks_give_the_same_table_as_reading_the_whole_file(tmp_path, lineterminator):
    path = tricky_catalogue(tmp_path / "cat.csv", 3000, lineterminator)
    whole = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types=PINNED))
    # blocks of ~300 bytes: about a hundred cuts, many of them inside a quoted field
    blocks = read_in_blocks(path, block_bytes=300, infer_bytes=2000)
    assert blocks.num_rows == 3000
    assert blocks.schema == whole.schema
    assert blocks.equals(whole)


def test_no_block_is_much_larger_than_asked(tmp_path, monkeypatch):
    """What keeps the peak flat: each parse sees one block (plus the line it ends in), never the file."""
    path = tricky_catalogue(tmp_path / "cat.csv", 3000)
    sizes = []
    real = csv_blocks._read_block
    monkeypatch.setattr(csv_blocks, "_read_block", lambda fh, n: sizes.append(len(b := real(fh, n))) or b)
    read_in_blocks(path, block_bytes=4096, infer_bytes=8192)
    assert len(sizes) > 20
    assert max(sizes) < 8192 + 200 and max(sizes[1:-1]) < 4096 + 200


def test_later_blocks_keep_the_first_blocks_types(tmp_path):
    """A column empty in the first block is text, not Arrow's null type; one that is numeric in the
    first block and text later is an error, as with pyarrow's own streaming reader."""
    path = tmp_path / "cat.csv"
    lines = ["id_str,file_loc,later,mag"] + [f"{i},f{i}.jpg,,{i}.5" for i in range(200)]
    lines += [f"{i},f{i}.jpg,seen,{i}.5" for i in range(200, 400)]
    path.write_text("\n".join(lines) + "\n")
    table = read_in_blocks(path, block_bytes=500, infer_bytes=1000)
    assert table.schema.field("later").type == pa.string()
    assert table.schema.field("mag").type == pa.float64()
    assert table.column("id_str").type == pa.string() and table.column("id_str")[0].as_py() == "0"
    assert table.column("later").to_pylist()[-1] == "seen"
    path.write_text("\n".join(lines + ["400,f.jpg,x,bright"]) + "\n")
    with pytest.raises(pa.ArrowInvalid):
        read_in_blocks(path, block_bytes=500, infer_bytes=1000)


def test_an_empty_file_is_an_error_and_a_header_alone_has_no_rows(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        read_in_blocks(empty)
    header = tmp_path / "header.csv"
    header.write_text("id_str,file_loc\n")
    assert read_in_blocks(header).num_rows == 0
