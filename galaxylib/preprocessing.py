"""The one preprocessing path: raw bytes, a file or an array -> model input.

Training, evaluation, predict.sh, the API and the dashboard all call
``load_image``/``preprocess_image``, so the same file gives the same tensor
everywhere. Keras' EfficientNet rescales inside the network and expects 0..255,
so nothing here rescales.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile

# A cutout is 256x256; 64 Mpx leaves room for big mosaics but refuses a
# 30000x30000 "bomb" from its header, before any pixel is decoded.
MAX_IMAGE_PIXELS = int(os.environ.get("GALAXY_MAX_IMAGE_PIXELS", 64_000_000))
ALLOWED_FORMATS = ("JPEG", "PNG")
ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

# Bumped whenever the mapping below changes; artifacts record it and refuse a mismatch.
CONTRACT_VERSION = 1

ImageSource = bytes | bytearray | str | os.PathLike | BinaryIO | np.ndarray | Image.Image


class ImageError(ValueError):
    """An input that cannot become a model input; ``code`` is stable for APIs."""

    code = "invalid_image"


class EmptyImageError(ImageError):
    code = "empty_file"


class UnsupportedImageError(ImageError):
    code = "unsupported_media_type"


class ImageTooLargeError(ImageError):
    code = "image_too_large"


def preprocessing_contract(image_size: int, crop: float = 1.0) -> dict:
    """What the artifact sidecar records, so a loader can refuse a mismatch."""
    return {
        "version": CONTRACT_VERSION,
        "input": "RGB, 8 bits per channel (greyscale/alpha/16-bit converted)",
        "crop": float(crop),
        "resize": f"central {crop * 100:g} % of each side, then PIL bilinear to {image_size}x{image_size} "
        "(skipped when the crop already has that size)",
        "dtype": "float32",
        "range": [0.0, 255.0],
        "normalisation": "none outside the model (EfficientNet rescales internally)",
        "image_size": int(image_size),
    }


def _read_bytes(source: ImageSource) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), ""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return path.read_bytes(), path.name
    if hasattr(source, "read"):
        return source.read(), str(getattr(source, "name", ""))
    raise TypeError(f"cannot read an image from {type(source).__name__}")


def _to_rgb8(img: Image.Image) -> Image.Image:
    """Greyscale, alpha, palette and 16-bit images all become 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        sky = Image.new("RGBA", rgba.size, (0, 0, 0, 255))  # transparent = empty black sky
        return Image.alpha_composite(sky, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def decode_image(source: ImageSource, name: str | None = None) -> Image.Image:
    """Decode and validate an uploaded or on-disk image into 8-bit RGB.

    Raises an ``ImageError`` subclass with a message fit to show a user
    (prefixed with ``name``, or the file's name, when known).
    """
    if isinstance(source, Image.Image):
        return _to_rgb8(source)
    if isinstance(source, np.ndarray):
        return Image.fromarray(_validate_array(source), "RGB")
    data, found = _read_bytes(source)
    try:
        return _decode(data)
    except ImageError as exc:
        label = name or found
        if label:
            raise type(exc)(f"{label}: {exc}") from exc.__cause__
        raise


def _decode(data: bytes) -> Image.Image:
    if not data:
        raise EmptyImageError("the file is empty")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"the image is over the limit of {MAX_IMAGE_PIXELS:,} pixels ({exc})") from exc
    except Exception as exc:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError...
        raise UnsupportedImageError("not a JPEG or PNG image") from exc
    if img.format not in ALLOWED_FORMATS:
        raise UnsupportedImageError(f"{img.format} images are not accepted; send JPEG or PNG")
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(f"{width}x{height} pixels is over the limit of {MAX_IMAGE_PIXELS:,} pixels")
    if width < 8 or height < 8:
        raise ImageError(f"{width}x{height} is too small to be a galaxy cutout")
    try:
        img.load()
    except Exception as exc:
        raise ImageError(f"the image data is truncated or corrupt ({exc})") from exc
    return _to_rgb8(img)


def _validate_array(arr: np.ndarray) -> np.ndarray:
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ImageError(f"expected an (H, W, 3) RGB array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ImageError(f"expected a uint8 array (as in Galaxy10_DECals.h5), got {arr.dtype}")
    return arr


def center_crop(img: Image.Image, crop: float) -> Image.Image:
    """Keep the central ``crop`` fraction of each side: the galaxy sits at the centre
    of a Galaxy10 cutout, so a crop spends the model's pixels on it."""
    if not 0.1 <= crop <= 1.0:
        raise ValueError(f"crop must be between 0.1 and 1, got {crop}")
    if crop >= 1.0:
        return img
    width, height = img.size
    cw, ch = max(1, round(width * crop)), max(1, round(height * crop))
    left, top = (width - cw) // 2, (height - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def preprocess_image(image: Image.Image | np.ndarray, image_size: int, crop: float = 1.0) -> np.ndarray:
    """Decoded image or uint8 (H, W, 3) array -> float32 (size, size, 3) in 0..255."""
    img = decode_image(image) if isinstance(image, np.ndarray) else _to_rgb8(image)
    img = center_crop(img, crop)
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def preprocess_uint8(image: Image.Image | np.ndarray, image_size: int, crop: float = 1.0) -> np.ndarray:
    """The same mapping as ``preprocess_image``, kept as uint8 for compact caches."""
    return preprocess_image(image, image_size, crop).astype(np.uint8)


def load_image(source: ImageSource, image_size: int, crop: float = 1.0) -> np.ndarray:
    """Bytes, a path, a stream or an array -> the model input for one image."""
    return preprocess_image(decode_image(source), image_size, crop)
