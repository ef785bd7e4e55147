"""Prometheus metrics for the API: requests, latency, predictions, confidence, the model version.

Under gunicorn each worker is a separate process with its own counters, so a scrape answered by
one worker must still report all of them: with ``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn.conf.py
sets it by default) prometheus_client keeps every value in a per-process file in that folder and
``/metrics`` sums the files. Without it (the Flask test client, ``flask run``) each app gets its
own registry, so building many apps in one process never registers a metric name twice.

The ``/metrics`` request itself is not counted: a scrape every 15 s would otherwise dominate
the request rate of a quiet service, and Prometheus records its own scrapes (``up``,
``scrape_duration_seconds``). docs/monitoring.md lists the metrics and example queries.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask, Response, current_app, g, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector

import galaxylib.config  # noqa: F401 - loads .env first: prometheus_client reads PROMETHEUS_MULTIPROC_DIR on import

if TYPE_CHECKING:
    from galaxylib.inference.classify import Classified

EXTENSION = "galaxy_metrics"
METRICS_ENDPOINT = "metrics.metrics"  # the blueprint's view, left out of the request metrics
UNMATCHED = "unmatched"  # route label of requests no URL rule matched (404, and 405 from routing)
# Any token is a valid HTTP method: a client inventing them must not invent label values.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Around the ~15 ms of a single-image POST /predict up to the 60 s gunicorn timeout of a big batch.
LATENCY_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def multiprocess_dir() -> str | None:
    """The shared folder of gunicorn's workers, or None in a single process."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip() or None


@dataclass(frozen=True)
class Metrics:
    """One app's metric objects, and the registry they live in."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    predictions: Counter
    confidence: Histogram
    model_info: Gauge

    @classmethod
    def create(cls) -> Metrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter(
                "galaxy_http_requests",
                "HTTP requests answered, by URL rule, method and status (/metrics itself is not counted)",
                ["route", "method", "status"],
                registry=registry,
            ),
            latency=Histogram(
                "galaxy_http_request_duration_seconds",
                "Time in the app per request, by URL rule",
                ["route"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            predictions=Counter(
                "galaxy_predictions",
                "Stored predictions, by predicted class and the "
                "out-of-distribution verdict (unknown: the model has no check)",
                ["predicted_class", "in_distribution"],
                registry=registry,
            ),
            confidence=Histogram(
                "galaxy_prediction_confidence",
                "Confidence of stored predictions (the calibrated probability of the reported class)",
                buckets=CONFIDENCE_BUCKETS,
                registry=registry,
            ),
            # An info-style gauge: prometheus_client's Info does not work across processes. "livemax" merges
            # the workers into one series and drops a dead worker's file (gunicorn.conf.py's child_exit).
            model_info=Gauge(
                "galaxy_model_info",
                "The served model version (always 1)",
                ["model_version"],
                multiprocess_mode="livemax",
                registry=registry,
            ),
        )

    def render(self) -> bytes:
        """The text exposition: every worker's values summed, or this app's registry alone."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=path)
        return generate_latest(merged)


def install_metrics(app: Flask, model_version: str | None) -> Metrics:
    """Create the app's metrics, publish the model version, and time and count every request."""
    metrics = Metrics.create()
    app.extensions[EXTENSION] = metrics
    if model_version:
        metrics.model_info.labels(model_version).set(1)

    @app.before_request
    def _start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _count_request(response: Response) -> Response:
        if request.endpoint != METRICS_ENDPOINT:
            route = request.url_rule.rule if request.url_rule is not None else UNMATCHED  # never the raw path
            method = request.method if request.method in METHODS else "other"
            metrics.requests.labels(route, method, str(response.status_code)).inc()
            started = g.get("metrics_started")
            if started is not None:
                metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response

    return metrics


def _verdict(in_distribution: bool | None) -> str:
    return "unknown" if in_distribution is None else "true" if in_distribution else "false"


def observe_predictions(items: Iterable[Classified]) -> None:
    """Count predictions once they are stored, so the counters agree with the predictions table.

    POST /predict calls it after the commit, with the inputs that were classified; an input
    without a prediction (a file that could not be decoded) is skipped.
    """
    metrics: Metrics | None = current_app.extensions.get(EXTENSION)
    if metrics is None:
        return
    for item in items:
        p = item.prediction
        if p is None:
            continue
        metrics.predictions.labels(p.predicted_class, _verdict(p.in_distribution)).inc()
        metrics.confidence.observe(p.confidence)


def metrics_response() -> Response:
    """GET /metrics: the Prometheus text format (version 0.0.4, what every scraper reads)."""
    metrics: Metrics = current_app.extensions[EXTENSION]
    return Response(metrics.render(), content_type=CONTENT_TYPE_PLAIN_0_0_4)
