"""The real entry point, ``gunicorn serve.app:app``, configured only through the environment.

Concurrency: 4 workers, 8 parallel clients, 240 requests mixing single images,
batches and bad files; no 5xx, and exactly one row per successful prediction.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from support import ADMIN_TOKEN, Gunicorn, encode_image, random_rgb, row_count, temporary_postgres_database

pytestmark = pytest.mark.slow  # starts gunicorn servers

INTERPRETER_THREADS = 2
REQUEST_THREADS = 4  # gunicorn's threads per worker (GUNICORN_THREADS)


@pytest.fixture(scope="module")
def module_postgres_url():
    """One database for the module's server; fails (never skips) when PostgreSQL is unreachable."""
    with temporary_postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def server(tiny_artifact, module_postgres_url, tmp_path_factory):
    """gunicorn -w 4 on PostgreSQL, with the environment a user would set."""
    tmp = tmp_path_factory.mktemp("gunicorn")
    server = Gunicorn(
        {
            "DATABASE_URL": module_postgres_url,
            "MODEL_PATH": str(tiny_artifact),
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "MAX_UPLOAD_MB": "1",
            "MAX_BATCH": "8",
            "GALAXY_NUM_THREADS": str(INTERPRETER_THREADS),
            "GUNICORN_THREADS": str(REQUEST_THREADS),
        },
        workers=4,
        log_path=tmp / "log",
    )
    server.wait_until_serving(4)
    yield server
    server.stop()


def test_four_workers_answer_eight_parallel_clients_without_a_5xx_and_store_each_success(
    server, module_postgres_url, sample_files
):
    real = [(p.name, p.read_bytes()) for p in sample_files]
    generated = [(f"gen-{i}.png", encode_image(random_rgb(seed=i, size=64))) for i in range(10)]
    bad = ("notes.txt", b"this is not an image")

    def request_files(i: int) -> list[tuple[str, bytes]]:
        if i % 10 == 9:
            return [bad]
        if i % 4 == 3:
            return [real[i % len(real)], generated[i % 10], bad]  # a batch with one bad file
        if i % 4 == 2:
            return [real[i % len(real)], real[(i + 1) % len(real)], generated[(i + 3) % 10]]
        return [(real + generated)[i % (len(real) + len(generated))]]

    def send(i: int) -> tuple[int, dict]:
        files = [("file", (name, data)) for name, data in request_files(i)]
        response = requests.post(f"{server.url}/predict", files=files, timeout=60)
        return response.status_code, response.json()

    before = row_count(module_postgres_url)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(send, range(240)))

    statuses = [status for status, _ in results]
    assert not [s for s in statuses if s >= 500], server.log()[-3000:]
    assert set(statuses) == {200, 415}
    successes = [p for status, body in results if status == 200 for p in body["predictions"] if "error" not in p]
    failures = [p for _, body in results for p in body["predictions"] if "error" in p]
    planned = [request_files(i) for i in range(240)]
    assert len(successes) == sum(f != bad for files in planned for f in files)
    assert len(failures) == sum(f == bad for files in planned for f in files)
    assert len({p["prediction_id"] for p in successes}) == len(successes)
    assert row_count(module_postgres_url) - before == len(successes)


def test_each_worker_runs_no_more_threads_than_its_requests_and_the_interpreter_need(server):
    """No TensorFlow, BLAS or OpenMP pools: the main thread, gunicorn's request threads, the
    interpreter's threads and the body-deadline watchdog (serve/body_deadline.py)."""
    import psutil

    threads = [psutil.Process(pid).num_threads() for pid in server.worker_pids()]

    assert len(threads) == 4
    assert max(threads) <= 1 + REQUEST_THREADS + INTERPRETER_THREADS + 1, threads


def _exclusive_epoll_targets(pid: int) -> set[int]:
    """File descriptors that process ``pid`` watches with EPOLLEXCLUSIVE, read from /proc."""
    exclusive = 1 << 28  # EPOLLEXCLUSIVE
    targets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) != "anon_inode:[eventpoll]":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
        except OSError:
            continue
        for line in info.splitlines():
            if line.startswith("tfd:"):
                fields = line.split()
                if int(fields[fields.index("events:") + 1], 16) & exclusive:
                    targets.add(int(fields[1]))
    return targets


