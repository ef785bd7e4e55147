"""The predictions table on PostgreSQL and SQLite: migrations, writes, queries."""

import datetime as dt
import subprocess
import sys

import pytest
from sqlalchemy import inspect

from galaxylib.config import PROJECT_ROOT
from galaxylib.store.database import PredictionFilter, PredictionStore


def rows(n, cls="Round Smooth", conf=0.9):
    return [
        {
            "filename": f"g{i}.jpg",
            "predicted_class": cls,
            "confidence": conf,
            "metadata": {"model_version": "m1", "probabilities": {"Round Smooth": conf}},
        }
        for i in range(n)
    ]


def test_the_schema_is_created_by_alembic_and_upgrading_twice_is_harmless(database_url):
    store = PredictionStore(database_url)
    PredictionStore(database_url)
    insp = inspect(store.engine)
    assert {"predictions", "alembic_version"} <= set(insp.get_table_names())
    cols = {c["name"] for c in insp.get_columns("predictions")}
    assert cols == {"id", "filename", "predicted_class", "confidence", "metadata", "in_distribution", "created_at"}


RACE_SCRIPT = """
import multiprocessing, sys


def open_store(url, results):
    from galaxylib.store.database import PredictionStore  # imported in each worker, as gunicorn's do
    try:
        PredictionStore(url).close()
        results.put("ok")
    except Exception as exc:
        results.put(type(exc).__name__ + ": " + str(exc).splitlines()[0])


if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    for attempt in range(8):
        results = ctx.Queue()
        procs = [ctx.Process(target=open_store, args=(f"sqlite:///{sys.argv[1]}/fresh-{attempt}.db", results))
                 for _ in range(3)]
        for proc in procs:
            proc.start()
        print([results.get(timeout=120) for _ in procs])
        for proc in procs:
            proc.join(60)
"""


