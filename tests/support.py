"""Plain helpers shared by the tests (fixtures live in conftest.py).

Imported as ``from support import ...``: a module named conftest would clash with
notebooks/conftest.py under pytest's default import mode.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ADMIN_TOKEN = "test-admin-token-0123456789"


def random_rgb(seed: int = 0, size: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def encode_image(image, fmt: str = "PNG", **save_kwargs) -> bytes:
    """A PIL image or uint8/uint16 array, encoded as an upload would be."""
    import io

    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()


def row_count(url: str) -> int:
    """Rows in the predictions table, read straight from the database."""
    from galaxylib.store.database import PredictionStore

    store = PredictionStore(url, upgrade=False)
    try:
        return store.count()
    finally:
        store.close()


@contextlib.contextmanager
def temporary_postgres_database() -> Iterator[str]:
    """A fresh database on the local PostgreSQL, dropped afterwards; fails (never skips)
    when PostgreSQL is unreachable."""
    from sqlalchemy import create_engine, text

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"galaxy_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.fail(f"PostgreSQL is required at {POSTGRES_ADMIN_URL} and is not reachable: {exc}")
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def trust_check_data(work_dir, n_per_class: int = 4, seed: int = 0):
    """The small synthetic set and split that ``add_trust_check`` fits on. Written once per folder:
    a later call on the same folder reads that set, whatever its arguments."""
    from galaxylib.data.galaxy10 import open_galaxy10
    from galaxylib.data.split import make_split
    from galaxylib.data.synthetic import write_synthetic_h5

    path = work_dir / "synthetic.h5"
    if not path.is_file():
        write_synthetic_h5(path, n_per_class=n_per_class, seed=seed, show_progress=False, workers=1)
    data = open_galaxy10(path)
    return data, make_split(data.labels(), data.fingerprint(), seed, (0.5, 0.25, 0.25))


def add_trust_check(
    run_dir,
    work_dir,
    n_per_class: int = 4,
    seed: int = 0,
    methods: tuple[str, ...] = ("mahalanobis", "knn", "max_softmax"),
) -> dict:
    """Fit calibration and the OOD check of an artifact on a small synthetic set (the real step)."""
    from galaxylib.pipeline.trust import fit_trust

    data, split = trust_check_data(work_dir, n_per_class, seed)
    return fit_trust(
        data, split, run_dir, work_dir / "cache", seed=seed, n_cases=6, methods=methods, show_progress=False
    )


def default_ctrl_c() -> None:
    """A ``preexec_fn``: SIGINT at its default in the child, as a terminal's foreground job has it.
    A job started in the background (CI, nohup, `&`) inherits it ignored, and Python then never
    raises KeyboardInterrupt, so a test of Ctrl-C would see the run finish."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


REPO = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).with_name("gunicorn")


class Gunicorn:
    """``gunicorn serve.app:app`` started as a user would, configured only through ``env``."""

    def __init__(self, env: dict[str, str], workers: int, log_path: Path):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        full_env = {
            k: v
            for k, v in os.environ.items()
            if k
            not in ("DATABASE_URL", "MODEL_PATH", "MODEL_URL", "ADMIN_TOKEN", "WEB_CONCURRENCY", "GUNICORN_CMD_ARGS")
        }
        full_env.update(env)
        self.proc = subprocess.Popen(
            [str(GUNICORN), "-w", str(workers), "-b", f"127.0.0.1:{self.port}", "--no-control-socket", "serve.app:app"],
            cwd=REPO,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_until_serving(self, workers: int, timeout: float = 120) -> None:
        """Until every worker has logged that it finished starting (ready or not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
            if self.log().count("serve: ready:") >= workers:
                return
            time.sleep(0.1)
        pytest.fail(f"gunicorn workers did not start in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()

    def worker_pids(self) -> set[int]:
        import psutil

        return {c.pid for c in psutil.Process(self.proc.pid).children()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # quick shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
