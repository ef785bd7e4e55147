"""Decoding a huge image has a bounded working set: a few bytes per pixel, never a wide copy.

A 16-bit PNG of 64 Mpx is a few hundred kB on the wire; converted through a full-frame float64
array it took an API worker to 1.8 GB. Each measurement runs in a fresh interpreter and reads the
kernel's peak resident set (VmHWM in /proc/self/status), so nothing the test process has
allocated before counts, and the figures are the ones docs/endpoint_documentation.md quotes.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from galaxylib.preprocessing import MAX_IMAGE_PIXELS

SIDE = 7990  # 63.8 Mpx: the largest square under MAX_IMAGE_PIXELS
MB = 1_000_000


def streamed_png(
    width: int,
    height: int,
    color_type: int,
    bit_depth: int = 8,
    extra_chunks: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """A valid PNG of a dark sky with a bright band across the middle third, compressed row by
    row so that writing a 64 Mpx image never holds its pixels (the test process stays small)."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    dtype = ">u2" if bit_depth == 16 else "u1"
    top = 65535 if bit_depth == 16 else 255
    x = np.arange(width)
    sky = np.full((width, channels), top // 40, dtype)
    band = np.stack([(x * (7 + 3 * c)) % (top + 1) for c in range(channels)], axis=1).astype(dtype)
    if color_type in (4, 6):  # alpha: opaque sky, a half-transparent band
        sky[:, -1], band[:, -1] = top, (x % 256) * (top // 255)
    if color_type == 3:  # palette indices: any of the 256 entries
        sky[:], band[:, 0] = 3, x % 256
    rows = [b"\0" + sky.tobytes(), b"\0" + band.tobytes()]
    packer = zlib.compressobj(6)
    body = b"".join(packer.compress(rows[height // 3 <= y < 2 * height // 3]) for y in range(height)) + packer.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))
    extras = b"".join(chunk(kind, data) for kind, data in extra_chunks)
    return b"\x89PNG\r\n\x1a\n" + header + extras + chunk(b"IDAT", body) + chunk(b"IEND", b"")


PALETTE = ((b"PLTE", bytes(range(256)) * 3), (b"tRNS", bytes(range(256))))

# PNG kinds a client may send: (colour type, bit depth, extra chunks, Pillow's mode once opened).
PNG_KINDS = {
    "16-bit greyscale": (0, 16, (), "I;16"),
    "8-bit greyscale": (0, 8, (), "L"),
    "greyscale + alpha": (4, 8, (), "LA"),
    "palette + transparency": (3, 8, PALETTE, "P"),
    "RGB": (2, 8, (), "RGB"),
    "RGBA": (6, 8, (), "RGBA"),
}

# The peak working set of decode + preprocess (224 px, the production crop of 0.875), in bytes
# per pixel of the upload, above the process before the decode; docs/endpoint_documentation.md
# ("Memory") gives the same figures. Pillow keeps RGB and RGBA at 4 bytes a pixel, so the floor
# is the decoded image (1, 2 or 4 bytes) plus the 8-bit RGB one handed to the model (4 bytes).
BYTES_PER_PIXEL = {
    "16-bit greyscale": 5.5,  # I;16 (2) + L (1), then L + RGB (1 + 4)
    "8-bit greyscale": 5.5,  # L + RGB
    "greyscale + alpha": 5.5,  # LA (4) + L (1), then L + RGB
    "palette + transparency": 5.5,  # P (1) + RGB
    "RGB": 5.5,  # RGB (4) + one band of the crop (0.77)
    "RGBA": 8.5,  # RGBA (4) + RGB (4): the worst case
}

PEAK_SCRIPT = """
import json, sys
from galaxylib.preprocessing import load_image

def vmhwm_bytes():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

data = open(sys.argv[1], "rb").read()
small = open(sys.argv[2], "rb").read()
load_image(small, 224, 0.875)  # the same code path once, small: lazy imports and buffers
before = vmhwm_bytes()
x = load_image(data, 224, 0.875)
print(json.dumps({"before": before, "after": vmhwm_bytes(), "sum": float(x.sum())}))
"""

API_SCRIPT = """
import io, json, sys
from serve.factory import create_app
from serve.settings import Settings

def vmhwm_bytes():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

app = create_app(Settings(database_url=sys.argv[3], model_path=sys.argv[2], db_retry_seconds=0.0))
data = open(sys.argv[1], "rb").read()
response = app.test_client().post(
    "/predict", data={"file": (io.BytesIO(data), "deep.png")}, content_type="multipart/form-data"
)
print(json.dumps({"status": response.status_code, "body": response.json, "vmhwm": vmhwm_bytes()}))
"""


def run_python(script: str, *args: str) -> dict:
    """Run ``script`` in a fresh interpreter and return the JSON it prints last."""
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def deep_png(tmp_path_factory) -> Path:
    """A 7990x7990 16-bit greyscale PNG: small on the wire, 64 Mpx once decoded."""
    path = tmp_path_factory.mktemp("deep") / "deep.png"
    path.write_bytes(streamed_png(SIDE, SIDE, 0, 16))
    return path


def test_the_png_written_here_is_what_the_case_is_about(deep_png):
    from PIL import Image

    with Image.open(deep_png) as img:
        assert (img.mode, img.size) == ("I;16", (SIDE, SIDE))
    assert SIDE * SIDE <= MAX_IMAGE_PIXELS
    assert deep_png.stat().st_size < 1_000_000


def test_a_64_megapixel_16_bit_png_upload_keeps_the_api_worker_under_600_mb(deep_png, tiny_artifact, tmp_path):
    """The absolute figure a deployment sizes its workers by: model loaded, one request served."""
    result = run_python(API_SCRIPT, str(deep_png), str(tiny_artifact), f"sqlite:///{tmp_path / 'p.db'}")

    assert result["status"] == 200, result["body"]
    assert result["body"]["predictions"][0]["filename"] == "deep.png"
    assert result["vmhwm"] < 600 * MB, f"peak resident memory {result['vmhwm'] / MB:.0f} MB"


@pytest.mark.parametrize("kind", list(PNG_KINDS))
def test_decoding_a_64_megapixel_png_needs_a_few_bytes_per_pixel(kind, tmp_path):
    color_type, bit_depth, extras, mode = PNG_KINDS[kind]
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    big.write_bytes(streamed_png(SIDE, SIDE, color_type, bit_depth, extras))
    small.write_bytes(streamed_png(64, 64, color_type, bit_depth, extras))
    from PIL import Image

    with Image.open(big) as img:
        assert img.mode == mode

    result = run_python(PEAK_SCRIPT, str(big), str(small))

    per_pixel = (result["after"] - result["before"]) / (SIDE * SIDE)
    assert per_pixel <= BYTES_PER_PIXEL[kind], f"{kind}: {per_pixel:.2f} bytes per pixel"


def main(argv: list[str]) -> None:
    """Print the figures docs/endpoint_documentation.md quotes:
    ``.venv/bin/python tests/test_decoding_memory.py [MODEL_DIR ...]`` (one API line per model)."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="decoding-memory-"))
    print(f"decode + preprocess of a {SIDE}x{SIDE} PNG (224 px, crop 0.875), fresh process each:")
    for kind, (color_type, bit_depth, extras, _) in PNG_KINDS.items():
        big, small = work / "big.png", work / "small.png"
        big.write_bytes(streamed_png(SIDE, SIDE, color_type, bit_depth, extras))
        small.write_bytes(streamed_png(64, 64, color_type, bit_depth, extras))
        result = run_python(PEAK_SCRIPT, str(big), str(small))
        grown = result["after"] - result["before"]
        print(
            f"  {kind:24} {big.stat().st_size / 1e3:7.0f} kB  process {result['before'] / MB:4.0f} MB -> "
            f"{result['after'] / MB:4.0f} MB: {grown / MB:4.0f} MB, {grown / SIDE**2:.2f} MB per Mpx"
        )
    deep = work / "deep.png"
    deep.write_bytes(streamed_png(SIDE, SIDE, 0, 16))
    for model in argv:
        result = run_python(API_SCRIPT, str(deep), model, f"sqlite:///{work / 'p.db'}")
        print(
            f"POST /predict of the 16-bit PNG, model {model}: {result['status']}, VmHWM {result['vmhwm'] / MB:.0f} MB"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
