"""Report tables as Markdown: the notebooks show them without pandas."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def markdown_table(rows: Sequence[dict[str, Any]], floatfmt: str = "{:.3f}") -> str:
    """A list of dicts (same keys) as a Markdown table; floats formatted with ``floatfmt``."""
    if not rows:
        return "_(no rows)_"
    head = list(rows[0])
    fmt = lambda v: floatfmt.format(v) if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(fmt(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def split_table(labels: np.ndarray, split, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Per-class counts in each part of a split: shows the stratification."""
    rows = []
    for i, name in enumerate(class_names):
        row: dict[str, Any] = {"class": f"{i} {name}"}
        for part in ("train", "val", "test"):
            row[part] = int((labels[getattr(split, part)] == i).sum())
        rows.append(row)
    return rows


def per_class_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The evaluation's per-class precision, recall, F1 and support, with the mean calibrated
    confidence of the cutouts given that class (close to the precision when calibrated)."""
    keys = ("class_index", "class_name", "precision", "mean_confidence", "recall", "f1", "support")
    return [{k: "" if r.get(k) is None else r[k] for k in keys} for r in results["per_class"]]
