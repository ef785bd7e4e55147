"""The ``serve`` logger: one line per event on stderr, which gunicorn collects."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("serve")


def configure_logging() -> None:
    """Log to stderr unless the host process configured logging itself (pytest, an embedding app)."""
    log.setLevel(logging.INFO)
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s [%(process)d] [%(levelname)s] serve: %(message)s"))
        log.addHandler(handler)
