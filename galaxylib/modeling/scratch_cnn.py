"""A small CNN learned from the user's own galaxies, and the fused backbone that sets its
features beside the morphology measurements.

ImageNet filters look for edges in sharp photographs; SDSS cutouts are small and blurry, and on
``../shared/gz1_coarse`` a head on ImageNet features loses to the 94 morphology measurements. A
network trained from scratch on the labelled galaxies themselves can learn what the
measurements miss (spiral arms above all); whether a head reading both beats the measurements
alone is measured by ``bench/cv_fused.py`` (docs/training.md, "A CNN beside the measurements").
Sized for a CPU: each image is averaged down to ``size`` px (64 by default) and standardised
(its own mean and spread) before four blocks of two 3x3 convolutions, so 3,000 galaxies train
in minutes on 2 cores.

- ``weights: scratch-small``: this CNN alone, trained end to end (``train.mode full``).
- ``weights: morphology+scratch-small``: first the CNN trains end to end with a softmax of its
  own (``fit_scratch_cnn``); then it is frozen and ``fused_backbone`` puts its pooled
  features, averaged over the 8 rotations and flips inside the graph, beside the 94
  measurements in one layer, ``fused_features``, which the head reads (``train.mode head``).

Every layer is plain Keras, so the fused model saves, exports to one TFLite file and serves
like any other. The CNN's layers sit in the top-level model (not nested), so Grad-CAM can read
its last feature map, ``cnn_activation``.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

SCRATCH = "scratch-small"
FUSED_SEPARATOR = "+"
CNN_MAP = "cnn_activation"  # the CNN's last feature map, activated: what Grad-CAM reads
CNN_POOL = "cnn_pool"  # its pooled features
CNN_VIEWS = "cnn_views"  # the 8 views of the image, made in the graph for the CNN branch
CNN_VIEW_MEAN = "cnn_view_mean"  # the CNN features averaged over them


@dataclass
class ScratchParams:
    """The CNN's shape and its own training (``model.scratch`` in a config)."""

    size: int = 64  # px the CNN sees: the model's image averaged down by image_size // size
    filters: list[int] = field(default_factory=lambda: [24, 48, 72, 96])
    dropout: float = 0.3  # before its own softmax, in its own training
    epochs: int = 25
    batch_size: int = 64
    learning_rate: float = 3e-3  # Adam, cosine decay to 0 over the epochs

    @classmethod
    def from_dict(cls, params: dict[str, Any] | None) -> ScratchParams:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(params or {}) - names)
        if unknown:
            raise ValueError(
                f"model.scratch: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        return cls(**(params or {}))


def fused_parts(start: str) -> list[str]:
    """The feature sources of a start: ``morphology+scratch-small`` -> both; one name -> itself."""
    return [part.strip() for part in str(start).split(FUSED_SEPARATOR)]


def is_fused(start: str) -> bool:
    return len(fused_parts(start)) > 1


def _pool_factor(image_size: int, params: ScratchParams) -> int:
    size = int(params.size)
    if size < 16 or image_size % size:
        raise ValueError(
            f"model.scratch.size {size} must be at least 16 and divide image_size {image_size} "
            f"(the CNN sees the image averaged down by a whole factor)"
        )
    return image_size // size


def downsample_layer(image_size: int, params: ScratchParams):
    """The box filter from the model's size to the CNN's (None when they are equal): exact in
    TFLite, and it averages the noise down instead of aliasing it."""
    import keras

    factor = _pool_factor(image_size, params)
    return keras.layers.AveragePooling2D(factor, name="cnn_downsample") if factor > 1 else None


def downsampled(images: np.ndarray, factor: int, out: np.ndarray, chunk: int = 512) -> np.ndarray:
    """(N, s, s, 3) uint8 -> ``out`` (N, s/f, s/f, 3) uint8: the means of f x f blocks, as
    ``cnn_downsample`` computes them, rounded to the nearest level (at most half a level from
    the served input, far below the sky noise), a chunk at a time from the memory map."""
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start : start + chunk], np.float32)
        n, s = len(block), block.shape[1] // factor
        means = block.reshape(n, s, factor, s, factor, 3).mean(axis=(2, 4))
        out[start : start + n] = np.clip(np.rint(means), 0, 255).astype(np.uint8)
    return out