def _listening_fds(pid: int, port: int) -> set[int]:
    """The process's file descriptors that are the listening socket on ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    return {
        int(fd.name) for fd in Path(f"/proc/{pid}/fd").iterdir() if os.readlink(fd) in {f"socket:[{i}]" for i in inodes}
    }


def test_each_idle_worker_waits_on_the_listener_with_epollexclusive(server):
    """gunicorn.conf.py's worker registers the listening socket with EPOLLEXCLUSIVE, so the kernel
    wakes one idle worker per new connection, not all four (stock sync workers measured ~5 wake-ups)."""
    pids = server.worker_pids()
    assert len(pids) == 4
    for pid in pids:
        listeners = _listening_fds(pid, server.port)
        assert listeners, f"worker {pid} holds no listening socket on {server.port}"
        assert listeners <= _exclusive_epoll_targets(pid), f"worker {pid} waits without EPOLLEXCLUSIVE"


def test_an_oversized_upload_gets_a_json_413_over_a_real_socket(server, module_postgres_url):
    before = row_count(module_postgres_url)

    response = requests.post(
        f"{server.url}/predict", files={"file": ("big.jpg", os.urandom(3 * 1024 * 1024))}, timeout=60
    )

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert row_count(module_postgres_url) == before


def test_admin_endpoints_work_through_gunicorn_only_with_the_token(server, module_postgres_url):
    before = row_count(module_postgres_url)
    assert before > 0

    refused = requests.post(f"{server.url}/reset_db", headers={"Authorization": "Bearer wrong"}, timeout=30)
    assert refused.status_code == 401 and row_count(module_postgres_url) == before

    done = requests.post(f"{server.url}/reset_db", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
    assert done.json() == {"reset": True, "deleted": before}
    assert requests.get(f"{server.url}/predictions", timeout=30).json()["total"] == 0


def test_a_missing_model_keeps_gunicorn_up_answering_503_without_restarting_workers(tmp_path, sqlite_url):
    server = Gunicorn(
        {"DATABASE_URL": sqlite_url, "MODEL_PATH": str(tmp_path / "no-such-run")}, workers=2, log_path=tmp_path / "log"
    )
    try:
        server.wait_until_serving(2)
        pids = server.worker_pids()

        health = requests.get(f"{server.url}/health", timeout=30)
        predicted = requests.post(
            f"{server.url}/predict", files={"file": ("a.png", encode_image(random_rgb()))}, timeout=30
        )

        # Both workers booted (the model's absence is found at boot), answered, and are the same processes:
        # gunicorn restarts a worker that fails to boot, which would show as a third "Booting worker".
        assert health.status_code == 503 and health.json()["model"]["loaded"] is False
        assert predicted.status_code == 503 and predicted.json()["error"]["code"] == "model_unavailable"
        assert requests.get(f"{server.url}/health/live", timeout=30).status_code == 200
        assert server.proc.poll() is None and server.worker_pids() == pids  # no crash loop
        assert server.log().count("Booting worker") == 2 and "Worker exited" not in server.log()
        assert "MODEL NOT LOADED" in server.log() and "no-such-run" in server.log()
    finally:
        server.stop()


def test_model_url_is_fetched_once_before_the_workers_start(tiny_artifact, tmp_path, sqlite_url):
    import http.server
    import tarfile
    import threading

    www = tmp_path / "www"
    www.mkdir()
    with tarfile.open(www / "model.tar.gz", "w:gz") as tar:
        tar.add(tiny_artifact, arcname="run")
    fetched = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(www), **kwargs)

        def log_message(self, *args):
            fetched.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    target = tmp_path / "models" / "served"
    server = Gunicorn(
        {
            "DATABASE_URL": sqlite_url,
            "MODEL_PATH": str(target),
            "MODEL_URL": f"http://127.0.0.1:{httpd.server_address[1]}/model.tar.gz",
        },
        workers=2,
        log_path=tmp_path / "log",
    )
    try:
        server.wait_until_serving(2)

        assert requests.get(f"{server.url}/health", timeout=30).json()["model"]["loaded"] is True
        assert len(fetched) == 1 and "/model.tar.gz" in fetched[0]
        assert f"[{server.proc.pid}] [INFO] serve: downloading the model artifact" in server.log()  # the master
        assert (target / "model.json").is_file()
    finally:
        server.stop()
        httpd.shutdown()
        httpd.server_close()
