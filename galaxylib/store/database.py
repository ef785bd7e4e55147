"""The store of the ``predictions`` table, shared by predict.sh, the API and the dashboard.

``DATABASE_URL`` picks the database (PostgreSQL in production, an SQLite file by
default). The schema is owned by Alembic (``galaxylib/store/migrations``);
``PredictionStore`` upgrades it on first use, and doing that twice is harmless.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import and_, create_engine, delete, event, func, insert, or_, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from galaxylib.config import database_url
from galaxylib.store.table import (
    WRITTEN_ATTRIBUTES,
    WRITTEN_COLUMNS,
    Base,
    PredictionFilter,
    PredictionRecord,
    row_values,
    utcnow,
)

__all__ = ["Base", "PredictionFilter", "PredictionRecord", "PredictionStore", "make_engine", "upgrade_schema", "utcnow"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str | None = None) -> Engine:
    url = url or database_url()
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # several writers (gunicorn workers, predict.sh)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args={"connect_timeout": 5})


def upgrade_schema(engine: Engine) -> None:
    """Alembic ``upgrade head``, serialised so parallel workers don't race: an advisory lock on
    PostgreSQL, an exclusive lock on the database file for SQLite (two gunicorn workers creating
    one fresh SQLite file at once failed with "table predictions already exists")."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with _sqlite_file_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(861027)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@contextlib.contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """flock on the SQLite file itself (SQLite's own locks are fcntl locks, which flock does not touch)."""
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:" or path.startswith("file:"):
        yield
        return
    import fcntl

    with open(path, "ab") as fh:  # an empty file is an empty SQLite database
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class PredictionStore:
    """Writes and queries prediction rows; one transaction per call."""

    def __init__(self, url: str | None = None, engine: Engine | None = None, upgrade: bool = True):
        self.engine = engine or make_engine(url)
        self.url = self.engine.url.render_as_string(hide_password=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = _PostgresWriter(self.engine) if self.engine.dialect.name == "postgresql" else None
        if upgrade:
            upgrade_schema(self.engine)

    def close(self) -> None:
        """Release every connection, the writer's held one included."""
        if self._writer is not None:
            self._writer.close()
        self.engine.dispose()

    def session(self) -> Session:
        return self._sessions()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def add_many(self, rows: Iterable[dict[str, Any]]) -> list[PredictionRecord]:
        """Insert rows (filename, predicted_class, confidence, metadata) atomically."""
        records = [PredictionRecord(**row_values(r)) for r in rows]
        if not records:
            return []
        if self._writer is not None:
            for record, new_id in zip(records, self._writer.insert(records)):
                record.id = new_id
            return records
        with self.session() as s, s.begin():
            s.add_all(records)
            s.flush()
        return records

    def replace_many(
        self, rows: list[dict[str, Any]], *, source: str, model_version: str, filenames: Iterable[str]
    ) -> tuple[int, int]:
        """In one transaction, delete the rows of ``source`` and ``model_version`` whose filename is
        in ``filenames``, then insert ``rows``: a batch loaded twice (a resumed catalogue shard)
        leaves one copy. Bulk: COPY on PostgreSQL, one executemany on SQLite. Returns
        (deleted, inserted)."""
        names = list(dict.fromkeys(filenames))
        now = utcnow()
        values = [row_values(r, now) for r in rows]
        if self.engine.dialect.name == "postgresql":
            return self._replace_postgres(values, source, model_version, names)
        c = PredictionRecord
        deleted = 0
        with self.session() as s, s.begin():
            for start in range(0, len(names), 500):  # SQLite caps the parameters of one statement
                stmt = delete(c).where(
                    c.filename.in_(names[start : start + 500]),
                    c.meta["source"].as_string() == source,
                    c.meta["model_version"].as_string() == model_version,
                )
                deleted += int(s.execute(stmt.execution_options(synchronize_session=False)).rowcount or 0)
            if values:
                s.execute(insert(c), values)
        return deleted, len(values)

    def _replace_postgres(
        self, values: list[dict[str, Any]], source: str, model_version: str, names: list[str]
    ) -> tuple[int, int]:
        fairy = self.engine.raw_connection()
        try:
            conn = fairy.driver_connection
            try:
                with conn.cursor() as cur:
                    cur.execute(
                        "DELETE FROM predictions WHERE filename = ANY(%s) AND metadata->>'source' = %s "
                        "AND metadata->>'model_version' = %s",
                        (names, source, model_version),
                    )
                    deleted = int(cur.rowcount or 0)
                    with cur.copy(f"COPY predictions ({', '.join(WRITTEN_COLUMNS)}) FROM STDIN") as copy:
                        for v in values:
                            copy.write_row(_sql_values(v))
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        finally:
            fairy.close()
        return deleted, len(values)

    def get(self, prediction_id: int) -> PredictionRecord | None:
        with self.session() as s:
            return s.get(PredictionRecord, prediction_id)

    def count(self, flt: PredictionFilter | None = None) -> int:
        stmt = select(func.count()).select_from(PredictionRecord)
        if flt:
            stmt = stmt.where(*flt.clauses())
        with self.session() as s:
            return int(s.execute(stmt).scalar_one())

    def list(
        self,
        flt: PredictionFilter | None = None,
        limit: int = 50,
        offset: int = 0,
        before: tuple[dt.datetime, int] | None = None,
    ) -> tuple[list[PredictionRecord], int]:
        """Newest first, with the total matching the filters (ignoring paging).

        ``before`` is a keyset cursor, the (created_at, id) of the last row already
        seen; it matches the sort order, so rows written by concurrent workers
        (a later created_at with a smaller id) are not skipped.
        """
        clauses = flt.clauses() if flt else []
        stmt = select(PredictionRecord).where(*clauses)
        if before is not None:
            c = PredictionRecord
            stmt = stmt.where(or_(c.created_at < before[0], and_(c.created_at == before[0], c.id < before[1])))
        stmt = stmt.order_by(PredictionRecord.created_at.desc(), PredictionRecord.id.desc())
        stmt = stmt.limit(limit).offset(offset)
        total_stmt = select(func.count()).select_from(PredictionRecord).where(*clauses)
        with self.session() as s:
            rows = list(s.execute(stmt).scalars())
            total = int(s.execute(total_stmt).scalar_one())
        return rows, total

    def has_class(self, predicted_class: str) -> bool:
        """Whether any stored row has this class (an index lookup: the filter's check of a name)."""
        with self.session() as s:
            stmt = select(PredictionRecord.id).where(PredictionRecord.predicted_class == predicted_class).limit(1)
            return s.execute(stmt).first() is not None

    def class_counts(self) -> dict[str, int]:
        stmt = select(PredictionRecord.predicted_class, func.count()).group_by(PredictionRecord.predicted_class)
        with self.session() as s:
            return {name: int(n) for name, n in s.execute(stmt)}

    def delete(self, ids: list[int] | None = None, flt: PredictionFilter | None = None) -> int:
        if ids is None and (flt is None or flt.is_empty()):
            raise ValueError("refusing to delete without ids or a filter; use reset to clear everything")
        stmt = delete(PredictionRecord)
        if ids is not None:
            stmt = stmt.where(PredictionRecord.id.in_(ids))
        if flt is not None:
            stmt = stmt.where(*flt.clauses())
        with self.session() as s, s.begin():
            return int(s.execute(stmt).rowcount or 0)

    def reset(self) -> None:
        """Drop and recreate the predictions table (schema stays at the Alembic head)."""
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(861027)"))
            PredictionRecord.__table__.drop(conn, checkfirst=True)
            PredictionRecord.__table__.create(conn)


def _sql_values(values: dict[str, Any]) -> tuple:
    """A row's attribute values in ``WRITTEN_COLUMNS`` order, as the driver takes them (metadata as JSON text)."""
    return tuple(
        json.dumps(values[a]) if c == "metadata" else values[a] for c, a in zip(WRITTEN_COLUMNS, WRITTEN_ATTRIBUTES)
    )


# Each written column's PostgreSQL array type for the batch INSERT's unnest (jsonb goes in as text)
_ARRAY_TYPES = {
    "filename": "text[]",
    "predicted_class": "text[]",
    "confidence": "float8[]",
    "metadata": "text[]::jsonb[]",
    "created_at": "timestamptz[]",
    "in_distribution": "bool[]",
}
_ARRAY_NAMES = tuple(f"c{i}" for i in range(len(WRITTEN_COLUMNS)))
assert set(_ARRAY_TYPES) == set(WRITTEN_COLUMNS), "a new column of predictions needs its array type here"


class _PostgresWriter:
    """Inserts prediction rows on PostgreSQL over one held connection.

    Every API request writes its rows, so this is the hot path: a prepared
    ``INSERT ... RETURNING`` on a connection kept checked out (no pool checkout or
    pre-ping round trip, no ORM unit of work) about halves the write
    (``bench/bench_db_write.py``, docs/performance.md). One statement in autocommit is atomic: a batch is
    stored whole or not at all. Durability is PostgreSQL's default
    (``synchronous_commit``): a row is on disk before its prediction is answered.
    """

    # ORDER BY n makes the serial ids follow the input order, so sorted ids map back to rows.
    MANY_SQL = (
        f"INSERT INTO predictions ({', '.join(WRITTEN_COLUMNS)}) SELECT {', '.join(_ARRAY_NAMES)} FROM "
        f"unnest({', '.join(f'%s::{_ARRAY_TYPES[c]}' for c in WRITTEN_COLUMNS)}) WITH ORDINALITY "
        f"AS u({', '.join(_ARRAY_NAMES)}, n) ORDER BY n RETURNING id"
    )
    # One row, the API's common case: plain VALUES took ~0.3 ms less than unnest at the
    # median (bench/bench_db_write.py, docs/performance.md).
    ONE_SQL = (
        f"INSERT INTO predictions ({', '.join(WRITTEN_COLUMNS)}) "
        f"VALUES ({', '.join('%s::jsonb' if c == 'metadata' else '%s' for c in WRITTEN_COLUMNS)}) RETURNING id"
    )
    PING_AFTER_IDLE_S = 2.0  # a connection unused this long is checked before a write

    def __init__(self, engine: Engine):
        import psycopg  # the PostgreSQL driver; only needed when the database is PostgreSQL

        self._driver_error = psycopg.Error
        self.engine = engine
        self._lock = threading.Lock()
        self._fairy = None  # the pool's wrapper; kept checked out
        self._last_used = 0.0

    @classmethod
    def statement(cls, records: list[PredictionRecord], batch_form: bool = False) -> tuple[str, tuple]:
        """The SQL and parameters that insert ``records``: VALUES for one row, unnest for more
        (or always, with ``batch_form``; the write benches time both from here)."""
        rows = [_sql_values({a: getattr(r, a) for a in WRITTEN_ATTRIBUTES}) for r in records]
        if len(rows) == 1 and not batch_form:
            return cls.ONE_SQL, rows[0]
        return cls.MANY_SQL, tuple(list(column) for column in zip(*rows))

    def insert(self, records: list[PredictionRecord]) -> list[int]:
        sql, params = self.statement(records)
        with self._lock:
            try:
                conn = self._connection()
                rows = conn.execute(sql, params, prepare=True).fetchall()
            except self._driver_error as exc:
                self._drop()
                raise DBAPIError.instance(sql, None, exc, self._driver_error) from exc
            self._last_used = time.monotonic()
        return sorted(r[0] for r in rows)

    def _connection(self):
        if self._fairy is not None and time.monotonic() - self._last_used > self.PING_AFTER_IDLE_S:
            try:  # a read, so a failure here is safe to retry on a new connection
                self._fairy.driver_connection.execute("SELECT 1")
            except Exception:
                self._drop()
        if self._fairy is None:
            self._fairy = self.engine.raw_connection()  # the pool pre-pings it
            self._fairy.driver_connection.autocommit = True
        return self._fairy.driver_connection

    def _drop(self) -> None:
        if self._fairy is not None:
            try:
                self._fairy.invalidate()
            except Exception:
                pass
            self._fairy = None

    def close(self) -> None:
        with self._lock:
            if self._fairy is not None:
                try:
                    self._fairy.driver_connection.autocommit = False
                    self._fairy.close()  # back to the pool, which dispose() then closes
                except Exception:
                    self._drop()
                self._fairy = None
