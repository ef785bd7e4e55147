"""Project paths and environment settings (read from the environment or ``.env``).

Paths are built from the project root, and every generated folder can be moved with
an environment variable (``GALAXY_DATA_ROOT``, ``GALAXY_MODELS_ROOT``, ``GALAXY_REPORTS_ROOT``),
which is how the tests keep out of the checkout. A path a user types (``MODEL_PATH``,
``--model``, ``--dataset``) is relative to the folder they typed it in: the scripts that
change directory pass that folder on as ``GALAXY_USER_CWD``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from dotenv import load_dotenv

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_FILE = PROJECT_ROOT / ".env"
SQLITE_FILE_PREFIX = "sqlite:///"


def _is_relative_sqlite(url: str) -> bool:
    return (
        url.startswith(SQLITE_FILE_PREFIX)
        and not url.startswith(SQLITE_FILE_PREFIX + "/")
        and url != SQLITE_FILE_PREFIX + ":memory:"
    )


def _anchor_env_file_paths(set_before: set[str]) -> None:
    """A relative path in ``.env`` (``MODEL_PATH=models/<run>``, ``DATABASE_URL=sqlite:///data/x.db``,
    as .env.example shows) means the project's folder, where ``.env`` is, not the folder a command
    happens to run in. Made absolute here, once, so every process started later inherits the same
    file. A variable already set in the environment stays as the user typed it."""
    for name in ("DATABASE_URL", "MLFLOW_TRACKING_URI"):
        value = os.environ.get(name, "").strip()
        if name not in set_before and _is_relative_sqlite(value):
            os.environ[name] = SQLITE_FILE_PREFIX + str(PROJECT_ROOT / value[len(SQLITE_FILE_PREFIX) :])
    model_path = os.environ.get("MODEL_PATH", "").strip()
    if "MODEL_PATH" not in set_before and model_path and not Path(model_path).expanduser().is_absolute():
        os.environ["MODEL_PATH"] = str(PROJECT_ROOT / model_path)


_set_before_env_file = set(os.environ)
load_dotenv(ENV_FILE, override=False)
_anchor_env_file_paths(_set_before_env_file)


def _root(variable: str, default: Path) -> Path:
    value = os.environ.get(variable, "").strip()
    return Path(value).expanduser().resolve() if value else default


DATA_DIR = _root("GALAXY_DATA_ROOT", PROJECT_ROOT / "data")
RAW_DIR = DATA_DIR / "raw"
CACHE_DIR = DATA_DIR / "cache"
MODELS_DIR = _root("GALAXY_MODELS_ROOT", PROJECT_ROOT / "models")
REPORTS_DIR = _root("GALAXY_REPORTS_ROOT", PROJECT_ROOT / "reports")
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
SHARED_DIR = PROJECT_ROOT.parent / "shared"
SAMPLES_DIR = SHARED_DIR / "galaxy10_samples"
GZ1_DIR = SHARED_DIR / "gz1_coarse"
MLRUNS_DIR = PROJECT_ROOT / "mlruns"

GALAXY10_FILENAME = "Galaxy10_DECals.h5"
GALAXY10_PATH = RAW_DIR / GALAXY10_FILENAME


def user_path(path: str | os.PathLike) -> Path:
    """A path as the user meant it: relative to the folder they typed it in."""
    path = Path(path).expanduser()
    if not path.is_absolute():
        path = Path(os.environ.get("GALAXY_USER_CWD", "").strip() or os.getcwd()) / path
    return Path(os.path.normpath(path))  # "../shared/x" typed in /work/main is /work/shared/x


def database_url() -> str:
    """``DATABASE_URL``, or an SQLite file in ``data/`` so a fresh machine needs nothing."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        # Heroku/Render style URLs name the driver "postgres"; SQLAlchemy wants psycopg.
        if url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url[len("postgres://") :]
        elif url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        elif _is_relative_sqlite(url):
            url = SQLITE_FILE_PREFIX + str(user_path(url[len(SQLITE_FILE_PREFIX) :]))  # a relative file, as typed
        return url
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DATA_DIR / 'predictions.db'}"


def mlflow_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, or an SQLite store inside ``./mlruns``.

    MLflow 3 refuses new plain-file stores, so the local default is
    ``mlruns/mlflow.db`` with run artifacts under ``mlruns/artifacts``.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    MLRUNS_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{MLRUNS_DIR / 'mlflow.db'}"


def git_commit() -> str | None:
    """The checkout's commit, recorded in artifacts for provenance (None outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
