"""gunicorn settings for ``gunicorn serve.app:app`` (read from the working directory).

Command-line flags override these (``gunicorn -w 4 -b 0.0.0.0:$PORT serve.app:app``).
"""

import os
import shutil
import tempfile
from pathlib import Path

import galaxylib.config  # noqa: F401 - loads .env, so PORT, WEB_CONCURRENCY and MODEL_URL apply here too
from galaxylib.inference.threads import limit_native_threads

# Native thread pools default to one thread; the model's own threads are GALAXY_NUM_THREADS
# (default: all cores). Set here, in the master, so every forked worker inherits them.
limit_native_threads()

bind = [f"0.0.0.0:{os.environ['PORT']}"] if os.environ.get("PORT") else ["127.0.0.1:8000"]
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
# Threads, so a client trickling its upload holds a thread, not the worker (serve/gunicorn_worker.py);
# the model still runs one batch at a time per process, and BODY_TIMEOUT_S bounds a body's arrival.
worker_class = "serve.gunicorn_worker.ThreadedJsonWorker"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))  # a 32-image batch queued behind others
graceful_timeout = 30
# The model and the database pool are created in each worker, after the fork: a LiteRT
# interpreter or an open connection must never be shared between processes.
preload_app = False
# uploads are capped by MAX_UPLOAD_MB in the app; headers by gunicorn's defaults.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None  # "-" for stdout
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")


def prepare_metrics_dir(server) -> None:
    """Give the workers one PROMETHEUS_MULTIPROC_DIR, so /metrics sums them all (serve/metrics.py).

    Set in the master before any worker forks, and before prometheus_client is imported anywhere
    (it picks its mode at import). Unset: a fresh temporary folder, removed at exit. Set by the
    operator: created if missing and emptied, since files left by an earlier run would be counted.
    """
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if not path:
        path = tempfile.mkdtemp(prefix="galaxy-prometheus-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        server.galaxy_metrics_tmpdir = path
    else:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
    server.log.info("prometheus multiprocess folder: %s", path)


def on_starting(server):
    prepare_metrics_dir(server)
    fetch_model(server)


def child_exit(server, worker):
    """Drop the dead worker's live gauges (galaxy_model_info); its counters stay in the sums."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    tmpdir = getattr(server, "galaxy_metrics_tmpdir", None)
    if tmpdir:
        shutil.rmtree(tmpdir, ignore_errors=True)


def fetch_model(server):
    """Download MODEL_URL once, in the master, before the workers start.

    Each worker would otherwise fetch it at import time, where a slow download
    counts against the worker boot timeout. A failure is only logged: the
    workers then report it and answer 503 instead of crash-looping.
    """
    model_path = os.environ.get("MODEL_PATH", "").strip()
    if not os.environ.get("MODEL_URL", "").strip() or (model_path and os.path.isdir(model_path)):
        return  # nothing to fetch: keep the master free of numpy and friends
    try:
        from serve.logs import configure_logging
        from serve.model_loader import resolve_model_dir
        from serve.settings import Settings

        configure_logging()
        resolve_model_dir(Settings.from_env())
    except Exception as exc:  # noqa: BLE001 - reported again, clearly, by every worker
        server.log.error("could not fetch MODEL_URL before start: %s", exc)
