"""The audit trail: list, fetch and (admin only) delete stored predictions."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from serve.auth import check_admin
from serve.errors import ApiError
from serve.params import (
    DEFAULT_LIMIT,
    FILTER_PARAMS,
    LIST_PARAMS,
    MAX_LIMIT,
    bad,
    decode_cursor,
    encode_cursor,
    parse_filter,
    parse_id,
    parse_ids,
    parse_int,
    reject_unknown,
    single_values,
)
from serve.runtime import runtime

bp = Blueprint("predictions", __name__)


@bp.get("/predictions")
def list_predictions():
    """Newest first; ``offset`` or the opaque ``cursor`` from the previous page."""
    params = single_values(request.args)
    reject_unknown(params, LIST_PARAMS)
    flt = parse_filter(params, runtime().class_names, stored_class=_stored_class)
    limit = parse_int(params.get("limit", DEFAULT_LIMIT), "limit", minimum=0, maximum=MAX_LIMIT)
    if "offset" in params and "cursor" in params:
        raise bad("invalid_parameter", "use either offset or cursor, not both")
    offset = parse_int(params.get("offset", 0), "offset", minimum=0, maximum=2**31 - 1)
    before = decode_cursor(params["cursor"]) if "cursor" in params else None

    # One row more than asked says whether another page exists.
    rows, total = runtime().db.store().list(flt, limit=limit + 1, offset=offset, before=before)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
    body = {"predictions": [r.as_dict() for r in rows], "total": total, "limit": limit, "next_cursor": next_cursor}
    if before is None:
        body["offset"] = offset
    return jsonify(body)


@bp.get("/predictions/<raw_id>")
def get_prediction(raw_id: str):
    if raw_id == "delete":  # the admin route's path; GET is not one of its methods
        raise ApiError(405, "method_not_allowed", "use DELETE on /predictions/delete", headers={"Allow": "DELETE"})
    prediction_id = parse_id(raw_id)
    record = runtime().db.store().get(prediction_id)
    if record is None:
        raise ApiError(404, "not_found", f"no prediction with id {prediction_id}")
    return jsonify(record.as_dict())


@bp.delete("/predictions/delete")
def delete_predictions():
    """By ``{"ids": [...]}``, by the listing's filters (JSON body or query), or both (AND)."""
    check_admin()
    body = _json_body()
    query = single_values(request.args)
    reject_unknown(query, FILTER_PARAMS)
    reject_unknown(body, ("ids",) + FILTER_PARAMS)
    overlap = set(query) & set(body)
    if overlap:
        raise bad("invalid_parameter", f"{', '.join(sorted(overlap))} given both in the query and the body")
    ids = parse_ids(body["ids"]) if "ids" in body else None
    flt = parse_filter(
        {**query, **{k: v for k, v in body.items() if k != "ids"}}, runtime().class_names, stored_class=_stored_class
    )
    if ids is None and flt.is_empty():
        raise bad(
            "missing_selection",
            'say what to delete: {"ids": [...]} or at least one filter '
            f"({', '.join(FILTER_PARAMS)}); POST /reset_db clears everything",
        )
    deleted = runtime().db.store().delete(ids=ids, flt=None if flt.is_empty() else flt)
    return jsonify({"deleted": deleted})


def _json_body() -> dict:
    if not request.get_data(cache=True):
        return {}
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise bad("invalid_json", 'the body must be a JSON object such as {"ids": [1, 2]}')
    return body


def _stored_class(name: str) -> bool:
    """Whether rows of an earlier model with this class are in the table (a 503 if it is down)."""
    return runtime().db.store().has_class(name)
