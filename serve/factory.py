"""The Flask application factory.

``create_app`` never raises for a missing model or an unreachable database:
it logs the problem and the API answers 503 until it is fixed, so a process
manager does not crash-loop the service. Settings errors (a malformed number in
the environment) do raise: that is a typo to fix, not a fault to wait out.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask, Response

from serve.body_deadline import BodyDeadline
from serve.errors import register_error_handlers
from serve.logs import configure_logging
from serve.metrics import install_metrics
from serve.model_loader import load_model
from serve.runtime import Runtime
from serve.settings import Settings
from serve.storage import Database

log = logging.getLogger("serve")


def create_app(settings: Settings | None = None) -> Flask:
    configure_logging()
    settings = settings or Settings.from_env()

    # Explicit paths: with an editable install made before serve/ existed, "serve" imports as
    # a namespace package and Flask cannot infer them.
    here = Path(__file__).resolve().parent
    app = Flask(
        "serve",
        root_path=str(here),
        instance_path=str(here / "instance"),
        static_folder="static",
        static_url_path="/static",
    )
    app.config.update(
        DEBUG=False,
        TESTING=False,
        PROPAGATE_EXCEPTIONS=False,  # every error goes through our JSON handlers
        MAX_CONTENT_LENGTH=settings.max_content_length,
    )
    app.json.sort_keys = False  # keep the documented field order

    runtime = Runtime(
        settings=settings,
        model=load_model(settings),
        db=Database(settings.database_url, settings.db_retry_seconds),
    )
    app.extensions["galaxy"] = runtime

    from serve.routes import admin, docs, health, metrics, predict, predictions

    for module in (predict, predictions, admin, health, docs, metrics):
        app.register_blueprint(module.bp)
    register_error_handlers(app)
    install_metrics(app, runtime.model.model_version)

    app.wsgi_app = BodyDeadline(app.wsgi_app, settings.body_timeout_s)  # type: ignore[method-assign]

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    log.info(
        "ready: model=%s database=%s admin=%s max_batch=%d max_upload=%gMB threads=%d",
        runtime.model.model_version or "NOT LOADED",
        runtime.db.url,
        "enabled" if settings.admin_enabled else "disabled (no ADMIN_TOKEN)",
        settings.max_batch,
        settings.max_upload_mb,
        settings.num_threads,
    )
    return app
