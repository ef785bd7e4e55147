"""EfficientNetB0 transfer-learning classifier, as the design specifies.

Every choice is a parameter (``ModelParams``); ``configs/*.yaml`` set them.
TensorFlow is imported here, never on the inference path.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from galaxylib.classes import NUM_CLASSES as GALAXY10_CLASSES


class WeightsError(ValueError):
    pass


@dataclass
class ModelParams:
    image_size: int = 224
    weights: str = "imagenet"  # "imagenet" | "none" | path to an EfficientNetB0 (no top) weights file
    trainable_layers: int | str = 100  # the last N base layers train; "all" trains every layer
    freeze_batchnorm: bool = True  # BN layers stay in inference mode while fine-tuning
    dropout: float = 0.3
    dense_units: list[int] = field(default_factory=lambda: [256, 128, 64])
    learning_rate: float = 1e-5
    # BatchNormalization momentum; None keeps Keras' 0.99. Training from scratch on a
    # few thousand images needs ~0.9, or the moving statistics lag and val stays at chance.
    bn_momentum: float | None = None
    # EfficientNet's stochastic depth (Keras: 0.2, scaled per block). None keeps it;
    # 0 switches it off, which speeds up short from-scratch runs.
    drop_connect_rate: float | None = None
    # From scratch (weights "none") only, ignored otherwise: each residual block starts as the
    # identity (the last BatchNormalization of its branch has gamma 0), which speeds up the
    # first epochs of training (Goyal et al. 2017; docs/training.md).
    zero_init_residual: bool = False
    # The saved model averages its answer over the 8 rotations and flips of the input
    # (galaxylib/orientation.py): better accuracy for 8x the inference cost.
    average_orientations: bool = False

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> "ModelParams":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})


def resolve_weights(weights: str | None) -> str | None:
    """Map the ``weights`` parameter to what Keras accepts, with a clear error offline."""
    if weights is None or str(weights).lower() in ("none", "null", "random", ""):
        return None
    if str(weights).lower() == "imagenet":
        return "imagenet"
    path = Path(os.path.expanduser(str(weights)))
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist; use 'imagenet' (needs internet), 'none', "
            "or a path to EfficientNetB0 no-top weights (.h5 or .weights.h5)")
    return str(path)


def build_model(params: ModelParams, n_classes: int = GALAXY10_CLASSES):
    import keras

    weights = resolve_weights(params.weights)
    size = int(params.image_size)
    try:
        base = keras.applications.EfficientNetB0(
            include_top=False, weights=weights, input_shape=(size, size, 3), pooling="avg")
    except Exception as exc:  # urllib errors when 'imagenet' cannot be fetched offline
        if weights == "imagenet":
            raise WeightsError(
                "could not download the ImageNet weights for EfficientNetB0 "
                f"({type(exc).__name__}: {exc}). Offline, set weights to 'none' or to a local "
                "weights file (e.g. -p weights path/to/efficientnetb0_notop.h5)") from exc
        raise
    set_trainable_layers(base, params.trainable_layers, params.freeze_batchnorm)
    if params.drop_connect_rate is not None:
        blocks = [l for l in base.layers if isinstance(l, keras.layers.Dropout) and l.name.endswith("_drop")]
        for i, layer in enumerate(blocks):  # Keras scales the rate linearly with block depth
            layer.rate = float(params.drop_connect_rate) * (i + 1) / len(blocks)
    if params.zero_init_residual and weights is None:  # pretrained branches are kept as trained
        for layer in base.layers:
            if layer.name.endswith("_add"):  # blockNx_add joins the residual branch
                bn = base.get_layer(layer.name[:-len("add")] + "project_bn")
                if not bn.trainable:  # a zero gamma that never trains switches the block off for good
                    raise ValueError(
                        f"zero_init_residual needs trainable BatchNormalization, but {bn.name} is frozen "
                        "(set freeze_batchnorm: false and trainable_layers: all, or zero_init_residual: false)")
                bn.gamma.assign(np.zeros(bn.gamma.shape, np.float32))
    if params.bn_momentum is not None:
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(params.bn_momentum)
    x = keras.layers.Dropout(params.dropout, name="head_dropout")(base.output)
    for i, units in enumerate(params.dense_units):
        x = keras.layers.Dense(int(units), activation="relu", name=f"head_dense_{i}")(x)
    outputs = keras.layers.Dense(int(n_classes), activation="softmax", name="probabilities")(x)
    model = keras.Model(base.input, outputs, name="galaxy_efficientnetb0")
    compile_model(model, params.learning_rate)
    return model


def set_trainable_layers(base, trainable_layers: int | str, freeze_batchnorm: bool) -> None:
    import keras

    n_layers = len(base.layers)
    n_trainable = n_layers if str(trainable_layers).lower() == "all" else int(trainable_layers)
    first = max(0, n_layers - n_trainable)
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= first
        if freeze_batchnorm and isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def compile_model(model, learning_rate: float) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=float(learning_rate)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )

