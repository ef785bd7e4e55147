"""nbval runs the four pipeline notebooks in order on the tiny synthetic config,
writing into a temporary folder instead of reports/ and models/."""
import os
import tempfile
from pathlib import Path

_root = Path(__file__).resolve().parent.parent
_out = Path(tempfile.mkdtemp(prefix="nbval-"))
os.environ.setdefault("GALAXY_CONFIG", str(_root / "configs" / "tiny.yaml"))
os.environ.setdefault("GALAXY_RUN_NAME", "nbval")
os.environ.setdefault("GALAXY_REPORTS_ROOT", str(_out / "reports"))
os.environ.setdefault("GALAXY_MODELS_ROOT", str(_out / "models"))
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{_out / 'mlflow.db'}")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
