"""POST /predict: real cutouts and generated images are classified, stored, and bad uploads refused.

Every refusal is checked against the database: a 4xx must leave the row count as it was.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from support import encode_image, random_rgb, row_count

from galaxylib.classes import CLASS_NAMES
from galaxylib.inference.predictor import Predictor


def upload(*files: tuple[str, bytes], field: str = "file") -> dict:
    """A multipart form with ``field`` repeated once per file (Werkzeug test-client format)."""
    return {field: [(io.BytesIO(data), name) for name, data in files]}


def post(client, *files: tuple[str, bytes], field: str = "file", **kwargs):
    return client.post("/predict", data=upload(*files, field=field), content_type="multipart/form-data", **kwargs)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny (invalid) body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def png_bomb() -> bytes:
    """A valid 30000x30000 1-bit PNG (900 Mpx) of ~110 kB: must be refused, never decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    side = 30000
    row = b"\0" * (1 + side // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.fixture
def db_url(database_url):
    return database_url


@pytest.fixture
def client(make_app, db_url):
    return make_app(db_url).test_client()


@pytest.fixture
def cutout(sample_files) -> tuple[str, bytes]:
    path = sample_files[0]
    return path.name, path.read_bytes()


# --- classification ---------------------------------------------------------------------------


def test_a_real_cutout_is_classified_and_stored_with_its_metadata(client, db_url, cutout, tiny_artifact):
    response = post(client, cutout)

    assert response.status_code == 200
    [result] = response.json["predictions"]
    assert result["filename"] == cutout[0]
    assert result["predicted_class"] == CLASS_NAMES[result["class_index"]]
    assert list(result["probabilities"]) == list(CLASS_NAMES)
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert result["confidence"] == max(result["probabilities"].values())
    # no class bias: the reported class is the most probable one, and the answer says so
    assert result["decision_rule"] == "most_probable" and result["most_probable_class"] == result["predicted_class"]
    assert result["model_version"].startswith("tiny-")
    assert result["timestamp"].endswith("+00:00")

    stored = client.get(f"/predictions/{result['prediction_id']}").json
    meta = stored["metadata"]
    assert stored["predicted_class"] == result["predicted_class"]
    assert meta["model_version"] == result["model_version"]
    assert meta["sha256"] == hashlib.sha256(cutout[1]).hexdigest()
    assert (meta["size_bytes"], meta["width"], meta["height"]) == (len(cutout[1]), 256, 256)
    assert meta["probabilities"] == result["probabilities"]
    assert meta["latency_ms"] > 0 and meta["source"] == "api"
    assert row_count(db_url) == 1


def test_no_timings_reach_a_client_by_default(client, cutout):
    assert "Server-Timing" not in post(client, cutout).headers


def test_with_server_timing_on_the_response_says_where_its_time_went(make_app, db_url, cutout):
    client = make_app(db_url, server_timing=True).test_client()

    response = post(client, cutout)

    parts = dict(part.strip().split(";dur=") for part in response.headers["Server-Timing"].split(","))
    durations = {name: float(ms) for name, ms in parts.items()}
    assert list(durations) == ["read", "decode", "forward", "store", "app"]
    assert all(ms > 0 for ms in durations.values())
    assert durations["app"] >= durations["decode"] + durations["forward"] + durations["store"]


def test_the_api_gives_the_same_probabilities_as_the_predictor_on_the_same_file(client, sample_files, tiny_artifact):
    """One preprocessing path: the API and predict.sh/the dashboard see identical tensors."""
    path = sample_files[3]
    direct = Predictor(tiny_artifact).predict(path)

    served = post(client, (path.name, path.read_bytes())).json["predictions"][0]

    assert served["probabilities"] == pytest.approx(direct.probabilities, abs=1e-6)
    assert served["predicted_class"] == direct.predicted_class


def test_repeated_file_fields_are_one_batch_answered_in_upload_order(client, db_url, sample_files):
    files = [(p.name, p.read_bytes()) for p in sample_files[:5]]

    response = post(client, *files)

    assert response.status_code == 200
    predictions = response.json["predictions"]
    assert [p["filename"] for p in predictions] == [name for name, _ in files]
    assert len({p["prediction_id"] for p in predictions}) == 5
    assert row_count(db_url) == 5
    assert client.get(f"/predictions/{predictions[0]['prediction_id']}").json["metadata"]["batch_size"] == 5


def test_a_batch_larger_than_the_forward_batch_runs_in_chunks_with_the_same_results(
    make_app, sqlite_url, sample_files, tiny_artifact
):
    client = make_app(sqlite_url, forward_batch=2).test_client()
    paths = sample_files[:5]
    direct = Predictor(tiny_artifact).predict_batch(paths)

    served = post(client, *[(p.name, p.read_bytes()) for p in paths]).json["predictions"]

    for got, expected in zip(served, direct, strict=True):
        assert got["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
    assert row_count(sqlite_url) == 5


def test_the_field_name_files_is_accepted_too(client, db_url, cutout):
    response = post(client, cutout, cutout, field="files")

    assert response.status_code == 200
    assert len(response.json["predictions"]) == 2
    assert row_count(db_url) == 2


@pytest.mark.parametrize("kind", ["greyscale", "rgba", "16-bit greyscale", "palette", "rgb png"])
def test_png_variants_are_converted_and_classified(client, db_url, kind):
    rgb = random_rgb(seed=7, size=64)
    image = {
        "greyscale": lambda: Image.fromarray(np.ascontiguousarray(rgb[..., 0])),
        "rgba": lambda: Image.fromarray(np.dstack([rgb, np.full((64, 64), 128, np.uint8)])),
        "16-bit greyscale": lambda: Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        "palette": lambda: Image.fromarray(rgb).convert("P"),
        "rgb png": lambda: Image.fromarray(rgb),
    }[kind]()
    assert (
        image.mode
        == {"greyscale": "L", "rgba": "RGBA", "16-bit greyscale": "I;16", "palette": "P", "rgb png": "RGB"}[kind]
    )

    response = post(client, (f"{kind}.png", encode_image(image, "PNG")))

    assert response.status_code == 200, response.json
    assert response.json["predictions"][0]["predicted_class"] in CLASS_NAMES
    assert row_count(db_url) == 1


def test_a_directory_in_the_uploaded_filename_is_dropped(client, cutout):
    response = post(client, ("../../etc/evil.jpg", cutout[1]))

    assert response.json["predictions"][0]["filename"] == "evil.jpg"


def test_a_very_long_uploaded_filename_is_shortened_keeping_its_extension(client, cutout):
    response = post(client, ("g" * 300 + ".jpg", cutout[1]))

    name = response.json["predictions"][0]["filename"]
    assert len(name) == 255 and name.endswith("ggg.jpg")


def test_in_a_batch_a_bad_file_gets_its_own_error_and_no_row(client, db_url, cutout):
    response = post(client, cutout, ("notes.txt", b"just some text, not an image"), cutout)

    assert response.status_code == 200
    first, bad, third = response.json["predictions"]
    assert bad == {
        "filename": "notes.txt",
        "error": {"code": "unsupported_media_type", "message": bad["error"]["message"]},
    }
    assert "notes.txt" in bad["error"]["message"]
    assert "prediction_id" in first and "prediction_id" in third
    assert row_count(db_url) == 2


# --- refusals: status, error code, and nothing stored ------------------------------------------


@pytest.fixture
def seeded(client, db_url, cutout) -> int:
    """One stored prediction, so 'unchanged' is checked against a non-empty table."""
    assert post(client, cutout).status_code == 200
    return row_count(db_url)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the 72 Mpx header, refused
@pytest.mark.parametrize(
    "name, make_bytes, status, code",
    [
        ("empty.jpg", lambda cut: b"", 400, "empty_file"),
        ("notes.txt", lambda cut: b"hello, this is text\n" * 20, 415, "unsupported_media_type"),
        ("half.jpg", lambda cut: cut[: len(cut) // 2], 400, "invalid_image"),
        ("corrupt.jpg", lambda cut: cut[:200] + bytes(range(256)) * 8, 400, "invalid_image"),
        ("random.bin", lambda cut: np.random.default_rng(1).bytes(5000), 415, "unsupported_media_type"),
        ("anim.gif", lambda cut: encode_image(random_rgb(size=32), "GIF"), 415, "unsupported_media_type"),
        ("pic.bmp", lambda cut: encode_image(random_rgb(size=32), "BMP"), 415, "unsupported_media_type"),
        ("huge-header.png", lambda cut: png_header_only(9000, 8000), 413, "image_too_large"),
        ("tiny.png", lambda cut: encode_image(random_rgb(size=4), "PNG"), 400, "invalid_image"),
    ],
)
def test_a_bad_upload_is_refused_and_nothing_is_stored(client, db_url, seeded, cutout, name, make_bytes, status, code):
    response = post(client, (name, make_bytes(cutout[1])))

    assert response.status_code == status
    assert response.json["error"]["code"] == code
    assert name in response.json["error"]["message"]
    assert row_count(db_url) == seeded


def test_a_30000_pixel_square_png_bomb_is_refused_without_decoding(client, db_url, seeded, png_bomb):
    assert len(png_bomb) < 2_000_000  # small on the wire, 900 Mpx once decoded

    response = post(client, ("bomb.png", png_bomb))

    assert response.status_code == 413
    assert response.json["error"]["code"] == "image_too_large"
    assert row_count(db_url) == seeded


def test_a_body_over_max_upload_mb_is_a_json_413(make_app, db_url, cutout):
    client = make_app(db_url, max_upload_mb=0.05).test_client()

    response = post(client, ("big.png", encode_image(random_rgb(size=256), "PNG")))  # ~197 kB

    assert response.status_code == 413
    assert response.json["error"]["code"] == "payload_too_large"
    assert row_count(db_url) == 0


def test_more_files_than_max_batch_are_refused_as_a_whole(make_app, db_url, cutout):
    client = make_app(db_url, max_batch=3).test_client()

    response = post(client, *[cutout] * 4)

    assert response.status_code == 413
    assert response.json["error"]["code"] == "too_many_files"
    assert row_count(db_url) == 0


def test_a_multipart_request_without_a_file_is_a_400(client, db_url, seeded):
    response = client.post("/predict", data={"image": (io.BytesIO(b"x"), "x.jpg")}, content_type="multipart/form-data")

    assert response.status_code == 400
    assert response.json["error"]["code"] == "no_file"
    assert "image" in response.json["error"]["message"]  # names the field that was sent instead
    assert row_count(db_url) == seeded


def test_an_empty_file_input_from_a_browser_form_counts_as_no_file(client, db_url, seeded):
    response = post(client, ("", b""))

    assert response.status_code == 400
    assert response.json["error"]["code"] == "no_file"
    assert row_count(db_url) == seeded


def test_a_json_body_instead_of_an_upload_is_a_400(client, db_url, seeded):
    response = client.post("/predict", json={"file": "g10.jpg"})

    assert response.status_code == 400
    assert response.json["error"]["code"] == "no_file"
    assert row_count(db_url) == seeded


def test_a_batch_where_every_file_fails_is_an_error_listing_each_file(client, db_url, seeded):
    response = post(client, ("a.txt", b"text"), ("b.txt", b"more text"))

    assert response.status_code == 415
    assert response.json["error"]["code"] == "unsupported_media_type"
    assert [p["filename"] for p in response.json["predictions"]] == ["a.txt", "b.txt"]
    assert row_count(db_url) == seeded


def test_a_batch_failing_for_different_reasons_is_a_400(client, db_url, seeded, cutout):
    response = post(client, ("a.txt", b"text"), ("empty.jpg", b""))

    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_images"
    assert row_count(db_url) == seeded


def test_predict_only_accepts_post(client):
    response = client.get("/predict")

    assert response.status_code == 405
    assert response.json["error"]["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]
