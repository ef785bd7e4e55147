"""The one preprocessing path: every entry point gives the same model input."""

import io

import numpy as np
import pytest
from PIL import Image

from galaxylib.preprocessing import (
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
    decode_image,
    load_image,
    preprocess_image,
    preprocessing_contract,
)


def test_a_real_cutout_becomes_float32_in_0_255_at_the_model_size(sample_files):
    x = load_image(sample_files[0], 128)
    assert x.shape == (128, 128, 3) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 255 and x.max() > 1  # not rescaled to 0..1: EfficientNet does that


def test_path_bytes_stream_and_h5_array_give_identical_inputs(sample_files):
    path = sample_files[3]
    raw = path.read_bytes()
    from_path = load_image(path, 96)
    as_h5_row = np.asarray(Image.open(path).convert("RGB"))  # what Galaxy10_DECals.h5 stores
    for other in (load_image(raw, 96), load_image(io.BytesIO(raw), 96), preprocess_image(as_h5_row, 96)):
        np.testing.assert_array_equal(from_path, other)


def test_a_lossless_png_of_a_cutout_gives_the_same_input_as_its_array(sample_files):
    array = np.asarray(decode_image(sample_files[5]))
    png = io.BytesIO()
    Image.fromarray(array).save(png, format="PNG")
    np.testing.assert_array_equal(load_image(png.getvalue(), 64), preprocess_image(array, 64))


def test_greyscale_rgba_and_16_bit_pngs_are_converted_to_rgb():
    grey = Image.fromarray(np.linspace(0, 255, 64 * 64).reshape(64, 64).astype(np.uint8))
    rgba = Image.fromarray(np.full((64, 64, 4), 200, np.uint8))
    deep = Image.fromarray((np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16))
    assert deep.mode == "I;16"
    for img in (grey, rgba, deep):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        x = load_image(buf.getvalue(), 32)
        assert x.shape == (32, 32, 3)
    buf = io.BytesIO()
    deep.save(buf, format="PNG")
    assert load_image(buf.getvalue(), 64).max() == 255  # 16-bit scaled down, not clipped


def test_an_empty_file_is_refused_with_a_clear_error():
    with pytest.raises(EmptyImageError, match="empty"):
        decode_image(b"")


def test_a_text_file_is_not_an_image():
    with pytest.raises(UnsupportedImageError, match="not a JPEG or PNG"):
        decode_image(b"galaxy, but in words")


def test_a_truncated_jpeg_is_refused(sample_files):
    with pytest.raises(ImageError, match="truncated or corrupt"):
        decode_image(sample_files[0].read_bytes()[:2500])


def test_a_png_bomb_is_refused_from_its_header_without_decoding(tmp_path):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # A valid 30000x30000 PNG header with almost no data: decoding it would need 2.7 GB.
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(ImageTooLargeError, match="over the limit"):
        decode_image(bomb)


def test_other_formats_are_not_accepted():
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="GIF")
    with pytest.raises(UnsupportedImageError, match="GIF"):
        decode_image(buf.getvalue())


# The exact model inputs of one real cutout under contract version 1. A change to the mapping
# (decode, crop, resize, dtype) changes these digests: bump CONTRACT_VERSION with it, so that
# artifacts trained under the old mapping are refused instead of silently fed other pixels.
CONTRACT_V1_DIGESTS = {
    ("g10_01d8b643be.jpg", 64, 0.6): "ba35d66c5e6d47c6b3c1caafc1e1f705907de4a4e7d989ca824f9e7075db760b",
    ("g10_01d8b643be.jpg", 224, 0.875): "eb33e6a2eeb06a40212cf935d2db433d136d82fc536858e36961993c1a39ab6d",
}


def test_the_contract_version_pins_the_exact_mapping(samples_dir):
    import hashlib

    from galaxylib.preprocessing import CONTRACT_VERSION

    assert CONTRACT_VERSION == 1, "a new contract version needs its own digests here"
    for (name, size, crop), digest in CONTRACT_V1_DIGESTS.items():
        pixels = load_image(samples_dir / name, size, crop)
        assert hashlib.sha256(pixels.tobytes()).hexdigest() == digest, (name, size, crop)
    contract = preprocessing_contract(224, 0.875)
    assert (contract["version"], contract["image_size"], contract["crop"]) == (1, 224, 0.875)


def test_a_centre_crop_keeps_the_middle_of_the_cutout_before_resizing(sample_files):
    from galaxylib.preprocessing import center_crop

    img = decode_image(sample_files[0])
    cropped = center_crop(img, 0.5)
    assert cropped.size == (128, 128)
    np.testing.assert_array_equal(np.asarray(cropped), np.asarray(img)[64:192, 64:192])
    raw = sample_files[0].read_bytes()
    np.testing.assert_array_equal(load_image(raw, 64, crop=0.65), preprocess_image(np.asarray(img), 64, crop=0.65))


def test_the_production_crop_feeds_the_central_224_pixels_of_a_cutout_unresampled(sample_files):
    """configs/production.yaml: 224 px at crop 0.875 is a pure crop of a 256 px cutout (no resize)."""
    from galaxylib.config import PROJECT_ROOT
    from galaxylib.pipeline.run_config import load_config

    config = load_config(PROJECT_ROOT / "configs" / "production.yaml")
    pixels = np.asarray(decode_image(sample_files[0]))

    model_input = load_image(sample_files[0], config["image_size"], crop=config["crop"])

    assert pixels.shape == (256, 256, 3)
    np.testing.assert_array_equal(model_input, pixels[16:240, 16:240].astype(np.float32))


