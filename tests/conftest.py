"""Shared fixtures: real sample cutouts, a tiny real artifact, database URLs.

Every folder the kit generates (data/, models/, reports/, mlruns/) is moved to a temporary
folder before galaxylib is imported, for this process and the scripts it starts: the tests
never write into the checkout (./test.sh checks that afterwards).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_scratch = Path(tempfile.mkdtemp(prefix="galaxy-tests-"))
for _name, _folder in (
    ("GALAXY_DATA_ROOT", "data"),
    ("GALAXY_MODELS_ROOT", "models"),
    ("GALAXY_REPORTS_ROOT", "reports"),
):
    os.environ.setdefault(_name, str(_scratch / _folder))
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{_scratch / 'mlflow.db'}")
# Hypothesis keeps caches (constants, unicode data) in .hypothesis/ under the working folder
# unless told otherwise, even with no example database.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(_scratch / "hypothesis"))

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from support import ADMIN_TOKEN, temporary_postgres_database  # noqa: E402

from galaxylib.config import SAMPLES_DIR  # noqa: E402

# Property tests: no example database (it would be written into the checkout), no per-example
# deadline (the host's speed varies), and the same examples on every run of CI.
settings.register_profile(
    "kit", database=None, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("kit")


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The 40 real Galaxy10 DECaLS cutouts in ../shared (never copied into the repo)."""
    if not (SAMPLES_DIR / "labels.csv").is_file():
        pytest.fail(
            f"the real sample cutouts are missing: expected {SAMPLES_DIR}/labels.csv "
            "(../shared/galaxy10_samples beside the repository)"
        )
    return SAMPLES_DIR


@pytest.fixture(scope="session")
def sample_files(samples_dir) -> list[Path]:
    return sorted(samples_dir.glob("*.jpg"))


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory) -> Path:
    """A real artifact (keras + tflite + sidecar) of an untrained 32 px EfficientNetB0.

    Untrained is enough for plumbing tests; the training tests train their own.
    """
    import keras

    from galaxylib.modeling.export import save_artifact
    from galaxylib.modeling.model import ModelParams, build_model

    keras.utils.set_random_seed(0)
    model = build_model(
        ModelParams(image_size=32, weights="none", trainable_layers="all", freeze_batchnorm=False, learning_rate=1e-3)
    )
    run_dir = tmp_path_factory.mktemp("models") / "tiny"
    save_artifact(
        model,
        run_dir,
        run_name="tiny",
        dataset={"name": "none", "sha256": "0" * 64},
        split={},
        params={"image_size": 32},
        synthetic=True,
    )
    return run_dir


@pytest.fixture(scope="session")
def cropped_artifact(tmp_path_factory):
    """A 32 px model whose output depends visibly on its input, saved with a 0.6 crop, with its
    calibration and OOD check fitted by the real step.

    An untrained EfficientNet's features are ~1e-5, so its softmax is flat; a large
    random last layer makes the probabilities move with the pixels."""
    import keras
    import numpy as np
    from support import add_trust_check

    from galaxylib.modeling.export import save_artifact
    from galaxylib.modeling.model import ModelParams, build_model

    keras.utils.set_random_seed(1)
    model = build_model(ModelParams(image_size=32, weights="none", trainable_layers="all", freeze_batchnorm=False))
    layer = model.get_layer("probabilities")
    kernel, bias = layer.get_weights()
    layer.set_weights([np.random.default_rng(0).normal(0, 3e5, kernel.shape).astype("float32"), bias])
    path = tmp_path_factory.mktemp("cropped") / "run"
    save_artifact(
        model, path, run_name="cropped", dataset={"sha256": "0" * 64}, split={}, params={}, synthetic=True, crop=0.6
    )
    add_trust_check(path, tmp_path_factory.mktemp("cropped-trust"))  # so every entry point reports the OOD check
    return path


@pytest.fixture
def postgres_url() -> str:
    """A fresh database on the local PostgreSQL; fails (never skips) when it is unreachable."""
    with temporary_postgres_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'predictions.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """Runs a test on both databases."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'predictions.db'}"
    return request.getfixturevalue("postgres_url")


# --- serve/ (the REST API): shared by tests/test_api_*.py and tests/test_serve_*.py ---


@pytest.fixture
def make_app(tiny_artifact):
    """Build the API with test settings; keyword arguments override any Settings field."""
    from serve.factory import create_app
    from serve.settings import Settings

    def make(database_url: str, **overrides):
        values = {
            "database_url": database_url,
            "model_path": str(tiny_artifact),
            "admin_token": ADMIN_TOKEN,
            "db_retry_seconds": 0.0,
            **overrides,
        }
        return create_app(Settings(**values))

    return make


def pytest_sessionfinish(session, exitstatus) -> None:
    """The scratch folder goes with the session (its data, models and reports are the tests')."""
    import shutil

    shutil.rmtree(_scratch, ignore_errors=True)
