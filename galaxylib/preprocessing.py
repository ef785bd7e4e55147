"""The one preprocessing path: raw bytes, a file or an array -> model input.

Training, evaluation, predict.sh, the API and the dashboard all call
``load_image``/``preprocess_image``, so the same file gives the same tensor
everywhere. Keras' EfficientNet rescales inside the network and expects 0..255,
so nothing here rescales.
"""

from __future__ import annotations

import functools
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile

# A cutout is 256x256; 64 Mpx leaves room for big mosaics but refuses a
# 30000x30000 "bomb" from its header, before any pixel is decoded.
MAX_IMAGE_PIXELS = int(os.environ.get("GALAXY_MAX_IMAGE_PIXELS", 64_000_000))
MIN_IMAGE_SIDE = 8  # pixels; a smaller "cutout" cannot show a galaxy
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


_FILE_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def _refusal(mode: int, label: str) -> ImageError | None:
    """Why a file of this ``st_mode`` is not read, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return ImageError(f"{label}: is a folder, not an image")
    return ImageError(f"{label}: not a regular file ({_FILE_KINDS.get(stat.S_IFMT(mode), 'of an odd type')})")


def read_regular_file(path: Path, label: str) -> bytes:
    """The bytes of the regular file at ``path``; anything else is an ``ImageError`` naming ``label``.

    A FIFO, socket or device is refused from its ``stat``, never opened: reading a FIFO with no
    writer blocks forever, and a device may never end. Should the path be swapped for one of
    those between the check and the open, the open does not block (``O_NONBLOCK``) and the type
    is checked again on what was opened.
    """
    try:
        refused = _refusal(os.stat(path).st_mode, label)
        if refused is not None:
            raise refused
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        with open(fd, "rb") as fh:  # closes fd whatever happens; O_NONBLOCK changes nothing for a regular file
            refused = _refusal(os.fstat(fd).st_mode, label)
            if refused is not None:
                raise refused
            return fh.read()
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{label}: is a folder, not an image") from None
    except OSError as exc:
        raise ImageError(f"{label}: cannot be read ({exc.strerror or exc})") from exc
    except ValueError as exc:  # a NUL in the name (a listing or catalogue can hold one)
        raise ImageError(f"{label}: cannot be read ({exc})") from exc


def _read_bytes(source: ImageSource) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), ""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return read_regular_file(path, path.name), path.name
    if hasattr(source, "read"):
        return source.read(), str(getattr(source, "name", ""))
    raise TypeError(f"cannot read an image from {type(source).__name__}")


# Conversions go one strip of rows at a time, so their wide intermediates (the float64 of an F
# image, the RGBA of one with transparency) hold about a megapixel, never the whole frame: a
# full-frame float64 copy of a 64 Mpx image is 512 MB. docs/endpoint_documentation.md ("Memory")
# gives the measured peak per megapixel.
STRIP_PIXELS = 1 << 20
# A centre crop larger than this is not copied whole but one band at a time (_crop_and_resize).
CROP_COPY_PIXELS = 4 << 20
_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _row_strips(width: int, height: int) -> Iterator[tuple[int, int]]:
    """(top, bottom) of consecutive strips of rows of about STRIP_PIXELS pixels each."""
    rows = max(1, STRIP_PIXELS // max(1, width))
    for top in range(0, height, rows):
        yield top, min(height, top + rows)


def _deep_to_grey8(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float greyscale image -> 8-bit L, one strip of rows at a time.

    The mapping of contract version 1: I;16 is scaled by 65535; I by 65535 if its maximum is over
    255, else by 255 (both rounded); F is stretched from its minimum to its maximum (truncated;
    all zero when flat or when a NaN makes the range unknown).
    """
    width, height = img.size
    strips = list(_row_strips(width, height))

    def strip(top: int, bottom: int) -> np.ndarray:
        return np.asarray(img.crop((0, top, width, bottom)))

    out = np.zeros((height, width), np.uint8)
    if img.mode == "F":
        ends = np.array([(part.min(), part.max()) for part in (strip(*rows) for rows in strips)], np.float64)
        lo, hi = float(ends[:, 0].min()), float(ends[:, 1].max())  # a NaN propagates, as over the frame
        if hi > lo:
            for top, bottom in strips:
                out[top:bottom] = ((strip(top, bottom).astype(np.float64) - lo) / (hi - lo) * 255.0).astype(np.uint8)
        return Image.fromarray(out, "L")
    deep = img.mode.startswith("I;16") or max(int(strip(*rows).max()) for rows in strips) > 255
    top_value = 65535 if deep else 255
    # Every value the integer modes can map to, by the float formula itself: a table lookup per
    # pixel gives exactly its results (values outside 0..top clip to 0 or 255, as it does).
    table = _grey8_table(top_value)
    for top, bottom in strips:
        values = strip(top, bottom)
        out[top:bottom] = table[values if values.dtype.itemsize == 2 else np.clip(values, 0, top_value)]
    return Image.fromarray(out, "L")