@functools.cache
def _standardise_layer():
    """The layer class, defined (and registered for loading) once, on first use."""
    import keras

    @keras.saving.register_keras_serializable(package="galaxylib")
    class PerImageStandardise(keras.layers.Layer):
        """Each image minus its own mean, over its own standard deviation (all pixels and bands).

        SDSS galaxies differ in brightness by far more than in shape; the CNN should see the
        shape. ``floor`` (in units of the 0..255 scale) keeps a blank image from being blown up."""

        def __init__(self, floor: float = 5.0, **kwargs):
            super().__init__(**kwargs)
            self.floor = float(floor)

        def call(self, images):
            from keras import ops

            mean = ops.mean(images, axis=(1, 2, 3), keepdims=True)
            std = ops.sqrt(ops.mean(ops.square(images - mean), axis=(1, 2, 3), keepdims=True))
            return (images - mean) / (std + self.floor)

        def get_config(self):
            return {**super().get_config(), "floor": self.floor}

    return PerImageStandardise


def cnn_layers(params: ScratchParams, pool_name: str = CNN_POOL) -> list:
    """The CNN as a chain of layers: image at ``params.size`` px (0..255) -> pooled features
    (``pool_name``)."""
    import keras

    layers: list = [_standardise_layer()(name="cnn_standardise")]
    last = len(params.filters) - 1
    for b, width in enumerate(params.filters):
        for c in range(2):
            layers += [
                keras.layers.Conv2D(int(width), 3, padding="same", use_bias=False, name=f"cnn_b{b}_conv{c}"),
                keras.layers.BatchNormalization(momentum=0.9, name=f"cnn_b{b}_bn{c}"),
            ]
            final = b == last and c == 1
            layers.append(keras.layers.Activation("relu", name=CNN_MAP if final else f"cnn_b{b}_relu{c}"))
        if b != last:
            layers.append(keras.layers.MaxPooling2D(2, name=f"cnn_b{b}_pool"))
    layers.append(keras.layers.GlobalAveragePooling2D(name=pool_name))
    return layers


def chain(layers: list, x):
    for layer in layers:
        x = layer(x)
    return x


def build_scratch_backbone(image_size: int, params: ScratchParams):
    """The CNN alone as a backbone: image -> pooled features (its last layer is named
    ``avg_pool``, the name every head and export looks for)."""
    import keras

    from galaxylib.modeling.layer_names import FEATURES_LAYER

    inputs = keras.Input((image_size, image_size, 3), name="image")
    layers = cnn_layers(params, pool_name=FEATURES_LAYER)
    pool = downsample_layer(image_size, params)
    return keras.Model(inputs, chain([pool] * (pool is not None) + layers, inputs), name="scratch_small")


@dataclass
class TrainedCNN:
    layers: list  # the chain image -> cnn_pool, trained and frozen
    classifier: Any  # keras.Model at ``size`` px: the chain + its own softmax
    size: int  # px the CNN reads
    history: dict[str, list[float]]


