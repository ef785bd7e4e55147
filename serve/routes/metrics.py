"""GET /metrics: Prometheus' scrape target, open like /health (it holds counts, no predictions)."""

from __future__ import annotations

from flask import Blueprint, Response

from serve.metrics import metrics_response

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    return metrics_response()
