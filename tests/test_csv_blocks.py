"""A CSV catalogue is read a few blocks at a time (galaxylib.catalog.csv_blocks) and gives exactly
what pyarrow's whole-file reader gives: quoted commas and newlines that straddle a block's end,
stray quotes in plain fields, Windows line ends, a byte-order mark, records longer than a block,
and the types of the first block kept for the rest. tests/test_reader_properties.py checks the
same on generated files."""

from __future__ import annotations

import csv
import random
import tracemalloc

import pyarrow as pa
import pyarrow.csv as pcsv
import pytest

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


def test_memory_stays_a_few_blocks_whatever_the_files_size(tmp_path):
    """What keeps the peak flat: pyarrow reads at most 32 blocks ahead, so 4 KiB blocks of a 4 MB
    catalogue hold a small fraction of it, in Arrow buffers and Python bytes together."""
    path = tricky_catalogue(tmp_path / "cat.csv", 80_000)
    size = path.stat().st_size
    assert size > 3_000_000
    items = iter_csv_batches(path, PINNED, block_bytes=4096, infer_bytes=8192)
    next(items)
    tracemalloc.start()
    arrow_before, arrow_peak, rows = pa.total_allocated_bytes(), 0, 0
    for batch in items:  # each batch dropped as the next comes, as the normaliser does
        rows += batch.num_rows
        arrow_peak = max(arrow_peak, pa.total_allocated_bytes() - arrow_before)
    python_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert rows == 80_000
    assert arrow_peak + python_peak < size / 8


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
    bom_only = tmp_path / "bom.csv"
    bom_only.write_bytes(b"\xef\xbb\xbf\r\n")
    with pytest.raises(ValueError, match="empty"):
        read_in_blocks(bom_only)
    header = tmp_path / "header.csv"
    header.write_text("id_str,file_loc\n")
    assert read_in_blocks(header).num_rows == 0


def whole_file(path, **convert) -> pa.Table:
    """pyarrow's own reader in one block: what the block reader must give row for row."""
    return pcsv.read_csv(
        path,
        read_options=pcsv.ReadOptions(block_size=path.stat().st_size + 1),
        parse_options=pcsv.ParseOptions(newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(column_types=PINNED, **convert),
    )


def test_a_stray_quote_in_a_plain_field_then_a_quoted_line_break_later(tmp_path):
    """RFC 4180-lenient, as pyarrow reads it: a quote opens a quoted field only at the field's
    start, so img"1.jpg is a plain value and the quoted note further down still holds its line
    break. Counting quotes to find record ends cut inside that note: "Expected 4 columns, got 2"."""
    path = tmp_path / "cat.csv"
    lines = ["id_str,file_loc,ra,note", 'a1,img"1.jpg,150.1,plain']
    lines += [f"b{i},images/b{i}.jpg,150.{i},plain" for i in range(60)]
    lines += ['c1,images/c1.jpg,151.0,"two', 'lines, and a ""quote"""', "d1,images/d1.jpg,151.5,last"]
    path.write_text("\n".join(lines) + "\n")

    blocks = read_in_blocks(path, block_bytes=64, infer_bytes=128)

    assert blocks.equals(whole_file(path))
    assert blocks.num_rows == 63
    assert blocks.column("file_loc")[0].as_py() == 'img"1.jpg'
    assert blocks.column("note")[61].as_py() == 'two\nlines, and a "quote"'


def test_a_quoted_crlf_split_by_a_block_boundary_keeps_both_bytes(tmp_path):
    """pyarrow 26 alone drops the \\n when a block ends between \\r and \\n inside a quoted
    field (apache/arrow#51368); every block size puts a boundary somewhere in these values."""
    path = tmp_path / "cat.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\r\n")
        writer.writerow(["id_str", "file_loc", "note"])
        writer.writerows([f"g{i}", f"g{i}.jpg", "line one\r\nline two\r\n\r\nend"] for i in range(40))
    for block_bytes in range(24, 90):
        notes = read_in_blocks(path, block_bytes=block_bytes, infer_bytes=block_bytes).column("note").to_pylist()
        assert notes == ["line one\r\nline two\r\n\r\nend"] * 40, block_bytes


def test_a_record_longer_than_a_block_is_read_whole_and_once(tmp_path):
    """pyarrow's streaming reader refuses a record that straddles two block boundaries; the stream
    restarts with larger blocks and skips the rows it has already handed out."""
    path = tmp_path / "cat.csv"
    long_note = "x" * 5000 + "\n" + "y" * 3000
    rows = [[f"g{i}", f"g{i}.jpg", long_note if i in (3, 70) else "short"] for i in range(100)]
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([["id_str", "file_loc", "note"], *rows])

    blocks = read_in_blocks(path, block_bytes=256, infer_bytes=512)

    assert blocks.equals(whole_file(path))
    assert blocks.column("id_str").to_pylist() == [f"g{i}" for i in range(100)]


def test_a_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path):
    """Excel's "CSV UTF-8" starts the file with a byte-order mark and ends lines with CRLF."""
    path = tmp_path / "cat.csv"
    path.write_bytes("id_str,file_loc,ra\r\nM31,m31.jpg,10.68\r\n".encode("utf-8-sig"))
    blocks = read_in_blocks(path, block_bytes=16, infer_bytes=16)
    assert blocks.column_names == ["id_str", "file_loc", "ra"]
    assert blocks.to_pylist() == [{"id_str": "M31", "file_loc": "m31.jpg", "ra": 10.68}]


def test_a_malformed_row_is_an_error_as_in_the_whole_file_read(tmp_path):
    path = tmp_path / "cat.csv"
    path.write_text("id_str,file_loc,ra\n" + "".join(f"g{i},g{i}.jpg,1.0\n" for i in range(50)) + "bad,row\n")
    with pytest.raises(pa.ArrowInvalid, match="Expected 3 columns, got 2"):
        whole_file(path)
    with pytest.raises(pa.ArrowInvalid, match="Expected 3 columns, got 2"):
        read_in_blocks(path, block_bytes=64, infer_bytes=64)
