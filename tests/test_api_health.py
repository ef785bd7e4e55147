"""/health and the fault paths: a database that is down (at start or mid-run) and a missing model.

The database outage is played with a TCP proxy in front of the real PostgreSQL:
cutting it drops every connection and refuses new ones, restoring it brings the
same database back, so the test sees the service recover on its own.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import socket
import threading

import pytest
from sqlalchemy.engine import make_url
from support import row_count

from galaxylib.artifact import SIDECAR, TFLITE_FILE
from galaxylib.files import sha256_file


def post_image(client, data: bytes, name: str = "g.jpg"):
    return client.post("/predict", data={"file": (io.BytesIO(data), name)}, content_type="multipart/form-data")


class TcpProxy:
    """127.0.0.1:<port> forwarding to PostgreSQL, which can be cut and restored."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections and reset the open ones, as a crashed server would."""
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self._listener is not listener:  # cut while this connection was arriving
                client.close()
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def proxy(postgres_url):
    url = make_url(postgres_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    yield proxy
    proxy.stop()


def via(proxy: TcpProxy, url: str) -> str:
    """The same database, reached through the proxy."""
    return make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


@pytest.fixture
def cutout(sample_files) -> bytes:
    return sample_files[1].read_bytes()


# --- ready ----------------------------------------------------------------------------------


def test_health_is_200_with_the_model_version_when_ready(make_app, database_url):
    response = make_app(database_url).test_client().get("/health")

    assert response.status_code == 200
    body = response.json
    assert (body["status"], body["live"], body["ready"]) == ("ok", True, True)
    assert body["model"]["loaded"] is True and body["model"]["model_version"].startswith("tiny-")
    assert body["model"]["trained_on_synthetic"] is True  # the tiny test artifact is saved as synthetic
    assert (body["model"]["temperature"], body["model"]["calibration"]) == (1.0, "temperature")  # no fit yet
    assert body["database"]["reachable"] is True


def test_liveness_answers_even_when_not_ready(make_app, sqlite_url, tmp_path):
    client = make_app(sqlite_url, model_path=str(tmp_path / "none")).test_client()

    assert client.get("/health").status_code == 503
    assert client.get("/health/live").json == {"status": "ok", "live": True}


# --- the database down ----------------------------------------------------------------------


def test_a_dead_database_port_gives_503s_and_no_detail(make_app, cutout):
    app = make_app("postgresql+psycopg://postgres@127.0.0.1:1/galaxy")  # nothing listens on port 1
    client = app.test_client()

    health = client.get("/health")
    predicted = post_image(client, cutout)

    assert health.status_code == 503
    assert health.json["database"]["reachable"] is False and health.json["model"]["loaded"] is True
    assert predicted.status_code == 503
    assert predicted.json["error"]["code"] == "database_unavailable"
    for response in (client.get("/predictions"), client.get("/predictions/1")):
        assert response.status_code == 503
        assert response.json["error"]["code"] == "database_unavailable"
    for response in (health, predicted):
        text = response.get_data(as_text=True)
        assert "127.0.0.1" not in text and "refused" not in text.lower() and "port" not in text


def test_the_database_going_down_mid_run_gives_503s_then_recovers(make_app, postgres_url, proxy, cutout):
    proxy.start()
    client = make_app(via(proxy, postgres_url)).test_client()
    assert post_image(client, cutout).status_code == 200

    proxy.stop()
    health = client.get("/health")
    predicted = post_image(client, cutout)

    assert health.status_code == 503 and health.json["database"]["reachable"] is False
    assert predicted.status_code == 503  # the model ran, but an unstored prediction is never a 200
    assert predicted.json["error"]["code"] == "database_unavailable"
    assert client.get("/predictions").status_code == 503
    assert row_count(postgres_url) == 1

    proxy.start()
    assert client.get("/health").status_code == 200
    assert post_image(client, cutout).status_code == 200
    assert row_count(postgres_url) == 2


def test_a_database_that_is_down_at_start_is_picked_up_when_it_comes(make_app, postgres_url, proxy, cutout):
    client = make_app(via(proxy, postgres_url)).test_client()  # the proxy is not listening yet
    assert client.get("/health").status_code == 503
    assert post_image(client, cutout).status_code == 503

    proxy.start()

    assert client.get("/health").status_code == 200  # the schema upgrade is retried now
    assert post_image(client, cutout).status_code == 200
    assert row_count(postgres_url) == 1


def test_schema_retries_are_spaced_while_the_database_is_down(make_app, postgres_url, proxy, cutout):
    client = make_app(via(proxy, postgres_url), db_retry_seconds=3600).test_client()
    proxy.start()

    # Within the retry interval the service does not hammer the database again...
    assert post_image(client, cutout).status_code == 503
    # ...and health reports what it knows without waiting for it.
    assert client.get("/health").status_code == 503


def test_a_recreated_database_gets_its_table_back_without_a_restart(make_app, database_url, cutout):
    from galaxylib.store.database import PredictionRecord, make_engine

    client = make_app(database_url).test_client()
    engine = make_engine(database_url)
    with engine.begin() as conn:  # as if the database had been restored empty
        PredictionRecord.__table__.drop(conn)
        conn.exec_driver_sql("DROP TABLE alembic_version")
    engine.dispose()

    assert post_image(client, cutout).status_code == 503  # the insert finds no table
    assert post_image(client, cutout).status_code == 200  # the upgrade runs again, at once
    assert row_count(database_url) == 1


# --- the model missing or broken -----------------------------------------------------------


def broken_copy(tiny_artifact, tmp_path, how: str):
    run = tmp_path / f"broken-{how}"
    shutil.copytree(tiny_artifact, run)
    sidecar = json.loads((run / SIDECAR).read_text())
    if how == "tampered":
        with open(run / TFLITE_FILE, "ab") as fh:
            fh.write(b"\0garbage")
    elif how == "not a flatbuffer":
        (run / TFLITE_FILE).write_bytes(b"this is not a tflite model" * 100)
        sidecar["files"][TFLITE_FILE] = sha256_file(run / TFLITE_FILE)
    elif how == "short class table":
        sidecar["class_names"] = sidecar["class_names"][:4]  # the network has ten outputs
    elif how == "no tflite":
        (run / TFLITE_FILE).unlink()
    (run / SIDECAR).write_text(json.dumps(sidecar))
    return run


@pytest.mark.parametrize(
    "how, logged",
    [
        ("missing", "does not exist"),
        ("tampered", "checksum"),
        ("not a flatbuffer", "MODEL NOT LOADED"),
        ("short class table", "4 class names for 10 outputs"),
        ("no tflite", "missing model.tflite"),
    ],
)
def test_a_missing_or_broken_model_logs_clearly_and_answers_503(
    make_app, sqlite_url, tiny_artifact, tmp_path, caplog, cutout, how, logged
):
    path = tmp_path / "nowhere" if how == "missing" else broken_copy(tiny_artifact, tmp_path, how)
    with caplog.at_level(logging.ERROR, logger="serve"):
        client = make_app(sqlite_url, model_path=str(path)).test_client()  # does not raise

    [record] = [r for r in caplog.records if "MODEL NOT LOADED" in r.getMessage()]
    assert logged in record.getMessage()
    health = client.get("/health")
    assert health.status_code == 503 and health.json["model"]["loaded"] is False
    predicted = post_image(client, cutout)
    assert predicted.status_code == 503
    assert predicted.json["error"]["code"] == "model_unavailable"
    assert str(path) not in predicted.get_data(as_text=True)
    assert client.get("/predictions").status_code == 200  # the audit trail stays readable
    assert row_count(sqlite_url) == 0


def test_no_model_configured_says_how_to_configure_one(make_app, sqlite_url, caplog):
    with caplog.at_level(logging.ERROR, logger="serve"):
        make_app(sqlite_url, model_path=None)

    assert any("set MODEL_PATH" in r.getMessage() for r in caplog.records)
