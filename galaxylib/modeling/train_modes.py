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
from galaxylib.modeling.scratch_cnn import SCRATCH, ScratchParams, fused_parts, is_fused
from galaxylib.modeling.training import MODES, TrainParams, train_model


@dataclass
class TrainedClassifier:
    """A fitted classifier and how it got there."""

    model: Any  # keras.Model, orientation-averaged when the parameters ask for it
    history: dict[str, list[float]]
    start: str  # describe_weights(model.weights): what it started from
    architecture: str  # one line for the artifact
    strategy: str = "one"  # galaxylib.modeling.distribute: where it trained
    replicas: int = 1
    # head mode: the frozen backbone's features (mean over the views, like the export's second
    # output) of up to OOD_TRAIN_ROWS train rows, so the OOD check needs no second pass over them
    train_features: np.ndarray | None = None
    feature_rows: np.ndarray | None = None  # the train rows those features belong to
    mixed_precision: bool = False  # trained under mixed_float16 (the model returned is float32)


OOD_TRAIN_ROWS = 4000  # head mode hands the OOD fit at most this many train rows' features


def check_mode(model_params: ModelParams, train_params: TrainParams) -> str:
    """The start's stable name, once the mode and the strategy are known to fit the start; a clear
    error otherwise (before any work: no TensorFlow is needed)."""
    from galaxylib.modeling.distribute import check_strategy

    if train_params.mode not in MODES:
        raise ValueError(f"train.mode must be one of {', '.join(MODES)}, not {train_params.mode!r}")
    check_strategy(
        train_params.strategy, train_params.cpu_devices, train_params.batch_size, train_params.max_train_minutes
    )
    if train_params.strategy != "one" and train_params.mode != "full":
        raise ValueError(
            f"train.strategy {train_params.strategy} distributes the network's training (train.mode full); "
            f"train.mode {train_params.mode} trains a head on cached features in seconds: use train.strategy one"
        )
    start = describe_weights(model_params.weights)
    if start == MORPHOLOGY and train_params.mode != "head":
        raise ValueError(
            f"the morphology start has no weights to train: use train.mode head, not {train_params.mode!r}"
        )
    if start == SCRATCH and train_params.mode != "full":
        raise ValueError(
            f"the {SCRATCH} start is a CNN with fresh weights: use train.mode full, not {train_params.mode!r}"
        )
    if is_fused(start):
        parts = fused_parts(start)
        if sorted(parts) != sorted({MORPHOLOGY, SCRATCH}):
            raise ValueError(f"weights {start!r}: a fused start is {MORPHOLOGY}+{SCRATCH} (each once)")
        if model_params.average_orientations:
            raise ValueError(
                f"the fused start {start} is orientation-invariant already (its CNN averages its features "
                "over the 8 views): set model.average_orientations false"
            )
        if train_params.mode != "head":
            raise ValueError(
                f"the fused start {start} trains its CNN first, then a head on both feature sources: "
                f"use train.mode head, not {train_params.mode!r}"
            )
    if SCRATCH in fused_parts(start):
        ScratchParams.from_dict(model_params.scratch)  # unknown settings named before any work
    return start


def features_cache_file(cache_dir: Path, dataset_key: str, start: str, image_size: int, crop: float) -> Path:
    """Where head mode caches a start's backbone features of a dataset (``dataset_key``: its
    fingerprint) at a size and crop."""
    if start == MORPHOLOGY:
        from galaxylib.modeling.morphology import VERSION

        start = f"morphology-v{VERSION}"  # the measurements are code, not weights
    tag = "".join(c if c.isalnum() or c in "-_." else "-" for c in start)
    return cache_dir / "features" / f"{dataset_key[:16]}_{tag}_{image_size}px_crop{crop:.3f}.npy"


def describe_architecture(start: str, mode: str, scratch: ScratchParams | None = None) -> str:
    if start == MORPHOLOGY:
        return f"morphology measurements + MLP head ({mode} training)"
    if SCRATCH in fused_parts(start):
        cnn = f"small CNN from scratch ({scratch.size} px, {'-'.join(map(str, scratch.filters))} filters)"
        if is_fused(start):
            return f"morphology measurements + {cnn}, averaged over 8 orientations, + MLP head"
        return f"{cnn} + MLP head ({mode} training)"
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

    from galaxylib.modeling.distribute import make_placement
    from galaxylib.modeling.head import feature_views, mean_over_views, train_head, view_features
    from galaxylib.modeling.orientation import with_orientation_average
    from galaxylib.modeling.precision import as_float32, precision_policy, use_mixed_precision

    start = check_mode(model_params, train_params)
    placement = make_placement(  # first: splitting the CPU must come before TensorFlow starts its devices
        train_params.strategy, train_params.cpu_devices, train_params.batch_size, train_params.max_train_minutes
    )
    keras.utils.set_random_seed(int(train_params.seed))
    mixed = use_mixed_precision(train_params.mixed_precision) and train_params.mode != "head"
    scratch = ScratchParams.from_dict(model_params.scratch) if SCRATCH in fused_parts(start) else None
    cnn_history: dict[str, list[float]] = {}
    backbone = None
    if is_fused(start):  # the CNN learns from the labelled galaxies first; the head reads it frozen
        from galaxylib.modeling.scratch_cnn import fit_scratch_cnn, fused_backbone, weights_digest

        size = int(model_params.image_size)
        cnn = fit_scratch_cnn(size, scratch, train_params, images, labels, split, n_classes)
        cnn_history = cnn.history
        backbone = fused_backbone(size, fused_parts(start), cnn)
        start_key = f"{start}-{weights_digest(cnn.layers)}"  # the feature cache belongs to these weights
    else:
        start_key = start
    with precision_policy(mixed):
        with placement.strategy.scope():
            model = build_model(model_params, n_classes, weights_cache=cache_dir / "weights", backbone=backbone)
        train_features = feature_rows = None
        if train_params.mode == "full":
            history = train_model(
                model, images, labels, split, train_params, n_classes, on_epoch=on_epoch, placement=placement
            )
        else:
            features = view_features(
                model,
                images,
                show_progress=show_progress,
                cache_file=features_cache_file(cache_dir, dataset_key, start_key, model_params.image_size, crop),
                views=feature_views(start),
            )
            history = train_head(model, features, labels, split, train_params, n_classes, on_epoch=on_epoch)
            history = {**history, **cnn_history}
            if train_params.mode == "finetune":
                compile_model(model, model_params.learning_rate)  # the head's weights stay as trained
                head_history = {f"head_{k}": v for k, v in history.items()}
                history = {
                    **train_model(model, images, labels, split, train_params, n_classes, on_epoch=on_epoch),
                    **head_history,
                }
            else:  # a frozen backbone's features are the cached ones
                feature_rows = np.asarray(split.train)
                if len(feature_rows) > OOD_TRAIN_ROWS:
                    rng = np.random.default_rng(int(train_params.seed))
                    feature_rows = np.sort(rng.choice(feature_rows, OOD_TRAIN_ROWS, replace=False))
                train_features = mean_over_views(features, feature_rows)
    if mixed:
        model = as_float32(model)  # what is saved, exported and served
    if model_params.average_orientations:
        model = with_orientation_average(model)
    return TrainedClassifier(
        model=model,
        history=history,
        start=start,
        architecture=describe_architecture(start, train_params.mode, scratch),
        strategy=placement.name,
        replicas=placement.replicas,
        train_features=train_features,
        feature_rows=feature_rows,
        mixed_precision=mixed,
    )
