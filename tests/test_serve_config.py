"""Configuration and start-up: the environment, the entry point, the schema, MODEL_URL, storage."""

from __future__ import annotations

import http.server
import logging
import os
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from support import row_count

from galaxylib.artifact import SIDECAR
from serve.settings import Settings, SettingsError

REPO = Path(__file__).resolve().parent.parent


# --- the environment ------------------------------------------------------------------------


@pytest.fixture
def env(monkeypatch):
    for name in (
        "DATABASE_URL",
        "MODEL_PATH",
        "MODEL_URL",
        "MODEL_SHA256",
        "ADMIN_TOKEN",
        "MAX_UPLOAD_MB",
        "MAX_BATCH",
        "GALAXY_NUM_THREADS",
        "GALAXY_FORWARD_BATCH",
        "DB_RETRY_SECONDS",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_settings_come_from_the_environment(env):
    env.setenv("DATABASE_URL", "postgres://u@db.example:5432/galaxy")
    env.setenv("MODEL_PATH", "/models/run-1")
    env.setenv("ADMIN_TOKEN", "s3cret")
    env.setenv("MAX_UPLOAD_MB", "2.5")
    env.setenv("MAX_BATCH", "7")
    env.setenv("GALAXY_NUM_THREADS", "1")
    env.setenv("GALAXY_FORWARD_BATCH", "4")
    env.setenv("SERVER_TIMING", "yes")

    s = Settings.from_env()

    assert s.database_url == "postgresql+psycopg://u@db.example:5432/galaxy"  # Render/Heroku style, normalised
    assert (s.model_path, s.admin_token) == ("/models/run-1", "s3cret")
    assert (s.max_content_length, s.max_batch, s.num_threads, s.forward_batch) == (int(2.5 * 1024 * 1024), 7, 1, 4)
    assert s.server_timing is True


def test_the_defaults_need_nothing_configured(env):
    s = Settings.from_env()

    assert s.database_url.startswith("sqlite:///") and s.database_url.endswith("predictions.db")
    assert s.admin_token is None and not s.admin_enabled
    assert (s.max_upload_mb, s.max_batch) == (16.0, 32)
    assert s.server_timing is False


@pytest.mark.parametrize(
    "name, value",
    [
        ("MAX_BATCH", "many"),
        ("MAX_BATCH", "0"),
        ("MAX_UPLOAD_MB", "-1"),
        ("GALAXY_NUM_THREADS", "two"),
        ("SERVER_TIMING", "maybe"),
    ],
)
def test_a_malformed_setting_is_refused_naming_the_variable(env, name, value):
    env.setenv(name, value)

    with pytest.raises(SettingsError, match=name):
        Settings.from_env()


# --- the real entry point -------------------------------------------------------------------


def test_the_entry_point_builds_from_the_environment_without_tensorflow(tiny_artifact, tmp_path):
    """A fresh process, as a gunicorn worker: no TensorFlow, single-threaded native libraries."""
    code = (
        "import os, sys; import serve.app as m; c = m.app.test_client(); "
        "print(c.get('/health').status_code, 'tensorflow' in sys.modules, 'keras' in sys.modules, "
        "os.environ['OMP_NUM_THREADS'], os.environ['TF_NUM_INTRAOP_THREADS'])"
    )
    env = {**os.environ, "MODEL_PATH": str(tiny_artifact), "DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}"}
    for name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        env.pop(name, None)

    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)

    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["200", "False", "False", "1", "1"]


# --- the schema -----------------------------------------------------------------------------


def head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from galaxylib.store.database import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


def test_starting_twice_upgrades_the_schema_once_and_keeps_the_rows(make_app, database_url, sample_files):
    import io

    first = make_app(database_url).test_client()
    first.post(
        "/predict",
        data={"file": (io.BytesIO(sample_files[0].read_bytes()), "g.jpg")},
        content_type="multipart/form-data",
    )

    second = make_app(database_url).test_client()

    assert second.get("/health").status_code == 200
    assert second.get("/predictions").json["total"] == 1
    engine = create_engine(database_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head_revision()]
    engine.dispose()
    assert row_count(database_url) == 1


# --- MODEL_URL ------------------------------------------------------------------------------


class _Files(http.server.SimpleHTTPRequestHandler):
    requests_seen: list[str] = []

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        type(self).requests_seen.append(self.path)
        super().do_GET()


@pytest.fixture
def file_server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    _Files.requests_seen = []
    handler = lambda *a, **kw: _Files(*a, directory=str(root), **kw)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def pack(artifact: Path, archive: Path) -> Path:
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for f in artifact.iterdir():
                zf.write(f, f"{artifact.name}/{f.name}")
    else:
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(artifact, arcname=artifact.name)
    return archive


