"""POST /predict: classify one or many uploaded images and store every result.

The request's images are decoded by galaxylib's one preprocessing path and run
through the model in stacked forward passes (``forward_batch`` images each); all
rows are written in one transaction before anything is returned. A file that cannot be decoded gets its
own error entry and no row; if the database write fails the client gets a 503,
never a 200 for a prediction that was not stored.
"""
from __future__ import annotations

import hashlib
import io
import time
import unicodedata
from dataclasses import dataclass

import numpy as np
from flask import Blueprint, jsonify, request

from galaxylib.preprocessing import ImageError, decode_image
from serve.errors import ApiError
from serve.multipart import Upload, split_files
from serve.runtime import Runtime, runtime

bp = Blueprint("predict", __name__)

UPLOAD_FIELDS = ("file", "files")
# galaxylib ImageError codes -> HTTP status.
STATUS_OF_CODE = {"empty_file": 400, "invalid_image": 400, "unsupported_media_type": 415,
                  "image_too_large": 413}


class _NamedBytes(io.BytesIO):
    """Bytes that carry the upload's filename, so galaxylib's messages name the file."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.name = name


@dataclass
class _Decoded:
    index: int
    filename: str
    array: np.ndarray
    sha256: str
    size_bytes: int
    width: int
    height: int
    decode_ms: float


def clean_filename(raw: str | None, index: int) -> str:
    """The client's name without any directory part or control characters; never empty."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    return name[:255] or f"upload-{index + 1}"


def read_uploads() -> list[Upload]:
    """All file parts of the request; reading the body enforces MAX_CONTENT_LENGTH (a JSON 413)."""
    body = request.get_data(cache=True)
    boundary = request.mimetype_params.get("boundary", "")
    uploads = split_files(body, boundary, request.max_form_parts or 1000)
    if uploads is None:  # unusual framing: Werkzeug's parser reads the cached body
        files = request.files
        uploads = [Upload(field, f.filename, f.read()) for field in files for f in files.getlist(field)]
    return uploads


def collect_uploads(max_batch: int) -> list[Upload]:
    if request.mimetype != "multipart/form-data":
        raise ApiError(400, "no_file", "send the images as multipart/form-data in a field named 'file' "
                                       "(repeat it for several images)")
    parts = read_uploads()
    # A browser form with no file chosen sends one empty part with an empty filename.
    uploads = [u for u in parts if u.field in UPLOAD_FIELDS and (u.filename or u.data)]
    if not uploads:
        others = sorted({u.field for u in parts} - set(UPLOAD_FIELDS))
        hint = f" (got field(s) {', '.join(others)})" if others else ""
        raise ApiError(400, "no_file", f"no image uploaded: send one or more files in the multipart "
                                       f"field 'file'{hint}")
    if len(uploads) > max_batch:
        raise ApiError(413, "too_many_files",
                       f"{len(uploads)} files in one request; the limit is {max_batch} (MAX_BATCH)")
    return uploads


def _decode(upload: Upload, index: int, predictor) -> _Decoded:
    started = time.perf_counter()
    filename = clean_filename(upload.filename, index)
    image = decode_image(_NamedBytes(upload.data, filename))
    array = predictor.preprocess(image)  # the artifact's own contract (size and crop)
    return _Decoded(index, filename, array, hashlib.sha256(upload.data).hexdigest(), len(upload.data),
                    image.width, image.height, (time.perf_counter() - started) * 1e3)


