"""The OpenAPI 3.1 description served at /openapi.json (the /docs page renders it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from serve.params import DEFAULT_LIMIT, MAX_LIMIT


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _query(name: str, schema: dict, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _class_schema(class_names: Sequence[str] | None) -> dict[str, Any]:
    """The served model's classes (its artifact's table), or any name while none is loaded."""
    return {"type": "string", "enum": list(class_names)} if class_names else {"type": "string", "maxLength": 64}


def _filters(class_names: Sequence[str] | None) -> list[dict[str, Any]]:
    served = f" The served model's: {', '.join(class_names)}." if class_names else ""
    return [
        _query(
            "predicted_class",
            {"type": "string", "maxLength": 64},
            "Only this class: one of the served model's classes, or a class of stored predictions "
            "(an earlier model's)." + served,
        ),
        *FILTERS,
    ]


FILTERS = [
    _query("min_confidence", {"type": "number", "minimum": 0, "maximum": 1}, "Confidence at least this."),
    _query(
        "since",
        {"type": "string", "anyOf": [{"format": "date"}, {"format": "date-time"}]},
        "Created at or after (ISO 8601 date or date-time; no zone = UTC; a date is its first moment).",
    ),
    _query(
        "until",
        {"type": "string", "anyOf": [{"format": "date"}, {"format": "date-time"}]},
        "Created at or before (ISO 8601 date or date-time; no zone = UTC; a date is its last moment).",
    ),
    _query("filename", {"type": "string", "maxLength": 512}, "Exact uploaded filename."),
    _query(
        "in_distribution",
        {"type": "boolean"},
        "Only predictions the out-of-distribution check passed (true) or flagged (false); "
        "rows from a model without the check match neither.",
    ),
]
ADMIN_ERRORS = {
    "401": _error("Missing or wrong admin token (`missing_token`, `invalid_token`)."),
    "403": _error("Admin endpoints disabled: no ADMIN_TOKEN configured (`admin_disabled`)."),
    "503": _error("Database unavailable."),
}


def openapi_spec(max_batch: int, max_upload_mb: float, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Galaxy10 DECaLS morphology classifier",
            "version": "1.0.0",
            "description": (
                "Classify galaxy cutouts (JPEG/PNG) into the served model's classes (Galaxy10 DECaLS' "
                "ten by default); every prediction is stored and can be audited. Errors are "
                'always `{"error": {"code", "message"}}`.'
            ),
        },
        "paths": {
            "/predict": {
                "post": {
                    "summary": "Classify one or many images",
                    "description": (
                        f"Multipart upload; repeat the field `file` (or `files`) for a batch of up to "
                        f"{max_batch} images, at most {max_upload_mb:g} MB per request. Each result is "
                        "stored before it is returned. In a batch, a file that cannot be decoded gets "
                        "an `error` entry in place and is not stored."
                    ),
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Predictions, in upload order",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}}
                            },
                        },
                        "400": _error(
                            "No file, an empty, truncated or corrupt image (`no_file`, `empty_file`, `invalid_image`)."
                        ),
                        "413": _error(
                            "Request over MAX_UPLOAD_MB, more files than MAX_BATCH, an image over the pixel "
                            "limit, more than 1,000 form parts or a form field over 500 kB (`payload_too_large`, "
                            "`too_many_files`, `image_too_large`, `too_many_parts`, `form_field_too_large`)."
                        ),
                        "408": _error(
                            "The request body did not arrive within BODY_TIMEOUT_S (`request_timeout`); nothing was "
                            "stored."
                        ),
                        "415": _error("Not a JPEG or PNG (`unsupported_media_type`)."),
                        "503": _error("Model not loaded or database unavailable; nothing was stored."),
                    },
                }
            },
            "/predictions": {
                "get": {
                    "summary": "List stored predictions, newest first",
                    "parameters": [
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 0, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
                            "Page size.",
                        ),
                        _query("offset", {"type": "integer", "minimum": 0, "default": 0}, "Rows to skip."),
                        _query(
                            "cursor", {"type": "string"}, "`next_cursor` from the previous page (instead of offset)."
                        ),
                        *_filters(class_names),
                    ],
                    "responses": {
                        "200": {
                            "description": "A page and the total matching the filters",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/PredictionPage"}}
                            },
                        },
                        "400": _error("Invalid or unknown parameter."),
                        "503": _error("Database unavailable."),
                    },
                }
            },
            "/predictions/{id}": {
                "get": {
                    "summary": "One stored prediction",
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
                    ],
                    "responses": {
                        "200": {
                            "description": "The prediction",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/StoredPrediction"}}
                            },
                        },
                        "400": _error("Not a positive integer id (`invalid_id`)."),
                        "404": _error("No such prediction (`not_found`)."),
                        "503": _error("Database unavailable."),
                    },
                }
            },
            "/predictions/delete": {
                "delete": {
                    "summary": "Delete predictions by ids or by filters (admin)",
                    "security": [{"bearer": []}],
                    "parameters": _filters(class_names),
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "ids": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                                        **{p["name"]: p["schema"] for p in _filters(class_names)},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "How many rows were deleted",
                            "content": {
                                "application/json": {
                                    "schema": {"type": "object", "properties": {"deleted": {"type": "integer"}}}
                                }
                            },
                        },
                        "400": _error("Neither ids nor a filter, or an invalid one."),
                        **ADMIN_ERRORS,
                    },
                }
            },
            "/reset_db": {
                "post": {
                    "summary": "Drop and recreate the predictions table (admin)",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": {
                            "description": "Reset done",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {"reset": {"type": "boolean"}, "deleted": {"type": "integer"}},
                                    }
                                }
                            },
                        },
                        **ADMIN_ERRORS,
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Readiness: model loaded and database reachable",
                    "responses": {
                        "200": {"description": "Ready"},
                        "503": {"description": "Not ready; the body says what is missing"},
                    },
                }
            },
            "/health/live": {"get": {"summary": "Liveness", "responses": {"200": {"description": "Alive"}}}},
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics: requests, latency, predictions, confidence, model version",
                    "description": (
                        "The Prometheus text format (0.0.4), summed over all gunicorn workers; no token "
                        "needed. Metric names and example queries: docs/monitoring.md."
                    ),
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}
            },
            "/docs": {
                "get": {"summary": "Human-readable API documentation", "responses": {"200": {"description": "HTML"}}}
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "The server's ADMIN_TOKEN"}
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        }
                    },
                },
                "Prediction": {
                    "type": "object",
                    "properties": {
                        "prediction_id": {"type": "integer"},
                        "filename": {"type": "string"},
                        "predicted_class": _class_schema(class_names),
                        "class_index": {
                            "type": "integer",
                            "minimum": 0,
                            **({"maximum": len(class_names) - 1} if class_names else {}),
                        },
                        "confidence": {"type": "number"},
                        "decision_rule": {
                            "type": "string",
                            "enum": ["most_probable", "balanced"],
                            "description": (
                                "how predicted_class was chosen: the most probable class, or (a model trained "
                                "to balance its classes) the model's own balanced decision, which can differ "
                                "from most_probable_class"
                            ),
                        },
                        "most_probable_class": _class_schema(class_names),
                        "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
                        "in_distribution": {
                            "type": ["boolean", "null"],
                            "description": (
                                "false: the image does not look like the cutouts the model was trained on (the "
                                "class is still given); null: the model has no out-of-distribution check"
                            ),
                        },
                        "ood_score": {
                            "type": ["number", "null"],
                            "description": (
                                "larger is less like the training cutouts; in_distribution is ood_score <= the "
                                "artifact's threshold, set so that at least 95 % of in-distribution cutouts pass"
                            ),
                        },
                        "model_version": {"type": "string"},
                        "timestamp": {"type": "string", "format": "date-time"},
                    },
                },
                "FileError": {
                    "type": "object",
                    "properties": {
                        "filename": {"type": "string"},
                        "error": {"$ref": "#/components/schemas/Error/properties/error"},
                    },
                },
                "PredictResponse": {
                    "type": "object",
                    "properties": {
                        "predictions": {
                            "type": "array",
                            "items": {
                                "oneOf": [
                                    {"$ref": "#/components/schemas/Prediction"},
                                    {"$ref": "#/components/schemas/FileError"},
                                ]
                            },
                        }
                    },
                },
                "StoredPrediction": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "filename": {"type": "string"},
                        "predicted_class": {"type": "string"},
                        "confidence": {"type": "number"},
                        "in_distribution": {"type": ["boolean", "null"]},
                        "created_at": {"type": "string", "format": "date-time"},
                        "metadata": {
                            "type": "object",
                            "description": (
                                "the prediction record: source, model_version, class_index, top_classes, probabilities, "
                                "width, height, size_bytes, sha256, latency_ms, batch_size, example, ood_score, in_distribution"
                            ),
                        },
                    },
                },
                "PredictionPage": {
                    "type": "object",
                    "properties": {
                        "predictions": {"type": "array", "items": {"$ref": "#/components/schemas/StoredPrediction"}},
                        "total": {"type": "integer"},
                        "limit": {"type": "integer"},
                        "offset": {"type": "integer"},
                        "next_cursor": {"type": ["string", "null"]},
                    },
                },
            },
        },
    }
