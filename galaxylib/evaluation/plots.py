"""Figures for the reports; each returns a matplotlib Figure and can save it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from galaxylib.classes import CLASS_NAMES


def short_names(names: Sequence[str]) -> list[str]:
    """Class names short enough for axis ticks (Galaxy10's long ones abbreviated)."""
    return [
        n.replace("Unbarred ", "")
        .replace("In-between ", "In-betw. ")
        .replace(" without ", " w/o ")
        .replace(" with ", " w/ ")
        for n in names
    ]


def _save(fig, path: str | Path | None):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def class_counts(labels: np.ndarray, title: str, path=None, class_names: Sequence[str] = CLASS_NAMES):
    n = len(class_names)
    counts = np.bincount(labels, minlength=n)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * n), 3.6))
    ax.bar(range(n), counts, color="#4c72b0")
    ax.set_xticks(range(n), short_names(class_names), rotation=35, ha="right")
    for i, c in enumerate(counts):
        ax.text(i, c, str(c), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("images")
    ax.set_title(title)
    return _save(fig, path)


def example_grid(
    images: np.ndarray,
    labels: np.ndarray,
    per_class: int = 4,
    title: str = "",
    path=None,
    class_names: Sequence[str] = CLASS_NAMES,
):
    """Rows = classes, columns = examples."""
    n = len(class_names)
    fig, axes = plt.subplots(n, per_class, figsize=(per_class * 1.6, n * 1.6), squeeze=False)
    for cls in range(n):
        idx = np.flatnonzero(labels == cls)[:per_class]
        for j in range(per_class):
            ax = axes[cls, j]
            ax.axis("off")
            if j < len(idx):
                ax.imshow(images[idx[j]])
        axes[cls, 0].set_title(class_names[cls], fontsize=7, loc="left")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def learning_curves(history: dict[str, list[float]], path=None):
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, ax in (("loss", a1), ("accuracy", a2)):
        if key in history:
            ax.plot(np.arange(1, len(history[key]) + 1), history[key], label="train")
        if f"val_{key}" in history:
            ax.plot(np.arange(1, len(history[f"val_{key}"]) + 1), history[f"val_{key}"], label="val")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def confusion_heatmap(
    cm: Sequence[Sequence[int]], path=None, normalise: bool = True, names: Sequence[str] = CLASS_NAMES
):
    names = short_names(names)
    cm = np.asarray(cm, dtype=float)
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalise else cm
    fig, ax = plt.subplots(figsize=(0.75 * len(names) + 2, 0.7 * len(names) + 1.5))
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalise else None)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(
                j,
                i,
                f"{shown[i, j]:.2f}" if normalise else int(cm[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if shown[i, j] > (0.5 if normalise else shown.max() / 2) else "black",
            )
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (rows normalised to recall)" if normalise else "Confusion matrix")
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    return _save(fig, path)


def _reliability_axes(ax, bins: list[dict], title: str) -> None:
    used = [b for b in bins if b["count"]]
    centers = [(b["lower"] + b["upper"]) / 2 for b in used]
    ax.bar(centers, [b["accuracy"] for b in used], width=1 / len(bins), edgecolor="k", alpha=0.75, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left")


def reliability(bins: list[dict], ece: float, path=None):
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    _reliability_axes(ax, bins, f"Reliability (ECE = {ece:.3f})")
    fig.tight_layout()
    return _save(fig, path)


def reliability_before_after(
    before: list[dict],
    ece_before: float,
    after: list[dict],
    ece_after: float,
    temperature: float,
    path=None,
    with_bias: bool = False,
):
    """The reliability diagram of the raw answer beside the calibrated one."""
    fig, axes = plt.subplots(1, 2, figsize=(9.2, 4.2), sharey=True)
    _reliability_axes(axes[0], before, f"Before scaling (ECE = {ece_before:.3f})")
    _reliability_axes(
        axes[1], after, f"After, T = {temperature:.2f}{' + class bias' if with_bias else ''} (ECE = {ece_after:.3f})"
    )
    fig.tight_layout()
    return _save(fig, path)


def confidence_by_class(before: Sequence[dict], after: Sequence[dict], path=None):
    """Per reported class: how often it is right (precision) beside its mean confidence before and
    after calibration (``evaluate()``'s ``per_class`` rows). Calibrated, the last two bars agree."""
    names = short_names([r["class_name"] for r in after])
    x = np.arange(len(names))
    value = lambda rows, key: [np.nan if r.get(key) is None else r[key] for r in rows]  # noqa: E731
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(names) + 1.0) + 2.6, 3.8))
    width = 0.27
    ax.bar(x - width, value(after, "precision"), width, color="#55a868", label="precision (how often right)")
    ax.bar(
        x, value(before, "mean_confidence"), width, color="#c44e52", alpha=0.8, label="mean confidence, model's answer"
    )
    ax.bar(x + width, value(after, "mean_confidence"), width, color="#4c72b0", label="mean confidence, calibrated")
    ax.set_xticks(x, names, rotation=30 if len(names) > 5 else 0, ha="right" if len(names) > 5 else "center")
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("when the class is reported")
    ax.set_title("Confidence against precision, per reported class")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def ood_scores(scores: dict[str, np.ndarray], threshold: float, path=None):
    """Each case's OOD scores as a strip of points against the threshold (log scale when it helps)."""
    names = list(scores)
    fig, ax = plt.subplots(figsize=(8.5, 0.45 * len(names) + 1.4))
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        values = np.asarray(scores[name], dtype=float)
        colour = "#4c72b0" if name == "test" else "#c44e52"
        ax.scatter(values, i + rng.uniform(-0.25, 0.25, len(values)), s=6, alpha=0.5, color=colour)
    ax.axvline(threshold, color="k", ls="--", lw=1, label="threshold (>= 95 % of cutouts inside, 99 % confidence)")
    positive = np.concatenate([np.asarray(v, float) for v in scores.values()])
    if positive.min() > 0 and positive.max() / positive.min() > 100:
        ax.set_xscale("log")
    ax.set_yticks(range(len(names)), [n.replace("_", " ") for n in names])
    ax.invert_yaxis()
    ax.set_xlabel("OOD score (right: less like the training cutouts)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def misclassified_grid(
    images: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    conf: np.ndarray,
    max_images: int = 24,
    path=None,
    class_names: Sequence[str] = CLASS_NAMES,
):
    short = short_names(class_names)
    n = min(max_images, len(images))
    cols = 6
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.0, rows * 2.3), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k])
            ax.set_title(f"true: {short[y_true[k]]}\npred: {short[y_pred[k]]} ({conf[k]:.2f})", fontsize=7)
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no misclassified images", ha="center")
    fig.tight_layout()
    return _save(fig, path)


def prediction_grid(images: Sequence[np.ndarray], titles: Sequence[str], cols: int = 5, path=None):
    rows = max(1, int(np.ceil(len(images) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.2, rows * 2.4), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < len(images):
            ax.imshow(images[k])
            ax.set_title(titles[k], fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