# --- one size rule for every entry point --------------------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (8-bit RGB), with next to no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the 72 Mpx header, refused
@pytest.mark.parametrize(
    "width, height, error, message",
    [
        (9000, 8000, ImageTooLargeError, "9000x8000 pixels is over the limit of 64,000,000 pixels"),
        (4, 4, ImageError, "4x4 is too small to be a galaxy cutout"),
        (7, 300, ImageError, "7x300 is too small to be a galaxy cutout"),
    ],
)
def test_a_file_an_array_and_a_decoded_image_meet_the_same_size_limits(width, height, error, message):
    """predict.sh reads h5 rows as arrays and the API reads uploads: neither may pass what the other refuses."""
    pixel = np.zeros((1, 1, 3), np.uint8)
    as_array = np.broadcast_to(pixel, (height, width, 3))  # a view: no 216 MB allocated for the big one
    as_file = png_claiming(width, height)
    entries = {
        "file": lambda: load_image(as_file, 32),
        "array": lambda: load_image(as_array, 32),
        "array, preprocessed": lambda: preprocess_image(as_array, 32),
    }
    if width * height < 1_000_000:
        entries["decoded image"] = lambda: decode_image(Image.new("RGB", (width, height)))

    for entry, call in entries.items():
        with pytest.raises(error) as refused:
            call()
        assert str(refused.value) == message, entry


def test_the_smallest_and_the_largest_allowed_array_are_accepted():
    from galaxylib.preprocessing import MAX_IMAGE_PIXELS

    assert load_image(np.zeros((8, 8, 3), np.uint8), 8).shape == (8, 8, 3)
    side = int(MAX_IMAGE_PIXELS**0.5)
    assert decode_image(np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (side, side, 3))).size == (side, side)


def test_an_h5_row_refused_for_its_size_is_named_like_a_file():
    with pytest.raises(ImageError, match=r"^rows\[3\]: 4x4 is too small"):
        decode_image(np.zeros((4, 4, 3), np.uint8), name="rows[3]")


# --- 16-bit and float images: converted strip by strip, with the mapping of contract version 1 ---


def mapping_v1(values: np.ndarray, mode: str) -> np.ndarray:
    """The contract's 8-bit mapping, written out over the whole frame in float64."""
    arr = values.astype(np.float64)
    if mode == "F":
        lo, hi = float(arr.min()), float(arr.max())
        return ((arr - lo) / (hi - lo) * 255.0).astype(np.uint8) if hi > lo else np.zeros(arr.shape, np.uint8)
    top = 65535.0 if mode == "I;16" or arr.max() > 255 else 255.0
    return np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


def deep_images(height: int = 3000, width: int = 700) -> dict[str, tuple[np.ndarray, str]]:
    """Greyscale frames taller than a strip of rows, each with values that test the mapping's edges."""
    rng = np.random.default_rng(4)
    ramp = np.linspace(0, 65535, height * width).reshape(height, width)
    with_nan = rng.normal(100, 30, (height, width)).astype(np.float32)
    with_nan[height - 1, 5] = np.nan
    return {
        "16-bit": (ramp.astype(np.uint16), "I;16"),
        "32-bit over 255": (ramp.astype(np.int32) - 1000, "I"),
        "32-bit within 0..255": (rng.integers(-3, 256, (height, width)).astype(np.int32), "I"),
        "float": (rng.normal(0, 1e4, (height, width)).astype(np.float32), "F"),
        "flat float": (np.full((height, width), 7.5, np.float32), "F"),
        "float with a NaN in the last strip": (with_nan, "F"),
    }


@pytest.mark.parametrize("kind", list(deep_images(8, 8)))
def test_deep_greyscale_keeps_the_mapping_of_contract_version_1(kind):
    from galaxylib.preprocessing import STRIP_PIXELS

    values, mode = deep_images()[kind]
    image = Image.fromarray(values) if mode == "I;16" else Image.fromarray(values, mode)
    assert image.mode == mode and values.size > 2 * STRIP_PIXELS  # several strips

    with np.errstate(invalid="ignore"):
        rgb = np.asarray(decode_image(image))

    expected = mapping_v1(values, mode)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)


def test_a_16_bit_png_decodes_to_the_same_pixels_as_its_8_bit_mapping():
    values = (np.arange(256 * 300) * 7 % 65536).astype(np.uint16).reshape(300, 256)
    png = io.BytesIO()
    Image.fromarray(values).save(png, format="PNG")

    np.testing.assert_array_equal(np.asarray(decode_image(png.getvalue()))[..., 1], mapping_v1(values, "I;16"))


@pytest.mark.parametrize("crop", [0.75, 0.875, 0.99])
def test_a_large_crop_copied_band_by_band_gives_the_plain_crop_and_resize(sample_files, crop):
    """Big images are cropped one 8-bit plane at a time (a quarter of the memory): same pixels."""
    from galaxylib.preprocessing import CROP_COPY_PIXELS, center_crop

    tile = np.asarray(decode_image(sample_files[2]))
    mosaic = Image.fromarray(np.tile(tile, (12, 11, 1)))  # 2816x3072 px of real cutouts
    assert (mosaic.width * crop) * (mosaic.height * crop) > CROP_COPY_PIXELS  # the band-by-band path

    plain = center_crop(mosaic, crop).resize((224, 224), Image.Resampling.BILINEAR)

    np.testing.assert_array_equal(preprocess_image(mosaic, 224, crop), np.asarray(plain, np.float32))
