"""Project paths and environment settings (read from the environment or ``.env``)."""
from __future__ import annotations

import os
from pathlib import Path

from dotenv import load_dotenv

PROJECT_ROOT = Path(__file__).resolve().parent.parent
load_dotenv(PROJECT_ROOT / ".env", override=False)

DATA_DIR = PROJECT_ROOT / "data"
RAW_DIR = DATA_DIR / "raw"
CACHE_DIR = DATA_DIR / "cache"
MODELS_DIR = PROJECT_ROOT / "models"
REPORTS_DIR = PROJECT_ROOT / "reports"
CONFIGS_DIR = PROJECT_ROOT / "configs"
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
SHARED_DIR = PROJECT_ROOT.parent / "shared"
SAMPLES_DIR = SHARED_DIR / "galaxy10_samples"
GZ1_DIR = SHARED_DIR / "gz1_coarse"

GALAXY10_FILENAME = "Galaxy10_DECals.h5"
GALAXY10_PATH = RAW_DIR / GALAXY10_FILENAME


def database_url() -> str:
    """``DATABASE_URL``, or an SQLite file in ``data/`` so a fresh machine needs nothing."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        # Heroku/Render style URLs name the driver "postgres"; SQLAlchemy wants psycopg.
        if url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url[len("postgres://"):]
        elif url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        return url
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DATA_DIR / 'predictions.db'}"


MLRUNS_DIR = PROJECT_ROOT / "mlruns"


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
