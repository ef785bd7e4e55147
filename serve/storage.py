"""The service's handle on galaxylib's PredictionStore, tolerant of a database that is down.

The store and its Alembic upgrade come from galaxylib. What this adds: the
service starts even when the database does not answer, retries the schema
upgrade (at most every ``retry_seconds``) until it succeeds, and turns
"not there yet" into a 503 rather than a crash or a lost row.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from galaxylib.store.database import PredictionStore, make_engine, upgrade_schema
from serve.errors import DatabaseUnavailable

log = logging.getLogger("serve")


class Database:
    def __init__(self, url: str, retry_seconds: float = 2.0):
        self.retry_seconds = retry_seconds
        self._lock = threading.Lock()
        self._schema_ready = False
        self._last_attempt = float("-inf")
        self._store: PredictionStore | None = None
        try:
            self._store = PredictionStore(engine=make_engine(url), upgrade=False)
        except Exception as exc:  # a malformed DATABASE_URL or a missing driver
            reason = str(exc).replace(url, "<DATABASE_URL>")  # never log a password
            log.error(
                "DATABASE_URL is not usable (%s: %s); every database call answers 503", type(exc).__name__, reason
            )
            return
        self.ensure_schema(force=True)

    @property
    def url(self) -> str:
        return self._store.url if self._store else "<unusable DATABASE_URL>"

    @property
    def dialect(self) -> str | None:
        return self._store.engine.dialect.name if self._store else None

    def ensure_schema(self, force: bool = False) -> bool:
        """Run the (idempotent) Alembic upgrade once; retry later after a failure."""
        if self._schema_ready:
            return True
        if self._store is None:
            return False
        with self._lock:
            if self._schema_ready:
                return True
            now = time.monotonic()
            if not force and now - self._last_attempt < self.retry_seconds:
                return False
            self._last_attempt = now
            try:
                upgrade_schema(self._store.engine)
            except Exception as exc:
                log.error("database not ready (%s): %s", type(exc).__name__, _first_line(exc))
                return False
            self._schema_ready = True
            log.info("database ready: %s", self._store.url)
            return True

    def store(self) -> PredictionStore:
        """The store, or DatabaseUnavailable (503) while the database is not usable."""
        if self._store is None or not self.ensure_schema():
            raise DatabaseUnavailable()
        return self._store

    def check(self) -> bool:
        """Readiness: the schema is in place and the database answers now."""
        if self._store is None or not self.ensure_schema():
            return False
        try:
            self._store.ping()
        except Exception as exc:
            log.warning("database ping failed (%s): %s", type(exc).__name__, _first_line(exc))
            return False
        return True

    def note_error(self, exc: DBAPIError) -> None:
        """After a 'no such table' error (the database was recreated), upgrade again at once."""
        text = str(getattr(exc, "orig", exc)).lower()
        if isinstance(exc, (ProgrammingError, OperationalError)) and (
            "no such table" in text or "does not exist" in text
        ):
            with self._lock:
                self._schema_ready = False
                self._last_attempt = float("-inf")


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