def test_workers_creating_one_fresh_sqlite_file_at_once_all_get_the_schema(tmp_path):
    """Without the lock, most attempts had a worker fail with "table predictions already exists"."""
    script = tmp_path / "race.py"
    script.write_text(RACE_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert lines == ["['ok', 'ok', 'ok']"] * 8, done.stdout


def test_a_table_from_before_the_ood_check_upgrades_in_place_and_keeps_its_rows(database_url):
    """Revision 0001 with a stored row, then the current code: the row stays, its verdict is NULL,
    and new rows carry theirs."""
    from alembic import command
    from alembic.config import Config

    from galaxylib.store.database import MIGRATIONS_DIR, make_engine

    engine = make_engine(database_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.exec_driver_sql(
            "INSERT INTO predictions (filename, predicted_class, confidence, metadata, created_at) "
            "VALUES ('old.jpg', 'Merging', 0.5, '{}', CURRENT_TIMESTAMP)"
        )
    engine.dispose()
    store = PredictionStore(database_url)
    store.add_many([{**rows(1)[0], "in_distribution": False}])
    listed, total = store.list()
    assert total == 2
    assert {r.filename: r.in_distribution for r in listed} == {"old.jpg": None, "g0.jpg": False}
    assert [r.filename for r in store.list(PredictionFilter(in_distribution=False))[0]] == ["g0.jpg"]


def test_metadata_is_jsonb_on_postgresql(postgres_url):
    store = PredictionStore(postgres_url)
    col = [c for c in inspect(store.engine).get_columns("predictions") if c["name"] == "metadata"][0]
    assert type(col["type"]).__name__ == "JSONB"


def test_rows_round_trip_with_their_metadata(database_url):
    store = PredictionStore(database_url)
    [rec] = store.add_many(rows(1))
    got = store.get(rec.id).as_dict()
    assert got["filename"] == "g0.jpg" and got["metadata"]["probabilities"] == {"Round Smooth": 0.9}
    assert dt.datetime.fromisoformat(got["created_at"]).tzinfo is not None


def test_one_row_and_a_batch_store_the_same_fields(database_url):
    """PostgreSQL writes one row with VALUES and several with unnest: both must store alike."""
    store = PredictionStore(database_url)
    verdicts = [True, False, None]  # the OOD check passed, flagged, or absent
    batch = [{**row, "in_distribution": ood} for row, ood in zip(rows(3), verdicts)]
    written = store.add_many([{**rows(1)[0], "in_distribution": False}]) + store.add_many(batch)
    expected = [{**rows(1)[0], "in_distribution": False}] + batch

    for record, row in zip(written, expected, strict=True):
        stored = store.get(record.id).as_dict()
        assert {k: stored[k] for k in ("filename", "predicted_class", "confidence", "in_distribution")} == {
            k: row[k] for k in ("filename", "predicted_class", "confidence", "in_distribution")
        }
        assert stored["metadata"] == row["metadata"]
        assert dt.datetime.fromisoformat(stored["created_at"]) == record.created_at


def test_every_writer_fills_the_columns_of_the_table_itself():
    """One column list, read off the table: the ORM's values, the bulk COPY and the held-connection
    INSERTs all name exactly the table's columns but the id, so a new column cannot be left out of one."""
    from galaxylib.store.database import _PostgresWriter
    from galaxylib.store.table import WRITTEN_ATTRIBUTES, WRITTEN_COLUMNS, PredictionRecord, row_values

    assert set(WRITTEN_COLUMNS) == {c.name for c in PredictionRecord.__table__.columns} - {"id"}
    assert set(row_values(rows(1)[0])) == set(WRITTEN_ATTRIBUTES)
    for sql in (_PostgresWriter.ONE_SQL, _PostgresWriter.MANY_SQL):
        named = sql.split("(", 1)[1].split(")", 1)[0]
        assert [c.strip() for c in named.split(",")] == list(WRITTEN_COLUMNS)


def test_listing_is_newest_first_with_total_and_filters(database_url):
    store = PredictionStore(database_url)
    store.add_many(rows(3, "Merging", 0.4))
    store.add_many(rows(2, "Barred Spiral", 0.95))
    listed, total = store.list(limit=2)
    assert total == 5 and [r.predicted_class for r in listed] == ["Barred Spiral", "Barred Spiral"]
    listed, total = store.list(PredictionFilter(min_confidence=0.5))
    assert total == 2
    _, total = store.list(PredictionFilter(predicted_class="Merging", filename="g1.jpg"))
    assert total == 1


def test_deleting_by_ids_and_by_filter(database_url):
    store = PredictionStore(database_url)
    recs = store.add_many(rows(4))
    assert store.delete(ids=[recs[0].id, recs[1].id]) == 2
    assert store.delete(flt=PredictionFilter(filename="g3.jpg")) == 1
    assert store.count() == 1
    with pytest.raises(ValueError):
        store.delete()  # no ids and no filter would delete everything


def test_reset_empties_the_table_and_keeps_it_usable(database_url):
    store = PredictionStore(database_url)
    store.add_many(rows(3))
    store.reset()
    assert store.count() == 0
    assert store.add_many(rows(1))[0].id >= 1


def test_a_batch_gets_ids_in_the_order_of_its_rows(database_url):
    store = PredictionStore(database_url)
    recs = store.add_many(rows(5))
    assert [r.id for r in recs] == sorted(r.id for r in recs)
    assert [store.get(r.id).filename for r in recs] == [f"g{i}.jpg" for i in range(5)]


def test_a_write_after_reset_uses_the_new_table(database_url):
    store = PredictionStore(database_url)
    store.add_many(rows(2))  # on PostgreSQL this prepares the INSERT on the held connection
    store.reset()
    store.add_many(rows(1))
    assert store.count() == 1


def _kill_other_backends(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    engine.dispose()


def test_a_write_on_a_lost_connection_fails_cleanly_and_the_next_one_reconnects(postgres_url):
    from sqlalchemy.exc import OperationalError

    store = PredictionStore(postgres_url)
    store.add_many(rows(1))
    _kill_other_backends(postgres_url)  # as a PostgreSQL restart would

    with pytest.raises(OperationalError):
        store.add_many(rows(1, "Merging"))  # may have been lost in flight: reported, not retried
    store.add_many(rows(1, "Barred Spiral"))

    assert [r.predicted_class for r in store.list()[0]] == ["Barred Spiral", "Round Smooth"]
    store.close()


def test_an_idle_connection_is_checked_before_a_write(postgres_url, monkeypatch):
    from galaxylib.store import database as db

    store = PredictionStore(postgres_url)
    store.add_many(rows(1))
    _kill_other_backends(postgres_url)
    monkeypatch.setattr(db._PostgresWriter, "PING_AFTER_IDLE_S", 0.0)

    store.add_many(rows(1, "Merging"))  # the ping finds the dead connection; the write goes to a new one

    assert store.count() == 2
    store.close()
