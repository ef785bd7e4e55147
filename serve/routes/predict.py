"""POST /predict: classify one or many uploaded images and store every result.

The request's images go through galaxylib's one classify path (decode, the artifact's
preprocessing, stacked forward passes of ``forward_batch`` images) and the one record
builder; all rows are written in one transaction before anything is returned. A file that cannot be decoded gets its
own error entry and no row; if the database write fails the client gets a 503,
never a 200 for a prediction that was not stored.
"""

from __future__ import annotations

import time
import unicodedata

from flask import Blueprint, jsonify, request

from galaxylib.inference.classify import Classified, ImageInput, classify
from galaxylib.store.records import prediction_row
from serve.errors import ApiError
from serve.metrics import observe_predictions
from serve.multipart import Upload, read_files
from serve.runtime import runtime

bp = Blueprint("predict", __name__)

UPLOAD_FIELDS = ("file", "files")
MAX_FILENAME = 255  # characters of the client's file name kept in the response and the row
# galaxylib ImageError codes -> HTTP status.
STATUS_OF_CODE = {"empty_file": 400, "invalid_image": 400, "unsupported_media_type": 415, "image_too_large": 413}


def clean_filename(raw: str | None, index: int) -> str:
    """The client's name without any directory part or control characters; never empty. A name over
    255 characters is shortened in the middle, so its extension (.jpg) is kept."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if len(name) > MAX_FILENAME:
        stem, dot, suffix = name.rpartition(".")
        keep = dot + suffix if dot and stem and len(suffix) <= 16 else ""
        name = name[: len(name) - len(keep)][: MAX_FILENAME - len(keep)] + keep
    return name or f"upload-{index + 1}"


def read_uploads() -> list[Upload]:
    """All file parts of the request. Reading the body enforces MAX_CONTENT_LENGTH, and parsing
    it Werkzeug's limits on parts and form-field size: each a JSON 413 that names its limit."""
    body = request.get_data(cache=True)
    boundary = request.mimetype_params.get("boundary", "")
    return read_files(body, boundary, request.max_form_parts, request.max_form_memory_size)


def collect_uploads(max_batch: int) -> list[Upload]:
    if request.mimetype != "multipart/form-data":
        raise ApiError(
            400,
            "no_file",
            "send the images as multipart/form-data in a field named 'file' (repeat it for several images)",
        )
    parts = read_uploads()
    # A browser form with no file chosen sends one empty part with an empty filename.
    uploads = [u for u in parts if u.field in UPLOAD_FIELDS and (u.filename or u.data)]
    if not uploads:
        others = sorted({u.field for u in parts} - set(UPLOAD_FIELDS))
        hint = f" (got field(s) {', '.join(others)})" if others else ""
        raise ApiError(400, "no_file", f"no image uploaded: send one or more files in the multipart field 'file'{hint}")
    if len(uploads) > max_batch:
        raise ApiError(
            413, "too_many_files", f"{len(uploads)} files in one request; the limit is {max_batch} (MAX_BATCH)"
        )
    return uploads


@bp.post("/predict")
def predict():
    started = time.perf_counter()
    rt = runtime()
    uploads = collect_uploads(rt.settings.max_batch)
    read_ms = (time.perf_counter() - started) * 1e3
    predictor = rt.require_model()
    rt.db.store()  # 503 now, before any work, if the database is known to be down

    inputs = [ImageInput.from_bytes(u.data, clean_filename(u.filename, i)) for i, u in enumerate(uploads)]
    classified = classify(predictor, inputs, forward_batch=rt.settings.forward_batch)
    good = [c for c in classified if c.ok]
    if not good:
        raise _all_failed(classified)

    store_started = time.perf_counter()
    records = rt.db.store().add_many([prediction_row(c, "api") for c in good])  # atomic; a failure is a 503
    store_ms = (time.perf_counter() - store_started) * 1e3
    observe_predictions(good)  # after the commit: the counters agree with the table

    record_of = {id(c): r for c, r in zip(good, records)}
    results = [_result(c, record_of.get(id(c))) for c in classified]
    response = jsonify({"predictions": results})
    if rt.settings.server_timing:
        timings = {
            "read": read_ms,
            "decode": sum(c.decode_ms for c in good),
            "forward": sum(c.forward_ms for c in good),
            "store": store_ms,
            "app": (time.perf_counter() - started) * 1e3,
        }
        response.headers["Server-Timing"] = server_timing(timings)
    return response


def _error_code(item: Classified) -> str:
    return item.error.code if item.error.code in STATUS_OF_CODE else "invalid_image"


def _result(item: Classified, record) -> dict:
    """One entry of the response's ``predictions``: the stored prediction, or this file's error."""
    if not item.ok:
        return {"filename": item.name, "error": {"code": _error_code(item), "message": str(item.error)}}
    p = item.prediction
    return {
        "prediction_id": record.id,
        "filename": item.name,
        "predicted_class": p.predicted_class,
        "class_index": p.class_index,
        "confidence": p.confidence,
        "decision_rule": p.decision_rule,
        "most_probable_class": p.most_probable_class,
        "probabilities": p.probabilities,
        "in_distribution": p.in_distribution,  # null for a model without an OOD check
        "ood_score": p.ood_score,
        "model_version": p.model_version,
        "timestamp": record.as_dict()["created_at"],
    }


def server_timing(timings: dict[str, float]) -> str:
    """The W3C Server-Timing header: where the request's time went inside the app.

    Browsers' developer tools show it, and bench/bench_serve.py splits the
    overhead over the bare forward pass with it. Sent only when SERVER_TIMING is on.
    """
    return ", ".join(f"{name};dur={ms:.3f}" for name, ms in timings.items())


def _all_failed(classified: list[Classified]) -> ApiError:
    """Nothing could be classified: one error status for the request, each file's reason inside."""
    results = [_result(c, None) for c in classified]
    statuses = {STATUS_OF_CODE[_error_code(c)] for c in classified}
    codes = {_error_code(c) for c in classified}
    status = statuses.pop() if len(statuses) == 1 else 400
    if len(classified) == 1:
        entry = results[0]["error"]
        return ApiError(status, entry["code"], entry["message"], extra={"predictions": results})
    code = codes.pop() if len(codes) == 1 else "invalid_images"
    return ApiError(
        status,
        code,
        f"none of the {len(classified)} files could be classified; see each entry in 'predictions'",
        extra={"predictions": results},
    )
