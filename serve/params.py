"""Validation of query parameters, ids and JSON bodies: anything malformed is a 400.

Unknown parameters are refused too, so a typo such as ``min_conf=0.9`` is an
error instead of a silently unfiltered answer.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from galaxylib.store.database import PredictionFilter
from serve.errors import ApiError

FILTER_PARAMS = ("predicted_class", "min_confidence", "since", "until", "filename", "in_distribution")
LIST_PARAMS = ("limit", "offset", "cursor") + FILTER_PARAMS
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_IDS = 10_000
MAX_ID = 2**63 - 1


def bad(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def reject_unknown(params: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise bad("invalid_parameter", f"unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(allowed)}")


def single_values(args) -> dict[str, str]:
    """A query string as a plain dict; a parameter given twice is ambiguous, so refused."""
    out: dict[str, str] = {}
    for key in args:
        values = args.getlist(key)
        if len(values) > 1:
            raise bad("invalid_parameter", f"{key} is given more than once")
        out[key] = values[0]
    return out


def parse_int(value: Any, name: str, *, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise bad("invalid_parameter", f"{name} must be an integer")
    if isinstance(value, str):
        if not re.fullmatch(r"\s*[+-]?\d{1,19}\s*", value):
            raise bad("invalid_parameter", f"{name} must be an integer, got {value[:40]!r}")
        value = int(value)
    if not minimum <= value <= maximum:
        raise bad("invalid_parameter", f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def parse_id(value: Any) -> int:
    try:
        return parse_int(value, "id", minimum=1, maximum=MAX_ID)
    except ApiError as exc:
        raise bad("invalid_id", "a prediction id is a positive integer") from exc


def parse_datetime(value: Any, name: str, end_of_day: bool = False) -> dt.datetime:
    """ISO 8601 (a date, or a date and time); no zone means UTC. A plain date is a whole UTC day:
    its first moment, or with ``end_of_day`` its last, so that ``until=2026-12-06`` keeps that day."""
    if not isinstance(value, str) or not value.strip():
        raise bad("invalid_parameter", f"{name} must be an ISO 8601 date or date-time")
    text = value.strip()
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        day = None
    if day is not None:
        start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
        return start + dt.timedelta(days=1, microseconds=-1) if end_of_day else start
    # "+00:00" in an unencoded query string arrives as " 00:00".
    text = re.sub(r" (\d{2}:?\d{2})$", r"+\1", text)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise bad(
            "invalid_parameter",
            f"{name} must be an ISO 8601 date or date-time such as 2026-11-27T10:00:00Z, got {value[:40]!r}",
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def parse_confidence(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise bad("invalid_parameter", "min_confidence must be a number between 0 and 1")
    try:
        number = float(value)
    except ValueError:
        raise bad(
            "invalid_parameter", f"min_confidence must be a number between 0 and 1, got {str(value)[:40]!r}"
        ) from None
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise bad("invalid_parameter", f"min_confidence must be a number between 0 and 1, got {str(value)[:40]!r}")
    return number


def parse_filter(
    params: Mapping[str, Any],
    class_names: Sequence[str] | None = None,
    stored_class: Callable[[str], bool] | None = None,
) -> PredictionFilter:
    """The filters shared by GET /predictions and DELETE /predictions/delete.

    ``predicted_class`` must be one of the served model's classes, or a class that rows in the table
    already have (``stored_class``): the table keeps the rows of earlier models, with their own
    classes. Any name up to 64 characters passes while no model is loaded. A name that is neither is
    refused, so a typo is an error rather than an empty page."""
    predicted_class = params.get("predicted_class")
    if predicted_class is not None:
        if not isinstance(predicted_class, str) or not 0 < len(predicted_class) <= 64:
            raise bad("invalid_parameter", "predicted_class must be a class name of at most 64 characters")
        if (
            class_names is not None
            and predicted_class not in class_names
            and not (stored_class is not None and stored_class(predicted_class))
        ):
            raise bad(
                "invalid_parameter",
                f"predicted_class must be one of the served model's classes "
                f"({', '.join(class_names)}) or a class of stored predictions, "
                f"got {predicted_class[:64]!r}",
            )
    filename = params.get("filename")
    if filename is not None and (not isinstance(filename, str) or len(filename) > 512):
        raise bad("invalid_parameter", "filename must be a string of at most 512 characters")
    since = parse_datetime(params["since"], "since") if params.get("since") is not None else None
    until = parse_datetime(params["until"], "until", end_of_day=True) if params.get("until") is not None else None
    if since and until and since > until:
        raise bad("invalid_parameter", "since is after until")
    min_confidence = parse_confidence(params["min_confidence"]) if params.get("min_confidence") is not None else None
    in_distribution = (
        parse_boolean(params["in_distribution"], "in_distribution")
        if params.get("in_distribution") is not None
        else None
    )
    return PredictionFilter(
        predicted_class=predicted_class,
        min_confidence=min_confidence,
        since=since,
        until=until,
        filename=filename,
        in_distribution=in_distribution,
    )


def parse_boolean(value: Any, name: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no) from a query string, or a JSON boolean."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise bad("invalid_parameter", f"{name} must be true or false (or 1/0, yes/no)")


def parse_ids(value: Any) -> list[int]:
    if not isinstance(value, list) or not value:
        raise bad("invalid_ids", "ids must be a non-empty list of prediction ids")
    if len(value) > MAX_IDS:
        raise bad("invalid_ids", f"at most {MAX_IDS} ids per request")
    try:
        return [parse_id(v) for v in value]
    except ApiError:
        raise bad("invalid_ids", "ids must be positive integers") from None


def encode_cursor(created_at: dt.datetime, row_id: int) -> str:
    """An opaque keyset cursor: the (created_at, id) of the last row of a page."""
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=dt.UTC)
    raw = f"{created_at.astimezone(dt.UTC).isoformat()}|{row_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(value: str) -> tuple[dt.datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        stamp, _, row_id = raw.partition("|")
        created_at = dt.datetime.fromisoformat(stamp)
        if created_at.tzinfo is None or not row_id.isdigit():
            raise ValueError
        return created_at, int(row_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad("invalid_cursor", "cursor is not one this API returned; start again without it") from None
