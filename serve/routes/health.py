"""Liveness and readiness.

``/health`` is readiness: 200 only when the model is loaded and the database
answers, else 503 with what is missing (load balancers stop routing to it).
``/health/live`` is liveness: 200 while the process serves requests, so an
orchestrator does not restart a worker just because the database is down.
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from serve.runtime import runtime

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    rt = runtime()
    database_ok = rt.db.check()
    model_ok = rt.model.loaded
    ready = database_ok and model_ok
    body = {
        "status": "ok" if ready else "unavailable",
        "live": True,
        "ready": ready,
        "model": {
            "loaded": model_ok,
            "model_version": rt.model.model_version,
            "image_size": rt.model.predictor.image_size if model_ok else None,
            # trained on the renderer's galaxies: a plumbing demo, not a classifier of real cutouts
            "trained_on_synthetic": rt.model.predictor.artifact.synthetic if model_ok else None,
            # how far to trust the answers: the calibration (a temperature, with a class bias or
            # without) and the OOD method (or null)
            "temperature": rt.model.predictor.trust.temperature if model_ok else None,
            "calibration": (
                None
                if not model_ok
                else "temperature"
                if rt.model.predictor.trust.bias is None
                else "temperature_and_bias"
            ),
            "ood_check": (rt.model.predictor.trust.scorer.method if model_ok and rt.model.predictor.has_ood else None),
        },
        "database": {"reachable": database_ok, "dialect": rt.db.dialect},
    }
    if not model_ok:
        body["model"]["error"] = "no model loaded; see the server log"
    if not database_ok:
        body["database"]["error"] = "database unreachable or not migrated; see the server log"
    response = jsonify(body)
    response.status_code = 200 if ready else 503
    return response


@bp.get("/health/live")
def live():
    return jsonify({"status": "ok", "live": True})