@bp.post("/predict")
def predict():
    started = time.perf_counter()
    rt = runtime()
    uploads = collect_uploads(rt.settings.max_batch)
    read_ms = (time.perf_counter() - started) * 1e3
    predictor = rt.require_model()
    rt.db.store()  # 503 now, before any work, if the database is known to be down

    results: list[dict | None] = [None] * len(uploads)
    decoded: list[_Decoded] = []
    failures: list[tuple[int, str]] = []
    for i, upload in enumerate(uploads):
        try:
            decoded.append(_decode(upload, i, predictor))
        except ImageError as exc:
            code = exc.code if exc.code in STATUS_OF_CODE else "invalid_image"
            results[i] = {"filename": clean_filename(upload.filename, i),
                          "error": {"code": code, "message": str(exc)}}
            failures.append((STATUS_OF_CODE[code], code))

    if not decoded:
        raise _all_failed(failures, results)

    forward_started = time.perf_counter()
    probabilities = forward([d.array for d in decoded], rt)
    inference_ms = (time.perf_counter() - forward_started) * 1e3
    total_ms = (time.perf_counter() - started) * 1e3

    predictions = [predictor.to_prediction(p) for p in probabilities]
    rows = [{
        "filename": d.filename,
        "predicted_class": p.predicted_class,
        "confidence": p.confidence,
        "metadata": {
            "model_version": p.model_version,
            "class_index": p.class_index,
            "sha256": d.sha256,
            "size_bytes": d.size_bytes,
            "width": d.width,
            "height": d.height,
            "probabilities": p.probabilities,
            "latency_ms": {"decode": round(d.decode_ms, 3), "inference": round(inference_ms, 3),
                           "total": round(total_ms, 3)},
            "batch_size": len(decoded),
        },
    } for d, p in zip(decoded, predictions)]
    store_started = time.perf_counter()
    records = rt.db.store().add_many(rows)  # atomic; a failure is a 503, nothing returned
    store_ms = (time.perf_counter() - store_started) * 1e3

    for d, p, record in zip(decoded, predictions, records):
        created = record.as_dict()["created_at"]
        results[d.index] = {
            "prediction_id": record.id,
            "filename": d.filename,
            "predicted_class": p.predicted_class,
            "class_index": p.class_index,
            "confidence": p.confidence,
            "probabilities": p.probabilities,
            "model_version": p.model_version,
            "timestamp": created,
        }
    response = jsonify({"predictions": results})
    if rt.settings.server_timing:
        timings = {"read": read_ms, "decode": sum(d.decode_ms for d in decoded), "forward": inference_ms,
                   "store": store_ms, "app": (time.perf_counter() - started) * 1e3}
        response.headers["Server-Timing"] = server_timing(timings)
    return response


def server_timing(timings: dict[str, float]) -> str:
    """The W3C Server-Timing header: where the request's time went inside the app.

    Browsers' developer tools show it, and bench/bench_serve.py splits the
    overhead over the bare forward pass with it. Sent only when SERVER_TIMING is on.
    """
    return ", ".join(f"{name};dur={ms:.3f}" for name, ms in timings.items())


def forward(arrays: list[np.ndarray], rt: Runtime) -> np.ndarray:
    """Stacked forward passes of at most ``forward_batch`` images.

    Passes of 8 run faster per image than one pass of 32 and need ~200 MB instead
    of ~540 MB of activations at 224 px (docs/performance.md).
    """
    predictor, chunk = rt.model.predictor, rt.settings.forward_batch
    outputs = []
    for start in range(0, len(arrays), chunk):
        part = arrays[start:start + chunk]
        batch = part[0][None] if len(part) == 1 else np.stack(part)  # [None] is a view, no copy
        outputs.append(predictor.predict_arrays(batch))
    return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)


def _all_failed(failures: list[tuple[int, str]], results: list) -> ApiError:
    statuses = {status for status, _ in failures}
    codes = {code for _, code in failures}
    status = statuses.pop() if len(statuses) == 1 else 400
    if len(failures) == 1:
        entry = results[0]["error"]
        return ApiError(status, entry["code"], entry["message"], extra={"predictions": results})
    code = codes.pop() if len(codes) == 1 else "invalid_images"
    return ApiError(status, code, f"none of the {len(failures)} files could be classified; "
                                  "see each entry in 'predictions'", extra={"predictions": results})
