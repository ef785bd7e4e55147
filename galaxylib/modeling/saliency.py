"""Grad-CAM saliency: which pixels pushed the model towards a class.

Computed on the artifact's Keras model (``model.keras``), because LiteRT cannot
take gradients; the class itself always comes from the ``Predictor`` (TFLite), so
the map explains the answer that every other entry point gives. TensorFlow is
imported lazily: importing this module stays cheap.

Grad-CAM (Selvaraju et al. 2017): weight each channel of the last convolutional
feature map by the mean gradient of the class score, sum, keep the positive part.
In EfficientNetB0 that map is ``top_activation`` (the activated ``top_conv``), in
EfficientNet-Lite ``head_activation``: ``image_size / 32`` pixels on a side, 7x7 at 224 px. The
morphology backbone (galaxylib/modeling/morphology.py) has no convolutions: its map is gradient
x input on its ``sky_subtracted`` image, at full resolution. A fused backbone (measurements beside
a small CNN, galaxylib/modeling/scratch_cnn.py) shows its CNN's map, ``cnn_activation``: the CNN
reads the 8 views of the image inside the graph, so its 8 maps are turned back and averaged;
how much of the answer came from the measurements is not shown. For an
orientation-averaged model (galaxylib/orientation.py) the map is the mean of the
network's maps for the 8 views, each turned back to the input's orientation.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# The last convolutional feature map, activated: EfficientNetB0's, then EfficientNet-Lite's;
# for the morphology backbone, the sky-subtracted image its measurements read.
# For a fused backbone, its CNN's last map (it comes before the measurements' image).
FEATURE_MAP_LAYERS = ("top_activation", "head_activation", "cnn_activation", "sky_subtracted")
DEFAULT_COLORMAP = "turbo"


class SaliencyError(RuntimeError):
    """The Keras model cannot give a Grad-CAM map (e.g. it has no such layer)."""


class GradCam:
    """Grad-CAM for one Keras classifier; the gradient model is built once and reused."""

    def __init__(self, model, layer_name: str | None = None):
        import keras

        from galaxylib.modeling.orientation import inner_network

        self.model = model
        network = inner_network(model)
        self.averages_orientations = network is not None
        model = network if network is not None else model
        names = {layer.name for layer in model.layers}
        layer_name = layer_name or next((n for n in FEATURE_MAP_LAYERS if n in names), FEATURE_MAP_LAYERS[0])
        self.layer_name = layer_name
        try:
            layer = model.get_layer(layer_name)
        except ValueError as exc:
            raise SaliencyError(f"the model has no layer named {layer_name!r} for Grad-CAM") from exc
        if len(layer.output.shape) != 4:
            raise SaliencyError(f"layer {layer_name!r} is not a convolutional feature map")
        self.image_size = int(model.input_shape[1])
        # An image-like map (the morphology backbone's 3 colours) gets gradient x input per pixel:
        # Grad-CAM's one weight per channel would only re-colour the galaxy's own light.
        self.per_pixel = int(layer.output.shape[-1]) <= 3
        # a map made from the 8 views of the image inside the graph (a fused backbone's CNN)
        self.map_has_views = layer_name == "cnn_activation" and "cnn_views" in names
        # One forward pass gives both the feature map and the class probabilities.
        self._grad_model = keras.Model(model.inputs, [layer.output, model.outputs[0]])

    @property
    def map_size(self) -> tuple[int, int]:
        """The feature map's (height, width): the heat map's real resolution."""
        shape = self._grad_model.outputs[0].shape
        return int(shape[1]), int(shape[2])

    def heatmaps(self, batch: np.ndarray, class_indices: list[int] | np.ndarray) -> np.ndarray:
        """Model inputs (N, size, size, 3) and a class per image -> (N, h, w) maps in [0, 1].

        A map that is zero everywhere means no positive evidence for that class.
        """
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"expected (N, {self.image_size}, {self.image_size}, 3), got {batch.shape}")
        classes = np.asarray(class_indices, dtype=np.int32).reshape(-1)
        if len(classes) != len(batch):
            raise ValueError(f"got {len(batch)} images but {len(classes)} class indices")
        if len(batch) == 0:
            h, w = self.map_size
            return np.zeros((0, h, w), np.float32)
        if self.averages_orientations:
            from galaxylib.modeling.orientation import N_VIEWS, view_maps_back

            views = self.model.get_layer("orientation_views")(batch)
            cams = self._cams(views, np.tile(classes, N_VIEWS))
            cams = view_maps_back(cams.reshape(N_VIEWS, len(batch), *cams.shape[1:])).mean(axis=0)
        elif self.map_has_views:  # (8N, h, w), view-major: each turned back, then averaged
            from galaxylib.modeling.orientation import N_VIEWS, view_maps_back

            cams = self._cams(batch, classes)
            cams = view_maps_back(cams.reshape(N_VIEWS, len(batch), *cams.shape[1:])).mean(axis=0)
        else:
            cams = self._cams(batch, classes)
        peaks = cams.reshape(len(cams), -1).max(axis=1)[:, None, None]
        return np.divide(cams, peaks, out=np.zeros_like(cams), where=peaks > 0)  # each peak is exactly 1

    def _cams(self, batch, classes: np.ndarray) -> np.ndarray:
        """Unnormalised Grad-CAM maps of the (inner) network, one per image."""
        import tensorflow as tf

        x = tf.convert_to_tensor(batch)
        with tf.GradientTape() as tape:
            # Watch the input: a feature map with no trained weights upstream (the morphology
            # backbone's) is otherwise not recorded, and its gradient comes back None.
            tape.watch(x)
            features, probs = self._grad_model(x, training=False)
            # Images are independent in inference mode, so one summed score gives every
            # image's own gradient in a single backward pass.
            score = tf.reduce_sum(tf.gather(probs, classes, axis=1, batch_dims=1))
        grads = tape.gradient(score, features)
        if self.per_pixel:
            return tf.nn.relu(tf.reduce_sum(grads * features, axis=-1)).numpy().astype(np.float32)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        return tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)).numpy().astype(np.float32)


def upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) map -> (height, width) with smooth bilinear interpolation, still in [0, 1]."""
    width, height = size
    img = Image.fromarray(np.asarray(cam, dtype=np.float32), mode="F")
    return np.clip(np.asarray(img.resize((width, height), Image.Resampling.BILINEAR)), 0.0, 1.0)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.6, colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """Blend a heat map over a uint8 RGB image; where the map is 0 the galaxy shows unchanged."""
    from matplotlib import colormaps

    image = np.asarray(image, dtype=np.uint8)
    heat_map = upsample(cam, (image.shape[1], image.shape[0]))
    heat = colormaps[colormap](heat_map)[..., :3] * 255.0
    weight = (alpha * heat_map)[..., None]  # weak evidence barely tints the galaxy
    blended = image.astype(np.float32) * (1.0 - weight) + heat * weight
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)
