"""The one reader of a labelled folder: images plus a ``labels.csv``.

``labels.csv`` has a ``filename`` column and a label column (``label`` unless told
otherwise). A file name is relative to the folder; a bare name is also looked up in an
``images/`` subfolder (the layout of ``../shared/gz1_coarse``). The class table:
- a column of class names: the names as listed in an optional ``classes.txt`` (one per
  line), else sorted;
- a column of integers: indices into ``classes.txt``, or into Galaxy10's ten classes
  when there is none.
Both files are read as UTF-8, with or without the byte-order mark Excel writes.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

from galaxylib.classes import CLASS_NAMES

LABELS_FILE = "labels.csv"
CLASSES_FILE = "classes.txt"
# "utf-8-sig" reads a file with or without a byte-order mark; plain "utf-8" would keep the mark in
# the first column's name ('\ufefffilename'), and the locale's encoding is not the file's.
ENCODING = "utf-8-sig"
_INDEX = re.compile(r"-?[0-9]+")  # ASCII digits only: str.isdigit() is also true of '²', which int() refuses


class LabelsError(ValueError):
    """A labels.csv that is missing, malformed or does not match its folder."""


def is_index(value: str) -> bool:
    """Whether a label is written as a class index (an integer) rather than a class name."""
    return _INDEX.fullmatch(value) is not None


@dataclass(frozen=True)
class LabelledFolder:
    folder: Path
    filenames: tuple[str, ...]  # as written in labels.csv
    paths: tuple[Path, ...]  # where each file is
    labels: tuple[int, ...]  # indices into class_names
    class_names: tuple[str, ...]
    label_column: str

    def __len__(self) -> int:
        return len(self.filenames)


def class_table(folder: Path, values: list[str]) -> tuple[str, ...]:
    """The class names of a label column: ``classes.txt`` in ``folder`` if there is one, Galaxy10's
    for integers without it, else the names sorted."""
    listed = folder / CLASSES_FILE
    if listed.is_file():
        try:
            text = listed.read_text(encoding=ENCODING)
        except UnicodeDecodeError as exc:
            raise LabelsError(f"cannot read {listed}: {exc} (save it as UTF-8 text)") from exc
        names = tuple(line.strip() for line in text.splitlines() if line.strip())
        if len(set(names)) != len(names):
            raise LabelsError(f"{listed} lists a class twice")
        return names
    if all(is_index(v) for v in values):
        return CLASS_NAMES  # integer labels without a classes.txt: Galaxy10's table
    return tuple(sorted(set(values)))


def read_labelled_folder(folder: str | os.PathLike, label_column: str = "label") -> LabelledFolder:
    """Parse and check ``labels.csv``; every named file must exist. Raises LabelsError."""
    folder = Path(folder)
    csv_path = folder / LABELS_FILE
    if not csv_path.is_file():
        raise LabelsError(f"{folder} has no {LABELS_FILE} (columns: filename,{label_column})")
    try:
        with open(csv_path, newline="", encoding=ENCODING) as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            if "filename" not in columns or label_column not in columns:
                raise LabelsError(
                    f"{csv_path} needs the columns filename and {label_column!r}; it has {columns}"
                    + ("" if label_column in columns else " (choose the label column with -p data.label_column NAME)")
                )
            rows = [
                (line, (row["filename"] or "").strip(), (row[label_column] or "").strip())
                for line, row in enumerate(reader, start=2)
            ]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise LabelsError(f"cannot read {csv_path}: {exc} (save it as CSV in UTF-8)") from exc
    if not rows:
        raise LabelsError(f"{csv_path} lists no images")
    for line, name, value in rows:
        if not name or not value:
            raise LabelsError(f"{csv_path}:{line}: empty filename or {label_column}")
    class_names = class_table(folder, [v for _, _, v in rows])
    index_of = {name: i for i, name in enumerate(class_names)}
    filenames, paths, labels = [], [], []
    for line, name, value in rows:
        if value in index_of:
            label = index_of[value]
        elif is_index(value):
            label = int(value)
            if not 0 <= label < len(class_names):
                raise LabelsError(f"{csv_path}:{line}: label {label} is not in 0..{len(class_names) - 1}")
        else:
            raise LabelsError(f"{csv_path}:{line}: {value!r} is not one of the classes {list(class_names)}")
        path = folder / name
        if not path.is_file() and Path(name).name == name and (folder / "images" / name).is_file():
            path = folder / "images" / name
        if not path.is_file():
            raise LabelsError(
                f"{csv_path}:{line}: {name} is not in {folder}"
                + ("" if Path(name).name != name else f" (nor in {folder / 'images'})")
            )
        filenames.append(name)
        paths.append(path)
        labels.append(label)
    return LabelledFolder(folder, tuple(filenames), tuple(paths), tuple(labels), class_names, label_column)