@functools.cache
def _grey8_table(top: int) -> np.ndarray:
    """The 8-bit value of each integer 0..top under the rounded scaling above."""
    values = np.arange(top + 1, dtype=np.float64)
    return np.clip(values / float(top) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def _on_black_sky(img: Image.Image, mode: str) -> Image.Image:
    """Composite an image with transparency over opaque black (transparent = empty black sky),
    strip by strip into an 8-bit ``mode`` image ("L" for greyscale + alpha, else "RGB")."""
    width, height = img.size
    out = Image.new(mode, img.size)
    for top, bottom in _row_strips(width, height):
        rgba = img.crop((0, top, width, bottom)).convert("RGBA")
        sky = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        flat = Image.alpha_composite(sky, rgba)
        out.paste(flat.getchannel("R") if mode == "L" else flat.convert("RGB"), (0, top))
    return out


def _to_8bit(img: Image.Image) -> Image.Image:
    """Deep greyscale and images with transparency -> 8-bit L or RGB; anything else unchanged.

    The first of two steps: a caller that owns the decoded image drops it between them, so the
    wide input and the 4-byte-per-pixel RGB output never coexist (Pillow keeps RGB, RGBA and LA
    at 4 bytes a pixel).
    """
    if img.mode in _DEEP_MODES:
        return _deep_to_grey8(img)
    if img.mode == "LA":  # grey stays grey: 1 byte a pixel until the RGB copy
        return _on_black_sky(img, "L")
    if _has_alpha(img):
        return _on_black_sky(img, "RGB")
    return img


def _to_rgb8(img: Image.Image) -> Image.Image:
    """Greyscale, alpha, palette and 16-bit images all become 8-bit RGB."""
    img = _to_8bit(img)
    return img if img.mode == "RGB" else img.convert("RGB")


def _check_size(width: int, height: int) -> None:
    """The one size rule for files, uploads, arrays and decoded images."""
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(f"{width}x{height} pixels is over the limit of {MAX_IMAGE_PIXELS:,} pixels")
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise ImageError(f"{width}x{height} is too small to be a galaxy cutout")


def decode_image(source: ImageSource, name: str | None = None) -> Image.Image:
    """Decode and validate an uploaded or on-disk image into 8-bit RGB.

    Raises an ``ImageError`` subclass with a message fit to show a user
    (prefixed with ``name``, or the file's name, when known).
    """
    found = ""
    try:
        if isinstance(source, Image.Image):
            _check_size(*source.size)
            return _to_rgb8(source)
        if isinstance(source, np.ndarray):
            return Image.fromarray(_validate_array(source), "RGB")
        data, found = _read_bytes(source)
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
    _check_size(*img.size)
    try:
        img.load()
    except Exception as exc:
        raise ImageError(f"the image data is truncated or corrupt ({exc})") from exc
    # Two steps, so that the decoded image (2 or 4 bytes a pixel) is freed before the RGB copy.
    img = _to_8bit(img)
    return img if img.mode == "RGB" else img.convert("RGB")


def _validate_array(arr: np.ndarray) -> np.ndarray:
    """A Galaxy10 h5 row or any (H, W, 3) uint8 array, under the same size rule as a file."""
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ImageError(f"expected an (H, W, 3) RGB array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ImageError(f"expected a uint8 array (as in Galaxy10_DECals.h5), got {arr.dtype}")
    _check_size(arr.shape[1], arr.shape[0])
    return arr


def _crop_box(size: tuple[int, int], crop: float) -> tuple[int, int, int, int]:
    if not 0.1 <= crop <= 1.0:
        raise ValueError(f"crop must be between 0.1 and 1, got {crop}")
    width, height = size
    if crop >= 1.0:
        return 0, 0, width, height
    cw, ch = max(1, round(width * crop)), max(1, round(height * crop))
    left, top = (width - cw) // 2, (height - ch) // 2
    return left, top, left + cw, top + ch


def center_crop(img: Image.Image, crop: float) -> Image.Image:
    """Keep the central ``crop`` fraction of each side: the galaxy sits at the centre
    of a Galaxy10 cutout, so a crop spends the model's pixels on it."""
    box = _crop_box(img.size, crop)
    return img if box == (0, 0, *img.size) else img.crop(box)


def _crop_and_resize(img: Image.Image, crop: float, image_size: int) -> Image.Image:
    """``center_crop`` then a bilinear resize to the model's size, with the same pixels.

    A large crop of a large image is not copied whole (4 bytes a pixel beside the image): each
    band is cropped into an 8-bit plane, strip by strip, and resized on its own. Pillow resizes
    every band of an 8-bit image with the same fixed-point arithmetic, so the result is
    identical (tests/test_preprocessing.py checks it).
    """
    box = _crop_box(img.size, crop)
    left, top, right, bottom = box
    size = (image_size, image_size)
    width, height = right - left, bottom - top
    if box == (0, 0, *img.size) or (width, height) == size or width * height <= CROP_COPY_PIXELS:
        region = center_crop(img, crop)
        return region if region.size == size else region.resize(size, Image.Resampling.BILINEAR)
    bands = []
    for band in range(len(img.getbands())):
        plane = Image.new("L", (width, height))
        for y0, y1 in _row_strips(width, height):
            plane.paste(img.crop((left, top + y0, right, top + y1)).getchannel(band), (0, y0))
        bands.append(plane.resize(size, Image.Resampling.BILINEAR))
        del plane  # one plane at a time
    return Image.merge(img.mode, bands)


def preprocess_image(image: Image.Image | np.ndarray, image_size: int, crop: float = 1.0) -> np.ndarray:
    """Decoded image or uint8 (H, W, 3) array -> float32 (size, size, 3) in 0..255."""
    img = decode_image(image) if isinstance(image, np.ndarray) else _to_rgb8(image)
    return np.asarray(_crop_and_resize(img, crop, image_size), dtype=np.float32)


def preprocess_uint8(image: Image.Image | np.ndarray, image_size: int, crop: float = 1.0) -> np.ndarray:
    """The same mapping as ``preprocess_image``, kept as uint8 for compact caches."""
    return preprocess_image(image, image_size, crop).astype(np.uint8)


def load_image(source: ImageSource, image_size: int, crop: float = 1.0) -> np.ndarray:
    """Bytes, a path, a stream or an array -> the model input for one image."""
    return preprocess_image(decode_image(source), image_size, crop)
