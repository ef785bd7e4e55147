"""Evaluation metrics: accuracy, macro-F1, per-class table, confusion, calibration."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from galaxylib.classes import CLASS_NAMES, COARSE_NAMES, COARSE_OF_CLASS


def _decided(probs: np.ndarray, decisions: np.ndarray | None) -> np.ndarray:
    return probs.argmax(axis=1) if decisions is None else np.asarray(decisions, dtype=np.int64)


def expected_calibration_error(
    y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15, decisions: np.ndarray | None = None
) -> tuple[float, list[dict]]:
    """ECE over equal-width confidence bins, plus the bins for a reliability plot.

    The confidence of a row is the probability of its reported class, ``decisions`` (the argmax
    when None): a calibration with a class bias may report a class that is not the most probable."""
    probs = np.asarray(probs, dtype=np.float64)
    decided = _decided(probs, decisions)
    conf = probs[np.arange(len(probs)), decided]
    correct = decided == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece, bins = 0.0, []
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        n = int(mask.sum())
        acc = float(correct[mask].mean()) if n else None
        mean_conf = float(conf[mask].mean()) if n else None
        if n:
            ece += n / len(y_true) * abs(acc - mean_conf)
        bins.append({"lower": float(lo), "upper": float(hi), "count": n, "accuracy": acc, "confidence": mean_conf})
    return float(ece), bins


def ece_noise_floor(
    probs: np.ndarray, n_bins: int = 15, draws: int = 400, seed: int = 0, decisions: np.ndarray | None = None
) -> dict[str, float]:
    """The ECE a *perfectly* calibrated model with these probabilities would show on this many cutouts.

    Each draw takes labels at random from ``probs`` themselves (so the model is calibrated by
    construction) and measures the ECE against them: what is left is sampling noise alone.
    On a few hundred cutouts it is several hundredths, so a measured ECE near the median is
    as good as calibration can be shown to be at that size."""
    probs = np.asarray(probs, dtype=np.float64)
    if not len(probs):
        return {"median": float("nan"), "p90": float("nan"), "draws": 0}
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
    values = []
    for _ in range(draws):
        u = rng.random((len(probs), 1))
        labels = np.minimum((u > cumulative).sum(axis=1), probs.shape[1] - 1)
        values.append(expected_calibration_error(labels, probs, n_bins, decisions)[0])
    return {"median": float(np.median(values)), "p90": float(np.percentile(values, 90)), "draws": int(draws)}


def evaluate(
    y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str] = CLASS_NAMES, decisions: np.ndarray | None = None
) -> dict[str, Any]:
    """Everything the evaluation report shows, as plain JSON-able values, for the model's classes.

    ``decisions``: the reported classes (``TrustCheck.decide``); the argmax of ``probs`` when None."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = _decided(probs, decisions)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    confidence = probs[np.arange(len(probs)), y_pred]
    ece, bins = expected_calibration_error(y_true, probs, decisions=y_pred)
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        "ece": ece,
        "reliability": bins,
        "per_class": [
            {
                "class_index": i,
                "class_name": class_names[i],
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                # calibrated: close to the precision (how often the class is right when reported)
                "mean_confidence": float(confidence[y_pred == i].mean()) if (y_pred == i).any() else None,
            }
            for i in labels
        ],
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "misclassified": [int(i) for i in np.flatnonzero(y_pred != y_true)],
    }


def fold_to_coarse(probs: np.ndarray) -> np.ndarray:
    """Sum the ten class probabilities into Galaxy Zoo 1's four coarse classes."""
    out = np.zeros((len(probs), len(COARSE_NAMES)))
    for cls, coarse in COARSE_OF_CLASS.items():
        out[:, COARSE_NAMES.index(coarse)] += probs[:, cls]
    return out


def coarse_transfer(coarse_true: list[str], probs: np.ndarray) -> dict[str, Any]:
    """Balanced accuracy on the four coarse classes (chance is 0.25)."""
    y_true = np.array([COARSE_NAMES.index(c) for c in coarse_true])
    y_pred = fold_to_coarse(probs).argmax(axis=1)
    labels = list(range(len(COARSE_NAMES)))
    return {
        "n": int(len(y_true)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": list(COARSE_NAMES),
    }