def fit_scratch_cnn(
    image_size: int,
    params: ScratchParams,
    train_params,
    images: np.ndarray,
    labels: np.ndarray,
    split,
    n_classes: int,
) -> TrainedCNN:
    """Train the CNN end to end with a softmax of its own (the kit's augmentation, balance and
    epoch chosen on the validation loss, ``train_model``). The fused head reads its pooled
    features; its own softmax is kept only for comparison (bench/cv_fused.py)."""
    import dataclasses

    import keras

    from galaxylib.modeling.training import train_model

    keras.utils.set_random_seed(int(train_params.seed))
    factor = _pool_factor(image_size, params)
    layers = cnn_layers(params)
    inputs = keras.Input((params.size, params.size, 3), name="image")
    x = keras.layers.Dropout(float(params.dropout), name="cnn_dropout")(chain(layers, inputs))
    out = keras.layers.Dense(n_classes, activation="softmax", name="cnn_probabilities")(x)
    model = keras.Model(inputs, out, name="scratch_cnn_classifier")
    # train_model reads the optimizer's type and learning rate (its cosine schedule starts there)
    model.compile(optimizer=keras.optimizers.Adam(float(params.learning_rate)), loss="sparse_categorical_crossentropy")
    cnn_train = dataclasses.replace(
        train_params,
        mode="full",
        epochs=int(params.epochs),
        batch_size=int(params.batch_size),
        lr_schedule="cosine",
        patience=int(params.epochs),  # the schedule runs out; the epoch with the lowest val loss is kept
        max_train_minutes=0,
        augment_zoom=0.0,
        augment_brightness=0.0,  # the CNN standardises each image: a shift only clips the faint sky
        strategy="one",
    )
    print(
        f"CNN from scratch: {sum(int(np.prod(w.shape)) for w in model.trainable_weights):,} weights, "
        f"{params.size} px, up to {params.epochs} epochs on {len(split.train):,} images"
    )
    with tempfile.TemporaryDirectory(prefix="galaxy-cnn-") as tmp:
        # it trains on the images box-averaged to its size once, not every step: a quarter of the
        # pixels to read and augment at 64 px from 128; a memory map, so memory stays flat
        small = images
        if factor > 1:
            shape = (len(images), params.size, params.size, 3)
            small = np.lib.format.open_memmap(Path(tmp) / "images.npy", mode="w+", dtype=np.uint8, shape=shape)
            downsampled(images, factor, small)
        history = train_model(model, small, labels, split, cnn_train, n_classes)
        del small
    for layer in layers:
        layer.trainable = False
    return TrainedCNN(layers, model, int(params.size), {f"cnn_{k}": v for k, v in history.items()})


def fused_backbone(image_size: int, parts: list[str], trained_cnn: TrainedCNN | None):
    """One backbone for several feature sources, side by side in the layer ``fused_features``.

    The morphology measurements read the image once (they are orientation-invariant); the CNN
    reads its 8 rotations and flips and its pooled features are averaged over them, so the whole
    backbone is invariant. Each source is standardised by the head (``model.feature_norm``)."""
    import keras

    from galaxylib.modeling.layer_names import FUSED_FEATURES, MORPHOLOGY
    from galaxylib.modeling.morphology import build_morphology
    from galaxylib.modeling.orientation import view_layers

    inputs = keras.Input((image_size, image_size, 3), name="image")
    outputs = []
    for part in parts:
        if part == MORPHOLOGY:
            outputs.append(chain(build_morphology(image_size).layers[1:], inputs))
        elif part == SCRATCH:
            if trained_cnn is None:
                raise ValueError("the fused backbone's CNN must be trained first (fit_scratch_cnn)")
            views_layer, mean_layer = view_layers()
            pool = downsample_layer(image_size, ScratchParams(size=trained_cnn.size))
            x = pool(inputs) if pool is not None else inputs  # the views are made of the small image
            views = views_layer(name=CNN_VIEWS)(x)
            outputs.append(mean_layer(name=CNN_VIEW_MEAN)(chain(trained_cnn.layers, views)))
        else:
            raise ValueError(
                f"feature source {part!r}: a fused start combines {MORPHOLOGY} and {SCRATCH} "
                f"(model.weights {MORPHOLOGY}{FUSED_SEPARATOR}{SCRATCH})"
            )
    fused = keras.layers.Concatenate(name=FUSED_FEATURES)(outputs)
    return keras.Model(inputs, fused, name="fused")


def register() -> None:
    """Make the CNN's own layer known to Keras, so that ``load_model`` can rebuild the model."""
    _standardise_layer()


def weights_digest(layers: list) -> str:
    """A short hash of trained layers' weights: keys head mode's feature cache for a fused start."""
    from galaxylib.files import sha256_bytes

    weights = [np.asarray(w.numpy(), np.float32).tobytes() for layer in layers for w in layer.weights]
    return sha256_bytes(b"".join(weights))[:12]
