"""Build a classifier and fit it the way ``train.mode`` says: ``full``, ``head`` or ``finetune``.

The pipeline (``galaxylib.pipeline.steps.train``) hands in the resized images and the split;
what comes back is the trained Keras model, ready to export, with its history. Which start
goes with which mode, where head mode caches its backbone features, and how the model is
described in its artifact are decided here, beside the training code they follow from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from galaxylib.data.split import Split
from galaxylib.modeling.layer_names import MORPHOLOGY
from galaxylib.modeling.model import ModelParams, build_model, compile_model, describe_weights
from galaxylib.modeling.training import MODES, TrainParams, train_model


@dataclass
class TrainedClassifier:
    """A fitted classifier and how it got there."""

    model: Any  # keras.Model, orientation-averaged when the parameters ask for it
    history: dict[str, list[float]]
    start: str  # describe_weights(model.weights): what it started from
    architecture: str  # one line for the artifact
    # head mode: the frozen backbone's train-row features (mean over the views, like the
    # export's second output), so the OOD check needs no second pass over the train split
    train_features: np.ndarray | None = None


def check_mode(model_params: ModelParams, train_params: TrainParams) -> str:
    """The start's stable name, once the mode is known and fits the start; a clear error otherwise."""
    if train_params.mode not in MODES:
        raise ValueError(f"train.mode must be one of {', '.join(MODES)}, not {train_params.mode!r}")
    start = describe_weights(model_params.weights)
    if start == MORPHOLOGY and train_params.mode != "head":
        raise ValueError(
            f"the morphology start has no weights to train: use train.mode head, not {train_params.mode!r}"
        )
    return start


def features_cache_file(cache_dir: Path, dataset_key: str, start: str, image_size: int, crop: float) -> Path:
    """Where head mode caches a start's backbone features of a dataset (``dataset_key``: its
    fingerprint) at a size and crop."""
    if start == MORPHOLOGY:
        from galaxylib.modeling.morphology import VERSION

        start = f"morphology-v{VERSION}"  # the measurements are code, not weights
    tag = "".join(c if c.isalnum() or c in "-_." else "-" for c in start)
    return cache_dir / "features" / f"{dataset_key[:16]}_{tag}_{image_size}px_crop{crop:.3f}.npy"


def describe_architecture(start: str, mode: str) -> str:
    if start == MORPHOLOGY:
        return f"morphology measurements + MLP head ({mode} training)"
    network = "EfficientNet-" + start.title() if start.startswith("lite") else "EfficientNetB0"
    return f"{network} ({start} start, {mode} training)"


def fit_classifier(
    model_params: ModelParams,
    train_params: TrainParams,
    images: np.ndarray,
    labels: np.ndarray,
    split: Split,
    n_classes: int,
    *,
    cache_dir: Path,
    dataset_key: str,
    crop: float,
    show_progress: bool = True,
    on_epoch: Callable | None = None,
) -> TrainedClassifier:
    """Seed, build and train as ``train_params.mode`` says; wrap in orientation averaging if asked."""
    import keras

    from galaxylib.modeling.head import feature_views, train_head, view_features
    from galaxylib.modeling.orientation import with_orientation_average

    start = check_mode(model_params, train_params)
    keras.utils.set_random_seed(int(train_params.seed))
    model = build_model(model_params, n_classes, weights_cache=cache_dir / "weights")
    train_features = None
    if train_params.mode == "full":
        history = train_model(model, images, labels, split, train_params, n_classes, on_epoch=on_epoch)
    else:
        features = view_features(
            model,
            images,
            show_progress=show_progress,
            cache_file=features_cache_file(cache_dir, dataset_key, start, model_params.image_size, crop),
            views=feature_views(start),
        )
        history = train_head(model, features, labels, split, train_params, n_classes, on_epoch=on_epoch)
        if train_params.mode == "finetune":
            compile_model(model, model_params.learning_rate)  # the head's weights stay as trained
            head_history = {f"head_{k}": v for k, v in history.items()}
            history = {
                **train_model(model, images, labels, split, train_params, n_classes, on_epoch=on_epoch),
                **head_history,
            }
        else:  # a frozen backbone's features are the cached ones
            train_features = features.mean(axis=0)[split.train]
    if model_params.average_orientations:
        model = with_orientation_average(model)
    return TrainedClassifier(
        model=model,
        history=history,
        start=start,
        architecture=describe_architecture(start, train_params.mode),
        train_features=train_features,
    )
