"""Properties of the two text readers a user's files go through, on generated files.

- The CSV catalogue reader (galaxylib.catalog.csv_blocks), in blocks of a few bytes so that
  records straddle blocks, gives exactly the rows of pyarrow's whole-file read with the same
  options, and refuses what it refuses: quoted commas, quotes and line breaks, stray quotes in
  unquoted fields, a byte-order mark, LF, CRLF or CR line ends, blank lines.
- labels.csv (galaxylib.data.labels) gives back the file names and labels it was written with,
  whatever they hold, with or without Excel's byte-order mark and CRLF line ends.

The profile (tests/conftest.py) derandomizes the examples and keeps no database in the checkout.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from galaxylib.catalog.csv_blocks import PARSE_OPTIONS, iter_csv_batches
from galaxylib.classes import CLASS_NAMES
from galaxylib.data.labels import is_index, read_labelled_folder

# Characters that matter to CSV (delimiter, quote, line ends, spaces) among plain and non-ASCII ones.
CSV_TEXT = st.text(alphabet=st.sampled_from(list('ab0 ,"\n\r\té€')), max_size=12)


@st.composite
def csv_fields(draw) -> str:
    """One value as a CSV writer might put it: quoted (quotes doubled) when it must be or by
    choice, else as it is, where a quote inside it (not at its start) is a stray quote."""
    value = draw(CSV_TEXT)
    must_quote = any(c in value for c in ",\n\r") or value.startswith('"')
    if must_quote or draw(st.booleans()):
        return '"' + value.replace('"', '""') + '"'
    return value


@st.composite
def csv_files(draw) -> tuple[bytes, list[str]]:
    """A CSV file's bytes and its column names; sometimes one row is a column short."""
    names = draw(st.lists(st.text(alphabet="abc_", min_size=1, max_size=5), min_size=2, max_size=4, unique=True))
    end = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    lines = [",".join(names)]
    for _ in range(draw(st.integers(0, 25))):
        lines.append(",".join(draw(csv_fields()) for _ in names))
        if draw(st.integers(0, 9)) == 0:
            lines.append("")  # a blank line: skipped by both readers
    if len(lines) > 1 and draw(st.integers(0, 9)) == 0:
        short = draw(st.integers(1, len(lines) - 1))
        lines[short] = ",".join(["x"] * (len(names) - 1))  # malformed: both readers refuse it
    text = end.join(lines) + (end if draw(st.booleans()) else "")
    bom = "\ufeff" if draw(st.booleans()) else ""
    return (bom + text).encode(), names


def read_whole(data: bytes, types: dict) -> pa.Table:
    """pyarrow in one block: its multi-block read drops the \\n of a quoted \\r\\n that a block
    boundary splits (apache/arrow#51368), which the block reader works around."""
    return pcsv.read_csv(
        io.BytesIO(data),
        read_options=pcsv.ReadOptions(block_size=len(data) + 1),
        parse_options=pcsv.ParseOptions(**PARSE_OPTIONS),
        convert_options=pcsv.ConvertOptions(column_types=types),
    )


def read_blocks(path: Path, types: dict, block_bytes: int, infer_bytes: int) -> pa.Table:
    items = iter_csv_batches(path, types, block_bytes=block_bytes, infer_bytes=infer_bytes)
    schema = next(items)
    return pa.Table.from_batches(list(items), schema=schema)


@settings(max_examples=100)
@given(csv_files(), st.integers(1, 64), st.integers(1, 128))
def test_the_block_reader_gives_what_the_whole_file_read_gives(tmp_path_factory, file, block_bytes, infer_bytes):
    data, names = file
    path = tmp_path_factory.mktemp("csv") / "catalogue.csv"
    path.write_bytes(data)
    types = {name: pa.string() for name in names}  # text throughout: the rows, not type inference, are compared
    try:
        whole = read_whole(data, types)
    except pa.ArrowInvalid:
        with pytest.raises(pa.ArrowInvalid):
            read_blocks(path, types, block_bytes, infer_bytes)
        return
    blocks = read_blocks(path, types, block_bytes, infer_bytes)
    assert blocks.schema == whole.schema
    assert blocks.to_pylist() == whole.to_pylist()


# A file name: no '/' or NUL, no leading or trailing space (labels.csv's values are stripped),
# at most 255 bytes; commas, quotes and line feeds are fine (the csv module quotes them). No CR:
# Python's csv writer leaves a CR unquoted when its line end is "\n", and every reader then ends
# the row there; such a file is not what the reader is given to read.
TEXT = st.characters(codec="utf-8", exclude_characters="/\x00\r")
FILE_NAMES = st.text(alphabet=TEXT, min_size=1, max_size=30).filter(
    lambda name: name == name.strip() and name not in (".", "..", "images") and len(name.encode()) <= 255
)
CLASS_LABELS = st.text(alphabet=TEXT, min_size=1, max_size=15).filter(lambda label: label == label.strip())


@st.composite
def labelled_rows(draw) -> list[tuple[str, str]]:
    """(file name, label) rows: labels are class names, or all Galaxy10 class indices."""
    files = draw(st.lists(FILE_NAMES, min_size=1, max_size=12))
    if draw(st.booleans()):
        labels = [str(draw(st.integers(0, len(CLASS_NAMES) - 1))) for _ in files]
    else:
        labels = [draw(CLASS_LABELS) for _ in files]
        assume(not all(is_index(label) for label in labels))
    return list(zip(files, labels))


@settings(max_examples=100)
@given(labelled_rows(), st.booleans(), st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_labels_csv_gives_back_the_names_and_labels_it_was_written_with(
    tmp_path_factory, rows, bom, line_end, label_first
):
    folder = tmp_path_factory.mktemp("labelled")
    for name, _ in rows:
        (folder / name).write_bytes(b"")  # only its existence is checked when labels.csv is read
    header = ["label", "filename", "ra"] if label_first else ["filename", "label", "ra"]
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, lineterminator=line_end)
        writer.writeheader()
        writer.writerows({"filename": name, "label": label, "ra": "1.5"} for name, label in rows)

    listing = read_labelled_folder(folder)

    assert listing.filenames == tuple(name for name, _ in rows)
    assert listing.paths == tuple(folder / name for name, _ in rows)
    if all(is_index(label) for _, label in rows):
        assert listing.class_names == CLASS_NAMES and listing.labels == tuple(int(label) for _, label in rows)
    else:
        assert listing.class_names == tuple(sorted({label for _, label in rows}))
        assert [listing.class_names[i] for i in listing.labels] == [label for _, label in rows]
