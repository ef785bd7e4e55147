"""A backbone of classical morphology measurements, computed inside the Keras graph.

On real SDSS galaxies (``../shared/gz1_coarse``) 94 measurements of the light distribution
classify Galaxy Zoo's coarse classes better than ImageNet features: in repeated 5-fold
cross-validation on the train and validation rows (bench/cv_real_heads.py) a small head on
them reached a balanced accuracy of 0.767 against 0.653 for pooled EfficientNet-Lite0
features, and adding the ImageNet features to them lowered it (docs/training.md, "Morphology measurements"). They are the quantities
morphologists have long used (Conselice 2003's concentration, asymmetry and clumpiness;
colour; the shape of the isophotes from second moments): SDSS cutouts are small and blurry,
and these measurements average over the noise where ImageNet's filters look for edges.

Both layers are plain ``keras.ops`` on the model's input (RGB, 0..255), so the measurements
are part of ``model.keras`` and of the TFLite export: LiteRT computes them without
TensorFlow, like any other backbone. Every measurement is invariant under the 8 rotations
and flips of the square (masks and grids are centred; the asymmetries compare a cutout with
its own rotation), so orientation averaging changes nothing and can stay off.

- ``SkySubtracted`` (layer ``sky_subtracted``): the image minus the mean of its border
  (radius > 0.9 of the half-width) per channel, clipped at 0. A 4-D map, so Grad-CAM can
  explain the classes at full resolution.
- ``MorphologyMeasurements`` (layer ``morphology``): the 94 numbers, in the order of
  ``MEASUREMENTS``.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
from keras import ops

# Bumped whenever a measurement changes: head mode's feature cache is keyed on it.
VERSION = 2

# Radii are fractions of the cutout's half-width.
SKY_RADIUS = 0.9
ANNULI = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.85, 1.0)
ASYMMETRY_RADII = (0.15, 0.3, 0.6)
CLUMPY_SCALES = (5, 11)  # box sizes in pixels at 224 px (3 and 7 at 128 px); below ~70 px the 5 becomes 1
CLUMPY_RADII = (0.3, 0.6)
MOMENT_RADIUS = 0.7
MOMENT_THRESHOLDS = (0.0, 0.1, 0.3, 0.6)  # fractions of the brightest pixel
CENTRE_RADIUS = 0.08
# The brightest point of the smoothed light in each ring, against the centre's: a companion
# or a clump shows as a high value. (A count of local maxima was tried and dropped: plateaus
# of equal values made it differ by one between TensorFlow and LiteRT.)
PEAK_RANGES = ((0.1, 0.25), (0.25, 0.5), (0.5, 0.8))
SMOOTH_BOX = 5
# Azimuthal Fourier modes of the light in each ring: m=1 lopsidedness (a companion, a tidal
# tail), m=2 ellipticity or a bar, m=3 and m=4 spiral arms; amplitudes, so orientation drops out.
FOURIER_RINGS = ((0.05, 0.15), (0.15, 0.3), (0.3, 0.45), (0.45, 0.6), (0.6, 0.8))
FOURIER_MODES = (1, 2, 3, 4)


def _names() -> tuple[str, ...]:
    names: list[str] = []
    for a, b in zip(ANNULI[:-1], ANNULI[1:]):
        names += [f"flux_fraction_r{a:g}-{b:g}", f"red_share_r{a:g}-{b:g}", f"blue_share_r{a:g}-{b:g}"]
    names += ["colour_red", "colour_green", "colour_blue"]
    for r in ASYMMETRY_RADII:
        names += [f"asymmetry180_r{r:g}", f"asymmetry90_r{r:g}", f"asymmetry180_smooth_r{r:g}"]
    names += [f"clumpiness_box{k}_r{r:g}" for k in CLUMPY_SCALES for r in CLUMPY_RADII]
    for t in MOMENT_THRESHOLDS:
        names += [f"axis_ratio_t{t:g}", f"log_size_t{t:g}", f"centroid_offset_t{t:g}", f"area_t{t:g}"]
    names += [f"ring_max_r{a:g}-{b:g}" for a, b in PEAK_RANGES]
    names += ["log_central_max", "log_total_flux", "log_sky_noise"]
    names += [f"fourier_m{m}_r{a:g}-{b:g}" for a, b in FOURIER_RINGS for m in FOURIER_MODES]
    return tuple(names)


MEASUREMENTS = _names()


def _radius(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) from the cutout's centre, and radius / half-width."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32) + 0.5 - size / 2
    return xx, yy, np.hypot(xx, yy) / (size / 2)


@functools.lru_cache(maxsize=8)
def _constants(size: int) -> dict[str, np.ndarray]:
    """The masks, grids and Fourier bases for one image size, built once (not per call: Grad-CAM
    and other eager calls run the layers again for every request)."""
    xx, yy, r = _radius(size)
    column = lambda m: m.reshape(-1, 1).astype(np.float32)  # noqa: E731
    theta = np.arctan2(yy, xx)
    fourier = []
    for a, b in FOURIER_RINGS:
        ring = ((r >= a) & (r < b)).astype(np.float32)
        basis = np.stack([ring] + [ring * f(m * theta) for m in FOURIER_MODES for f in (np.cos, np.sin)])
        fourier.append(basis.reshape(len(basis), -1).T.astype(np.float32))
    rings = np.stack([(r >= a) & (r < b) for a, b in zip(ANNULI[:-1], ANNULI[1:])]).astype(np.float32)
    return {
        "border": (r > SKY_RADIUS).astype(np.float32).reshape(1, size, size, 1),
        "rings": rings.reshape(len(rings), -1).T.copy(),  # (s*s, rings)
        "asymmetry": [column(r < radius) for radius in ASYMMETRY_RADII],
        "clumpy": [column(r < radius) for radius in CLUMPY_RADII],
        "moment": (r < MOMENT_RADIUS).astype(np.float32),
        "centre": (r < CENTRE_RADIUS).astype(np.float32),
        "peak_rings": [((r > a) & (r < b)).astype(np.float32) for a, b in PEAK_RANGES],
        "coords": np.stack(
            [xx.ravel(), yy.ravel(), xx.ravel() ** 2, yy.ravel() ** 2, (xx * yy).ravel()], axis=1
        ).astype(np.float32),
        "fourier": fourier,
    }


def _box(size: int, box: int) -> int:
    """A box size in pixels at 224 px, scaled to this size and kept odd (a centred box)."""
    k = max(1, int(round(box * size / 224)))
    return k if k % 2 else k + 1


@keras.saving.register_keras_serializable(package="galaxylib")
class SkySubtracted(keras.layers.Layer):
    """(N, s, s, 3) -> the same, minus each channel's mean over the border, clipped at 0."""

    def call(self, images):
        border = _constants(int(images.shape[1]))["border"]
        sky = ops.sum(images * border, axis=(1, 2), keepdims=True) / float(border.sum())
        return ops.relu(images - sky)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="galaxylib")
