"""Benchmark: what the transport and a durable write cost on this machine, apart from the app.

Measured separately from bench/bench_serve.py, in alternating rounds:
  - a round trip through ``gunicorn -w 4`` (the worker class gunicorn.conf.py picks, one upload
    per new connection) to a bare WSGI function and to a one-line Flask view;
  - on PostgreSQL: ``SELECT 1``, and the one-row prediction INSERT with the default
    ``synchronous_commit`` and, on a second connection, with it off (the WAL flush it saves is
    what makes a row durable before its answer, so the server keeps it on).
Each is timed twice per round: after an idle gap (10 ms for HTTP, 8 ms for the database, about
what a request's forward pass leaves the other processes idle) and straight after, back to back.
The difference is the cost of waking processes that went idle, which on a virtual machine can
be most of the round trip.

    python bench/bench_floor.py
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

from bench_serve import database_arguments, free_port, make_database, multipart, post  # noqa: E402

from galaxylib.config import SAMPLES_DIR  # noqa: E402

GAPS_HTTP = (0.010, 0.0)  # seconds of idle before each timed call; 0 = straight after the last one
GAPS_DATABASE = (0.008, 0.0)

APPS = """
from flask import Flask, jsonify, request

def bare(environ, start_response):
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    body = b'{"predictions": [{"x": 1}]}'
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]

flask_app = Flask(__name__)

@flask_app.post("/predict")
def view():
    request.get_data()
    return jsonify({"predictions": [{"x": 1}]})
"""


def wait_until_answering(port: int, body: tuple[bytes, dict], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if post(port, *body)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"gunicorn on port {port} did not answer within {timeout:.0f} s")


def http_floor(rounds: int) -> dict[tuple[str, float], float]:
    sample = sorted(SAMPLES_DIR.glob("*.jpg"))[0]
    body = multipart([(sample.name, sample.read_bytes())])
    gunicorn = Path(sys.executable).with_name("gunicorn")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "floor_apps.py").write_text(APPS)
        env = {**os.environ, "PYTHONPATH": f"{tmp}:{REPO}"}
        servers = {}
        worker = ["-k", "serve.gunicorn_worker.ThreadedJsonWorker", "--threads", "4"]  # as gunicorn.conf.py
        for name, target in (
            ("bare WSGI function", "floor_apps:bare"),
            ("one-line Flask view", "floor_apps:flask_app"),
        ):
            port = free_port()
            servers[name] = (
                port,
                subprocess.Popen(
                    [str(gunicorn), "-w", "4", *worker, "-b", f"127.0.0.1:{port}", target],
                    cwd=tmp,
                    env=env,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                ),
            )
        try:
            for port, _ in servers.values():
                wait_until_answering(port, body)
            times: dict[tuple[str, float], list[float]] = {(name, gap): [] for name in servers for gap in GAPS_HTTP}
            for _ in range(rounds):
                for name, (port, _) in servers.items():
                    for gap in GAPS_HTTP:
                        time.sleep(gap)
                        status, _, seconds, _ = post(port, *body)
                        if status != 200:
                            raise RuntimeError(f"{name} answered {status}")
                        times[name, gap].append(seconds * 1e3)
        finally:
            for _, proc in servers.values():
                os.killpg(proc.pid, signal.SIGTERM)
            for _, proc in servers.values():
                proc.wait(20)
    return {name: statistics.median(v) for name, v in times.items()}


def database_floor(admin_url: str, rounds: int) -> dict[tuple[str, float], float]:
    import psycopg

    from galaxylib.store.database import PredictionRecord, PredictionStore, _PostgresWriter

    url, drop = make_database(admin_url)
    try:
        PredictionStore(url).close()  # the schema
        conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
        unsafe = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
        unsafe.execute("SET synchronous_commit = off")
        record = PredictionRecord(
            filename="g.jpg",
            predicted_class="Round Smooth",
            confidence=0.5,
            in_distribution=True,
            meta={
                "model_version": "bench",
                "sha256": "0" * 64,
                "size_bytes": 12811,
                "probabilities": {f"class {i}": 0.1 for i in range(10)},
            },
            created_at=dt.datetime.now(dt.UTC),
        )
        sql, params = _PostgresWriter.statement([record])  # exactly what the server sends
        variants = {
            "SELECT 1": lambda: conn.execute("SELECT 1", prepare=True).fetchall(),
            "one-row INSERT, synchronous_commit on (shipped)": lambda: conn.execute(
                sql, params, prepare=True
            ).fetchall(),
            "one-row INSERT, synchronous_commit off": lambda: unsafe.execute(sql, params, prepare=True).fetchall(),
        }
        times: dict[tuple[str, float], list[float]] = {(name, gap): [] for name in variants for gap in GAPS_DATABASE}
        for _ in range(rounds):
            for name, run in variants.items():
                for gap in GAPS_DATABASE:
                    time.sleep(gap)
                    started = time.perf_counter()
                    run()
                    times[name, gap].append((time.perf_counter() - started) * 1e3)
        conn.close()
        unsafe.close()
    finally:
        drop()
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> int:
    parser = database_arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; medians of {args.rounds} requests or writes, ms")
    medians = {**http_floor(args.rounds), **database_floor(args.postgres, args.rounds)}
    print(f"  {'':50s} {'after idle':>10s} {'back to back':>13s}")
    for name in dict.fromkeys(name for name, _ in medians):
        idle, busy = (ms for (n, _), ms in medians.items() if n == name)
        print(f"  {name:50s} {idle:10.3f} {busy:13.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
