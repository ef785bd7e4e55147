"""Stratified, seeded train/val/test split, saved once and reused by every step.

Models are selected on ``val``; ``test`` is touched only by the evaluation notebook. Every class
is in every part: a class with fewer than three images is refused before any training.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from galaxylib.files import atomic_write_json

MIN_PER_CLASS = 3  # one image each for train, validation and test


class SplitError(ValueError):
    """A split that cannot be made (or a saved one that does not match its dataset)."""


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int
    dataset_sha256: str
    fractions: tuple[float, float, float]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def make_split(
    labels: np.ndarray,
    dataset_sha256: str,
    seed: int = 42,
    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15),
    class_names: Sequence[str] | None = None,
) -> Split:
    """Train/val/test indices, stratified by label, with every class in every part: a class with
    fewer than ``MIN_PER_CLASS`` images is refused (SplitError naming it and its count), before
    any training, rather than trained on and never validated or tested."""
    labels = np.asarray(labels)
    if not np.isclose(sum(fractions), 1.0):
        raise SplitError(f"split fractions must sum to 1, got {fractions}")
    if labels.size == 0:
        raise SplitError("there are no images to split")
    counts = np.bincount(labels)
    rare = [(int(c), int(counts[c])) for c in np.flatnonzero((counts > 0) & (counts < MIN_PER_CLASS))]
    if rare:
        named = ", ".join(f"{_class_name(c, class_names)} has {n} image{'s' * (n != 1)}" for c, n in rare)
        raise SplitError(
            f"too few images to train, validate and test every class: {named}. Each class needs at "
            f"least {MIN_PER_CLASS}, one each for training, validation and test: add images of "
            f"{'that class' if len(rare) == 1 else 'those classes'}, or leave {'it' if len(rare) == 1 else 'them'} "
            "out of the labels"
        )
    idx = np.arange(len(labels))
    train, rest = _stratified(idx, labels, fractions[0], seed)
    val_share = fractions[1] / (fractions[1] + fractions[2])
    val, test = _stratified(rest, labels[rest], val_share, seed, min_count=2)
    train, val, test = _every_class_in_every_part(labels, (train, val, test))
    return Split(np.sort(train), np.sort(val), np.sort(test), seed, dataset_sha256, tuple(fractions))


def _class_name(index: int, class_names: Sequence[str] | None) -> str:
    return f"class {class_names[index]!r}" if class_names is not None and index < len(class_names) else f"class {index}"


def _stratified(
    idx: np.ndarray, labels: np.ndarray, train_size: float, seed: int, min_count: int = MIN_PER_CLASS
) -> tuple[np.ndarray, np.ndarray]:
    """``train_test_split`` stratified by ``labels`` where it can be: with a class under
    ``min_count``, or fewer images on a side than classes, it shuffles without strata (the
    classes a side then lacks are moved in by ``_every_class_in_every_part``)."""
    present = np.bincount(labels)
    stratify = labels if present[present > 0].min() >= min_count else None
    try:
        return train_test_split(idx, train_size=train_size, random_state=seed, stratify=stratify)
    except ValueError as exc:
        # sklearn: "The test_size = 9 should be greater or equal to the number of classes = 10"
        if stratify is None or "number of classes" not in str(exc):
            raise SplitError(f"cannot split {len(idx)} images with train_size {train_size}: {exc}") from exc
        return train_test_split(idx, train_size=train_size, random_state=seed, stratify=None)


def _every_class_in_every_part(labels: np.ndarray, parts: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    """The parts with each class in each: where rounding left a part without a class, one of that
    class's images moves in from the part holding the most of them (every class has at least
    ``MIN_PER_CLASS``, so that part keeps one). A split that needs no move is left as it was."""
    parts = [np.asarray(p) for p in parts]
    classes = np.unique(labels)
    for i in range(len(parts)):
        for c in np.setdiff1d(classes, labels[parts[i]]):
            donor = max(range(len(parts)), key=lambda k: int(np.sum(labels[parts[k]] == c)))
            moved = parts[donor][labels[parts[donor]] == c].max()  # the same image on every run
            parts[donor] = parts[donor][parts[donor] != moved]
            parts[i] = np.append(parts[i], moved)
    return parts


def save_split(split: Split, path: str | os.PathLike) -> Path:
    payload = asdict(split)
    for key in ("train", "val", "test"):
        payload[key] = [int(i) for i in payload[key]]
    return atomic_write_json(path, payload, indent=None)


def load_split(path: str | os.PathLike, dataset_sha256: str | None = None) -> Split:
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"no split at {path}: run notebooks/01_prepare_data first")
    raw = json.loads(path.read_text())
    split = Split(
        np.array(raw["train"], np.int64),
        np.array(raw["val"], np.int64),
        np.array(raw["test"], np.int64),
        int(raw["seed"]),
        raw["dataset_sha256"],
        tuple(raw["fractions"]),
    )
    if dataset_sha256 is not None and split.dataset_sha256 != dataset_sha256:
        raise SplitError(
            f"{path} was made for dataset {split.dataset_sha256[:12]}, not {dataset_sha256[:12]}: "
            "re-run the data preparation step for this dataset"
        )
    return split
