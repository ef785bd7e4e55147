"""Orientation averaging: the classifier answers for all 8 rotations and flips of a cutout.

A galaxy has no preferred orientation. Training shows each image in one random orientation
of the 8, so after a short run the network is only roughly invariant, and averaging its 8
answers is more accurate than any one of them (docs/training.md has the figures). The
averaging is built into the saved model (``with_orientation_average``), so ``model.keras``,
the TFLite export and every entry point give the same averaged answer. It costs 8 forward
passes per image.

The 8 views are every combination of a transpose and flips of the two image axes (the
symmetry group of the square). TensorFlow is imported lazily: importing this module stays
cheap, and the inverse map (for Grad-CAM) is plain NumPy.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

# (transpose, flip rows, flip columns), applied in that order; the first is the identity.
VIEWS: tuple[tuple[bool, bool, bool], ...] = tuple(itertools.product((False, True), repeat=3))
N_VIEWS = len(VIEWS)


def _apply(x, view: tuple[bool, bool, bool], transpose, flip):
    """One view, with the array library's own transpose and flip: NumPy here, Keras in the layer."""
    transposed, flip_rows, flip_cols = view
    if transposed:
        x = transpose(x)
    if flip_rows:
        x = flip(x, 1)
    if flip_cols:
        x = flip(x, 2)
    return x


def orient(images: np.ndarray, view: tuple[bool, bool, bool]) -> np.ndarray:
    """One of the 8 views of (N, s, s, C) images, in NumPy: what the model layer does per view."""
    out = _apply(np.asarray(images), view, lambda a: a.transpose(0, 2, 1, 3), np.flip)
    return np.ascontiguousarray(out)


def _inverse(view: tuple[bool, bool, bool]) -> tuple[bool, bool, bool]:
    """The view that undoes ``view``: after a transpose, a row flip undoes a column flip."""
    transposed, flip_rows, flip_cols = view
    return (True, flip_cols, flip_rows) if transposed else view


def view_maps_back(maps: np.ndarray) -> np.ndarray:
    """Per-view maps (8, N, h, w), each in its view's orientation -> the input's orientation."""
    maps = np.asarray(maps)
    if maps.ndim != 4 or len(maps) != N_VIEWS:
        raise ValueError(f"expected ({N_VIEWS}, N, h, w) maps, got {maps.shape}")
    return np.stack([orient(m[..., None], _inverse(view))[..., 0] for view, m in zip(VIEWS, maps)])


@functools.cache
def _layers():
    """The two layer classes, defined (and registered for loading) once, on first use."""
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="galaxylib")
    class OrientationViews(keras.layers.Layer):
        """(N, s, s, C) -> (8N, s, s, C): the 8 views of every image, view-major."""

        def call(self, images):
            transpose = lambda a: ops.transpose(a, (0, 2, 1, 3))  # noqa: E731
            return ops.concatenate([_apply(images, view, transpose, ops.flip) for view in VIEWS], axis=0)

        def compute_output_shape(self, input_shape):
            return (None, *input_shape[1:])

    @keras.saving.register_keras_serializable(package="galaxylib")
    class OrientationMean(keras.layers.Layer):
        """(8N, K) view-major -> (N, K): the mean over each image's 8 views."""

        def call(self, probs):
            return ops.mean(ops.reshape(probs, (N_VIEWS, -1, probs.shape[-1])), axis=0)

        def compute_output_shape(self, input_shape):
            return (None, input_shape[-1])

    return OrientationViews, OrientationMean


def view_layers() -> tuple:
    """The two layer classes (views, mean), for a model that averages part of itself over the
    8 orientations (galaxylib/modeling/scratch_cnn.py)."""
    return _layers()


def register() -> None:
    """Make the layers known to Keras, so that ``load_model`` can rebuild an averaged model."""
    _layers()


def with_orientation_average(network, output_names: tuple[str, ...] = ("orientation_mean",)):
    """Wrap a trained network: same input, each output averaged over the 8 orientations.

    A network with several outputs (the classifier with its pooled features, for the export)
    names one mean layer per output, in order."""
    import keras

    views_layer, mean_layer = _layers()
    size = network.input_shape[1:]
    if size[0] != size[1]:
        raise ValueError(f"orientation averaging needs square inputs, not {size[0]}x{size[1]}")
    inputs = keras.Input(size)
    outputs = network(views_layer(name="orientation_views")(inputs))
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    if len(outputs) != len(output_names):
        raise ValueError(f"the network has {len(outputs)} outputs but {len(output_names)} names were given")
    averaged = [mean_layer(name=name)(out) for name, out in zip(output_names, outputs)]
    return keras.Model(inputs, averaged if len(averaged) > 1 else averaged[0], name="orientation_averaged")


def inner_network(model):
    """The classifier inside an orientation-averaged model, or None for a plain one."""
    views_layer, _ = _layers()
    # by name: a fused backbone's CNN makes its own views in the graph (``cnn_views``) and holds no network
    if not any(isinstance(layer, views_layer) and layer.name == "orientation_views" for layer in model.layers):
        return None
    nested = [layer for layer in model.layers if hasattr(layer, "layers")]
    if len(nested) != 1:
        raise ValueError("an orientation-averaged model must hold exactly one network")
    return nested[0]
