"""Inputs a galaxy classifier should not answer, for choosing and judging its OOD check.

Each case is a uint8 (N, 256, 256, 3) stack, the form of a Galaxy10 cutout, so it goes through
the artifact's own preprocessing like any user's file:
- far out of distribution, which the check must flag: real photos that are not astronomical
  (scikit-image's sample images), blank and constant frames, Gaussian noise, and star fields
  with no galaxy (the synthetic renderer's sky, noise and stars);
- shifted versions of the in-distribution cutouts, reported: the galaxy far off-centre,
  saturated, clipped and inverted.
The photos come in two disjoint halves: ``selection`` chooses the OOD method on validation,
``evaluation`` judges it on test, so no photo scores the method that was chosen on it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIZE = 256
FAR_OOD = ("photos", "blank", "noise", "star_fields")
SHIFTED = ("off_centre", "saturated", "clipped", "inverted")
# scikit-image's bundled samples that are not astronomical (hubble_deep_field and moon are left out)
PHOTOS = {
    "selection": ("astronaut", "brick", "chelsea", "clock", "coins", "grass", "horse", "logo", "page", "rocket"),
    "evaluation": (
        "camera",
        "checkerboard",
        "coffee",
        "colorwheel",
        "gravel",
        "immunohistochemistry",
        "microaneurysms",
        "retina",
        "text",
        "cell",
    ),
}


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def photos(half: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random square crops of one half's photos (see ``random_crops``)."""
    import skimage.data

    return random_crops([_rgb(getattr(skimage.data, name)()) for name in PHOTOS[half]], n, rng)


def random_crops(sources: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random square crops (a third to all of the short side) of RGB images, in turn, at 256 px."""
    out = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    for i in range(n):
        image = _rgb(sources[i % len(sources)])
        h, w = image.shape[:2]
        side = int(rng.uniform(0.35, 1.0) * min(h, w))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = Image.fromarray(image[y : y + side, x : x + side]).resize((SIZE, SIZE), Image.BILINEAR)
        out[i] = np.asarray(crop)
    return out


def blank_frames(n: int, rng: np.random.Generator) -> np.ndarray:
    """Constant frames: black, white, and random greys and colours."""
    colours = rng.integers(0, 256, size=(n, 3))
    colours[0::4] = 0
    colours[1::4] = 255
    colours[2::4] = colours[2::4, :1]  # greys
    return np.broadcast_to(colours[:, None, None, :], (n, SIZE, SIZE, 3)).astype(np.uint8)


def gaussian_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    means = rng.uniform(20, 230, size=(n, 1, 1, 1))
    sigmas = rng.uniform(5, 80, size=(n, 1, 1, 1))
    return np.clip(rng.normal(means, sigmas, size=(n, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)


def star_fields(n: int, rng: np.random.Generator) -> np.ndarray:
    from galaxylib.data.synthetic import render_star_field

    return np.stack([render_star_field(rng, SIZE) for _ in range(n)])


def off_centre(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each cutout moved 30-40 % of its width in a random direction, the gap filled with its sky."""
    out = np.empty_like(images)
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        angle = rng.uniform(0, 2 * np.pi)
        shift = rng.uniform(0.30, 0.40) * w
        dy, dx = int(round(shift * np.sin(angle))), int(round(shift * np.cos(angle)))
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
        out[i] = np.median(border, axis=0).astype(np.uint8)
        ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
        xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        out[i][yd, xd] = image[ys, xs]
    return out


def saturated(images: np.ndarray) -> np.ndarray:
    """Four times too bright: most of the galaxy burnt out at 255."""
    return np.clip(images.astype(np.float32) * 4, 0, 255).astype(np.uint8)


def clipped(images: np.ndarray) -> np.ndarray:
    """Hard black and white points at each image's 50th and 90th percentiles: a flat silhouette."""
    x = images.astype(np.float32)
    lo = np.percentile(x, 50, axis=(1, 2, 3), keepdims=True)
    hi = np.maximum(np.percentile(x, 90, axis=(1, 2, 3), keepdims=True), lo + 1)
    return np.clip((x - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)


def inverted(images: np.ndarray) -> np.ndarray:
    return (255 - images).astype(np.uint8)


def far_ood_cases(n: int, seed: int, half: str) -> dict[str, np.ndarray]:
    """The four far-OOD cases, ``n`` images each, from a seeded generator."""
    rng = np.random.default_rng([seed, 0 if half == "selection" else 1])
    return {
        "photos": photos(half, n, rng),
        "blank": blank_frames(n, rng),
        "noise": gaussian_noise(n, rng),
        "star_fields": star_fields(n, rng),
    }


def shifted_cases(images: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The four shifted versions of in-distribution cutouts (uint8 (N, H, W, 3))."""
    rng = np.random.default_rng([seed, 2])
    return {
        "off_centre": off_centre(images, rng),
        "saturated": saturated(images),
        "clipped": clipped(images),
        "inverted": inverted(images),
    }
