"""Find, fetch and load the served model once per worker, never per request.

A missing or broken model must not crash-loop the service: ``load_model`` logs
one clear line and returns a state whose ``predictor`` is None, and the API
answers 503 until an operator fixes the configuration and restarts.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import shutil
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from galaxylib.artifact import SIDECAR, ArtifactError, read_artifact
from galaxylib.config import MODELS_DIR
from galaxylib.inference.predictor import Predictor
from serve.settings import Settings

log = logging.getLogger("serve")


@dataclass
class ModelState:
    predictor: Predictor | None
    error: str | None = None

    @property
    def loaded(self) -> bool:
        return self.predictor is not None

    @property
    def model_version(self) -> str | None:
        return self.predictor.model_version if self.predictor else None


def download_dir_for(settings: Settings) -> Path:
    """Where MODEL_URL lands: MODEL_PATH if given, else a folder named after the URL."""
    if settings.model_path:
        return Path(settings.model_path)
    digest = hashlib.sha256(settings.model_url.encode()).hexdigest()[:12]  # type: ignore[union-attr]
    return MODELS_DIR / f"downloaded-{digest}"


def resolve_model_dir(settings: Settings) -> Path:
    """The artifact folder to serve, downloading MODEL_URL when MODEL_PATH is absent."""
    if settings.model_path and Path(settings.model_path).is_dir():
        return Path(settings.model_path)
    if settings.model_url:
        return fetch_artifact(settings.model_url, download_dir_for(settings), settings.model_sha256)
    if settings.model_path:
        raise ArtifactError(
            f"MODEL_PATH={settings.model_path} does not exist; point it at a "
            "models/<run> folder from ./train.sh, or set MODEL_URL to download one"
        )
    raise ArtifactError(
        "no model configured: set MODEL_PATH to a models/<run> folder from ./train.sh "
        "(or MODEL_URL to an artifact archive)"
    )


def fetch_artifact(url: str, dest: Path, sha256: str | None = None) -> Path:
    """Download a .tar.gz/.tgz/.zip of an artifact folder to ``dest``, once per host.

    A file lock makes concurrent workers wait for the first one's download; the
    folder is checked with ``read_artifact`` before it is moved into place, so a
    bad archive never becomes the served model.
    """
    from galaxylib.data.download import download_file

    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / SIDECAR).is_file():
            return dest
        log.info("downloading the model artifact from %s", url)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-") as tmp:
            archive = download_file(
                url, Path(tmp) / "artifact.archive", sha256, show_progress=False, retries=2, retry_wait=1.0
            )
            root = _extract(archive, Path(tmp) / "unpacked")
            read_artifact(root)
            if dest.exists():
                shutil.rmtree(dest)
            shutil.move(str(root), dest)
        log.info("model artifact saved to %s", dest)
        return dest


def _extract(archive: Path, into: Path) -> Path:
    into.mkdir()
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")  # refuses absolute paths, "..", devices, links out
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                target = (into / name).resolve()
                if not target.is_relative_to(into.resolve()):
                    raise ArtifactError(f"the model archive contains an unsafe path: {name}")
            zf.extractall(into)
    else:
        raise ArtifactError("MODEL_URL must point at a .tar.gz, .tgz, .tar or .zip of a models/<run> folder")
    if (into / SIDECAR).is_file():
        return into
    found = [p.parent for p in into.glob(f"*/{SIDECAR}")]
    if len(found) != 1:
        raise ArtifactError(f"the model archive has no single folder with {SIDECAR}")
    return found[0]


def load_model(settings: Settings) -> ModelState:
    """Load the artifact's TFLite export and run one warm-up pass; never raises."""
    started = time.perf_counter()
    try:
        model_dir = resolve_model_dir(settings)
        predictor = Predictor(model_dir, num_threads=settings.num_threads)
        size = predictor.image_size
        predictor.predict_arrays(np.zeros((1, size, size, 3), np.float32))  # first invoke prepares XNNPACK
    except Exception as exc:  # ArtifactError, download errors, a corrupt .tflite...
        reason = f"{type(exc).__name__}: {exc}"
        log.error(
            "MODEL NOT LOADED (%s). /predict and /health answer 503 until this is fixed and the service restarted.",
            reason,
        )
        return ModelState(None, reason)
    seconds = time.perf_counter() - started
    log.info(
        "model %s loaded from %s in %.2fs (%d px, %d threads)",
        predictor.model_version,
        predictor.path,
        seconds,
        predictor.image_size,
        predictor.num_threads,
    )
    return ModelState(predictor, None)