class MorphologyMeasurements(keras.layers.Layer):
    """A sky-subtracted (N, s, s, 3) image -> (N, 94) measurements (``MEASUREMENTS``)."""

    def call(self, x):
        size = int(x.shape[1])
        const = _constants(size)
        flat = lambda a: ops.reshape(a, (-1, size * size))  # noqa: E731
        lum = ops.sum(x, axis=-1)  # (N, s, s)
        lum_flat = flat(lum)
        total = ops.sum(lum_flat, axis=1) + 1e-3
        masked_sum = lambda a, m: ops.matmul(flat(a), m)[:, 0]  # noqa: E731  (m: a (s*s, 1) mask)
        out = []

        rings = const["rings"]
        ring_lum = ops.matmul(lum_flat, rings)
        ring_red = ops.matmul(flat(x[..., 0]), rings)
        ring_blue = ops.matmul(flat(x[..., 2]), rings)
        for i in range(rings.shape[1]):
            out += [
                ring_lum[:, i] / total,
                (ring_red[:, i] + 1) / (ring_lum[:, i] + 3),
                (ring_blue[:, i] + 1) / (ring_lum[:, i] + 3),
            ]
        for c in range(3):
            out.append(ops.log((ops.sum(flat(x[..., c]), axis=1) + 1) / (total / 3 + 1)))

        smooth = self._box_mean(lum, _box(size, SMOOTH_BOX))
        rot180 = ops.flip(lum, axis=(1, 2))
        rot90 = ops.flip(ops.transpose(lum, (0, 2, 1)), axis=1)
        smooth180 = ops.flip(smooth, axis=(1, 2))
        for m in const["asymmetry"]:
            den = masked_sum(lum, m) + 1
            out += [
                masked_sum(ops.abs(lum - rot180), m) / den,
                masked_sum(ops.abs(lum - rot90), m) / den,
                masked_sum(ops.abs(smooth - smooth180), m) / den,
            ]
        for box in CLUMPY_SCALES:
            residual = ops.relu(lum - self._box_mean(lum, _box(size, box)))
            for m in const["clumpy"]:
                out.append(masked_sum(residual, m) / (masked_sum(lum, m) + 1))

        w = lum * const["moment"]
        w_max = ops.max(flat(w), axis=1)[:, None, None]
        for t in MOMENT_THRESHOLDS:
            above = ops.cast(w > t * w_max, "float32")
            out += self._moments(w * above, const["coords"], size)
            out.append(ops.mean(flat(above), axis=1))

        centre_max = ops.max(flat(smooth * const["centre"]), axis=1) + 1
        for ring in const["peak_rings"]:
            out.append(ops.max(flat(smooth * ring), axis=1) / centre_max)
        out.append(ops.log(centre_max))
        out.append(ops.log(total))
        border = const["border"]
        n_border = float(border.sum())
        mean = ops.sum(x * border, axis=(1, 2)) / n_border
        var = ops.relu(ops.sum(ops.square(x) * border, axis=(1, 2)) / n_border - ops.square(mean))
        out.append(ops.log(ops.mean(ops.sqrt(var + 1e-6), axis=1) + 1))
        for basis in const["fourier"]:
            proj = ops.matmul(lum_flat, basis)
            for i in range(len(FOURIER_MODES)):
                out.append(
                    ops.sqrt(ops.square(proj[:, 1 + 2 * i]) + ops.square(proj[:, 2 + 2 * i]) + 1e-6) / (proj[:, 0] + 1)
                )
        return ops.stack(out, axis=1)

    @staticmethod
    def _box_mean(lum, box: int):
        return ops.average_pool(lum[..., None], box, strides=1, padding="same")[..., 0]

    @staticmethod
    def _moments(w, coords: np.ndarray, size: int) -> list:
        """Axis ratio, log size and centroid offset of the light ``w`` (second moments)."""
        flat = ops.reshape(w, (-1, size * size))
        weight = ops.sum(flat, axis=1) + 1e-3
        m = ops.matmul(flat, coords) / weight[:, None]
        mx, my = m[:, 0], m[:, 1]
        sxx, syy, sxy = m[:, 2] - mx * mx, m[:, 3] - my * my, m[:, 4] - mx * my
        half_trace = (sxx + syy) / 2
        spread = ops.sqrt(ops.square((sxx - syy) / 2) + ops.square(sxy) + 1e-12)
        major = ops.maximum(half_trace + spread, 1e-3)
        minor = ops.maximum(half_trace - spread, 1e-3)
        return [ops.sqrt(minor / major), ops.log(major + 1), ops.sqrt(mx * mx + my * my + 1e-12) / size]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], len(MEASUREMENTS))


def build_morphology(image_size: int) -> keras.Model:
    """The morphology backbone: image (0..255) -> ``sky_subtracted`` -> ``morphology`` (94)."""
    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="image")
    sky = SkySubtracted(name="sky_subtracted")(inputs)
    return keras.Model(inputs, MorphologyMeasurements(name="morphology")(sky), name="morphology")
