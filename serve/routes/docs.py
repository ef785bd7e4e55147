"""/openapi.json, the /docs page that renders it, and a small index at /."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from serve.openapi import openapi_spec
from serve.runtime import runtime

bp = Blueprint("docs", __name__)


@bp.get("/openapi.json")
def openapi():
    rt = runtime()
    return jsonify(openapi_spec(rt.settings.max_batch, rt.settings.max_upload_mb, rt.class_names))


@bp.get("/docs")
def docs():
    # Self-contained page (no CDN): the service may run where the internet is not reachable.
    return current_app.send_static_file("docs.html")


@bp.get("/")
def index():
    return jsonify(
        {
            "service": "galaxy10-classifier",
            "docs": "/docs",
            "openapi": "/openapi.json",
            "health": "/health",
            "metrics": "/metrics",
        }
    )
