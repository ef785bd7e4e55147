"""Stratified, seeded train/val/test split, saved once and reused by every step.

Models are selected on ``val``; ``test`` is touched only by the evaluation notebook.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from galaxylib.files import atomic_write_json


class SplitError(ValueError):
    pass


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
    labels: np.ndarray, dataset_sha256: str, seed: int = 42, fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
) -> Split:
    labels = np.asarray(labels)
    if not np.isclose(sum(fractions), 1.0):
        raise SplitError(f"split fractions must sum to 1, got {fractions}")
    idx = np.arange(len(labels))
    # Classes too rare to stratify (a tiny test set) fall back to a plain shuffle.
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 3 else None
    train, rest = train_test_split(idx, train_size=fractions[0], random_state=seed, stratify=stratify)
    val_share = fractions[1] / (fractions[1] + fractions[2])
    rest_strat = (
        labels[rest]
        if stratify is not None and np.bincount(labels[rest])[np.bincount(labels[rest]) > 0].min() >= 2
        else None
    )
    val, test = train_test_split(rest, train_size=val_share, random_state=seed, stratify=rest_strat)
    return Split(np.sort(train), np.sort(val), np.sort(test), seed, dataset_sha256, tuple(fractions))


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
