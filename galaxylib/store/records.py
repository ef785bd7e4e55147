"""The one prediction record: what every entry point stores for one classified image.

predict.sh, the API, the dashboard and catalogue runs all build their rows here, so the ``metadata`` of a
row has the same keys with the same types whoever wrote it (a test compares them).
"""

from __future__ import annotations

from typing import Any

from galaxylib.inference.classify import Classified

SOURCES = ("predict.sh", "api", "dashboard", "catalog")  # catalog: ./predict.sh --catalog (galaxylib.catalog)

# key -> the type every row stores (None is allowed only where the value can be unknown)
METADATA_TYPES: dict[str, type] = {
    "source": str,  # which entry point: one of SOURCES
    "model_version": str,
    "class_index": int,
    "decision_rule": str,  # most_probable or balanced: how predicted_class was chosen
    "top_classes": list,  # [[name, probability], ...], most likely first
    "probabilities": dict,  # {class name: probability}, the artifact's classes
    "width": int,  # of the image as received, in pixels
    "height": int,
    "size_bytes": int,  # the file's bytes (an h5 row: its pixel buffer)
    "sha256": str,  # of those bytes
    "latency_ms": float,  # decode + preprocess + this image's share of the forward pass
    "batch_size": int,  # images classified together with this one
    "example": bool,  # the dashboard's example picker, not a user's file
    "ood_score": float,  # None when the model has no out-of-distribution check
    "in_distribution": bool,  # None likewise; also the row's own column, for filtering
}


def prediction_row(item: Classified, source: str, *, example: bool = False) -> dict[str, Any]:
    """A row for ``PredictionStore.add_many`` from a successful :class:`Classified`."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
    p = item.prediction
    if p is None:
        raise ValueError(f"{item.name} was not classified ({item.error}); only predictions are stored")
    metadata = {
        "source": source,
        "model_version": p.model_version,
        "class_index": int(p.class_index),
        "decision_rule": p.decision_rule,
        "top_classes": [[name, float(prob)] for name, prob in p.top_classes],
        "probabilities": {name: float(prob) for name, prob in p.probabilities.items()},
        "width": int(item.width),
        "height": int(item.height),
        "size_bytes": int(item.size_bytes),
        "sha256": str(item.sha256),
        "latency_ms": round(float(item.latency_ms), 3),
        "batch_size": int(item.batch_size),
        "example": bool(example),
        "ood_score": None if p.ood_score is None else float(p.ood_score),
        "in_distribution": p.in_distribution,
    }
    return {
        "filename": item.name,
        "predicted_class": p.predicted_class,
        "confidence": float(p.confidence),
        "in_distribution": p.in_distribution,
        "metadata": metadata,
    }
