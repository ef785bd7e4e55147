"""POST /reset_db: drop and recreate the predictions table (admin only)."""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify

from serve.auth import admin_required
from serve.runtime import runtime

bp = Blueprint("admin", __name__)
log = logging.getLogger("serve")


@bp.post("/reset_db")
@admin_required
def reset_db():
    store = runtime().db.store()
    before = store.count()
    store.reset()
    log.warning("predictions table reset by an admin request (%d rows dropped)", before)
    return jsonify({"reset": True, "deleted": before})
