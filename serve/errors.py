"""One error shape for every failure: ``{"error": {"code": ..., "message": ...}}``.

Clients branch on the stable ``code``; ``message`` is for humans. Nothing from
an exception's text or traceback reaches a client unless it was written for one
(``ApiError`` and galaxylib's ``ImageError`` messages are).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, has_request_context, jsonify, request
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from werkzeug.exceptions import HTTPException

log = logging.getLogger("serve")

# Stable codes for the HTTP errors Werkzeug raises before a view runs.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An error meant for the client: status, stable code, safe message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}


class DatabaseUnavailable(ApiError):
    def __init__(self) -> None:
        super().__init__(
            503,
            "database_unavailable",
            "the predictions database is unreachable; nothing was stored, try again later",
            headers={"Retry-After": "5"},
        )


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None
) -> Response:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if extra:
        body.update(extra)
    response = jsonify(body)
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _too_large_message(limit: int | None) -> str:
    """Werkzeug raises the same bare 413 for a body over MAX_CONTENT_LENGTH and for a form over
    its parser's limits; only the first is "over the upload limit". (POST /predict names the
    parser's limit itself, serve/multipart.py; this covers any other form read.)"""
    length = request.content_length if has_request_context() else None
    if limit and length is not None and length <= limit:
        parts, field = request.max_form_parts, request.max_form_memory_size
        limits = [
            f"at most {parts:,} multipart parts" if parts else "",
            f"form fields of at most {field:,} bytes" if field else "",
        ]
        return (
            f"the request body is within the upload limit of {limit / 1048576:g} MB but over a limit of the "
            f"form parser ({' and '.join(x for x in limits if x)})"
        )
    if limit:
        return f"the request body is over the upload limit of {limit / 1048576:g} MB"
    return "the request body is too large"


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.headers, exc.extra)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        if status == 413:
            message = _too_large_message(app.config.get("MAX_CONTENT_LENGTH"))
        elif status == 405:
            message = "this method is not allowed on this URL"
        elif status == 404:
            message = "no such endpoint; see /openapi.json"
        else:
            message = exc.description or exc.name
        headers = {}
        if status == 405:
            allowed = exc.get_response().headers.get("Allow")
            if allowed:
                headers["Allow"] = allowed
        return error_response(status, code, message, headers)

    @app.errorhandler(DBAPIError)
    def _db_error(exc: DBAPIError) -> Response:
        if isinstance(exc, (OperationalError, InterfaceError)):  # an outage: one line per request
            detail = str(exc.orig or exc).strip().splitlines()
            log.error("database unavailable (%s): %s", type(exc).__name__, detail[0] if detail else "")
        else:
            log.error("database error: %s", type(exc).__name__, exc_info=exc)
        runtime = current_app.extensions.get("galaxy")
        if runtime is not None:
            runtime.db.note_error(exc)
        return _api_error(DatabaseUnavailable())

    @app.errorhandler(SQLAlchemyError)
    def _sqlalchemy_error(exc: SQLAlchemyError) -> Response:
        # Pool timeouts and the like: the database is not answering in time.
        log.error("database layer error: %s", exc.__class__.__name__, exc_info=exc)
        return _api_error(DatabaseUnavailable())

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "an internal error occurred; it has been logged")
