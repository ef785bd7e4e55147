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