@pytest.mark.parametrize("archive_name", ["model.tar.gz", "model.zip"])
def test_model_url_is_downloaded_into_model_path_once(
    make_app, sqlite_url, tiny_artifact, tmp_path, file_server, archive_name
):
    root, base = file_server
    pack(tiny_artifact, root / archive_name)
    target = tmp_path / "downloaded-run"

    client = make_app(sqlite_url, model_path=str(target), model_url=f"{base}/{archive_name}").test_client()
    make_app(sqlite_url, model_path=str(target), model_url=f"{base}/{archive_name}")  # a second worker

    assert client.get("/health").json["model"]["model_version"].startswith("tiny-")
    assert (target / SIDECAR).is_file()
    assert _Files.requests_seen == [f"/{archive_name}"]


def test_a_model_url_archive_without_an_artifact_is_not_served(make_app, sqlite_url, tmp_path, file_server, caplog):
    root, base = file_server
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "README").write_text("not a model")
    pack(tmp_path / "junk", root / "junk.tar.gz")
    target = tmp_path / "downloaded-run"

    with caplog.at_level(logging.ERROR, logger="serve"):
        client = make_app(sqlite_url, model_path=str(target), model_url=f"{base}/junk.tar.gz").test_client()

    assert client.get("/health").status_code == 503
    assert not target.exists()
    assert any("MODEL NOT LOADED" in r.getMessage() for r in caplog.records)


def test_a_model_url_with_a_wrong_checksum_is_not_served(make_app, sqlite_url, tiny_artifact, tmp_path, file_server):
    root, base = file_server
    pack(tiny_artifact, root / "model.tar.gz")
    target = tmp_path / "downloaded-run"

    client = make_app(
        sqlite_url, model_path=str(target), model_url=f"{base}/model.tar.gz", model_sha256="0" * 64
    ).test_client()

    assert client.get("/health").json["model"]["loaded"] is False
    assert not target.exists()


def test_an_existing_model_path_wins_over_model_url(make_app, sqlite_url, tiny_artifact, file_server):
    _, base = file_server

    client = make_app(sqlite_url, model_path=str(tiny_artifact), model_url=f"{base}/never.tar.gz").test_client()

    assert client.get("/health").status_code == 200
    assert _Files.requests_seen == []


# --- storage ---------------------------------------------------------------------------------


def test_a_batch_of_predictions_is_stored_all_or_nothing_on_postgresql(postgres_url):
    """The PostgreSQL writer sends a batch as one autocommit INSERT, which must be atomic."""
    from sqlalchemy.exc import DBAPIError

    from serve.storage import Database

    db = Database(postgres_url)
    rows = [
        {"filename": "fine.jpg", "predicted_class": "Merging", "confidence": 0.5},
        {"filename": "x" * 600, "predicted_class": "Merging", "confidence": 0.5},
    ]  # over VARCHAR(512)

    with pytest.raises(DBAPIError):
        db.store().add_many(rows)

    assert row_count(postgres_url) == 0
    db.store().close()


def test_a_relative_model_path_is_relative_to_where_the_user_started(env, tmp_path):
    env.setenv("MODEL_PATH", "models/run-1")
    env.setenv("GALAXY_USER_CWD", str(tmp_path))  # what dashboard.sh and train.sh pass on after cd

    assert Settings.from_env().model_path == str(tmp_path / "models" / "run-1")

    env.delenv("GALAXY_USER_CWD")
    env.chdir(tmp_path / "..")
    assert Settings.from_env().model_path == str((tmp_path / "..").resolve() / "models" / "run-1")


def test_a_relative_path_from_dot_env_is_relative_to_the_project_not_the_current_folder(env, tmp_path):
    """.env.example shows MODEL_PATH=models/<run> and sqlite:/// URLs relative to the project; read
    from .env they name the project's files whatever folder a command runs in. The same values set
    in the environment by the user stay relative to where they typed them."""
    from galaxylib.config import PROJECT_ROOT, _anchor_env_file_paths, database_url

    env.setenv("DATABASE_URL", "sqlite:///data/from-env-file.db")
    env.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlruns/mlflow.db")
    env.setenv("MODEL_PATH", "models/run-1")
    env.chdir(tmp_path)
    _anchor_env_file_paths(set_before=set())  # as if all three had come from .env

    assert database_url() == f"sqlite:///{PROJECT_ROOT / 'data' / 'from-env-file.db'}"
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{PROJECT_ROOT / 'mlruns' / 'mlflow.db'}"
    assert Settings.from_env().model_path == str(PROJECT_ROOT / "models" / "run-1")

    env.setenv("DATABASE_URL", "sqlite:///data/typed.db")
    env.setenv("MODEL_PATH", "models/run-2")
    _anchor_env_file_paths(set_before={"DATABASE_URL", "MODEL_PATH"})  # set by the user before .env was read
    assert database_url() == f"sqlite:///{tmp_path / 'data' / 'typed.db'}"
    assert Settings.from_env().model_path == str(tmp_path / "models" / "run-2")
