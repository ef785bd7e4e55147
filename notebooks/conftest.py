"""nbval runs the four pipeline notebooks, then 05_catalog_inference, in order on the tiny synthetic config, writing into a
temporary folder instead of data/, reports/ and models/. They are marked slow (they train)."""

import os
import tempfile
from pathlib import Path

import pytest

_root = Path(__file__).resolve().parent.parent
_out = Path(tempfile.mkdtemp(prefix="nbval-"))
os.environ.setdefault("GALAXY_CONFIG", str(_root / "configs" / "tiny.yaml"))
os.environ.setdefault("GALAXY_RUN_NAME", "nbval")
os.environ.setdefault("GALAXY_REPORTS_ROOT", str(_out / "reports"))
os.environ.setdefault("GALAXY_MODELS_ROOT", str(_out / "models"))
os.environ.setdefault("GALAXY_DATA_ROOT", str(_out / "data"))
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{_out / 'mlflow.db'}")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_collection_modifyitems(items):
    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)
