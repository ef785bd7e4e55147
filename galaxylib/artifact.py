"""The one artifact format: ``models/<run>/`` with model.keras, model.tflite, model.json.

The JSON sidecar makes an artifact self-describing, and ``read_artifact`` refuses
one that is incomplete or does not match this code (classes, preprocessing).
Reading needs no TensorFlow; exporting does.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from galaxylib.classes import CLASS_NAMES
from galaxylib.config import PROJECT_ROOT
from galaxylib.preprocessing import CONTRACT_VERSION, preprocessing_contract

SIDECAR = "model.json"
KERAS_FILE = "model.keras"
TFLITE_FILE = "model.tflite"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model_version", "class_names", "image_size", "preprocessing",
                 "files", "created_at")


class ArtifactError(ValueError):
    """An artifact that is missing, incomplete or made for other code."""


@dataclass(frozen=True)
class Artifact:
    path: Path
    sidecar: dict[str, Any]

    @property
    def model_version(self) -> str:
        return self.sidecar["model_version"]

    @property
    def image_size(self) -> int:
        return int(self.sidecar["image_size"])

    @property
    def crop(self) -> float:
        return float(self.sidecar["preprocessing"].get("crop", 1.0))

    @property
    def tflite_path(self) -> Path:
        return self.path / TFLITE_FILE

    @property
    def keras_path(self) -> Path:
        return self.path / KERAS_FILE


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def export_tflite(model, path: Path) -> Path:
    """TFLite with a dynamic batch dimension, so the server can run a batch in one call.

    The inference function is traced once and its variables frozen into constants before
    conversion: about a third of the time ``from_keras_model`` takes, with the same outputs
    (bench/bench_tflite_export.py). A concrete function converted unfrozen keeps READ_VARIABLE
    ops that LiteRT runs as NaN.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    size = int(model.input_shape[1])
    inference = tf.function(lambda images: model(images, training=False))
    concrete = inference.get_concrete_function(tf.TensorSpec([None, size, size, 3], tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([convert_variables_to_constants_v2(concrete)])
    path.write_bytes(converter.convert())
    return path


def save_artifact(model, run_dir: str | os.PathLike, *, run_name: str, dataset: dict[str, Any],
                  split: dict[str, Any], params: dict[str, Any], metrics: dict[str, Any] | None = None,
                  synthetic: bool = False, crop: float = 1.0) -> Artifact:
    """Write the three files into a temp folder, then move it into place whole."""
    run_dir = Path(run_dir)
    tmp = run_dir.with_name(run_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save(tmp / KERAS_FILE)
    export_tflite(model, tmp / TFLITE_FILE)
    image_size = int(model.input_shape[1])
    files = {name: sha256_of(tmp / name) for name in (KERAS_FILE, TFLITE_FILE)}
    sidecar = {
        "format_version": FORMAT_VERSION,
        "model_version": f"{run_name}-{files[TFLITE_FILE][:8]}",
        "run_name": run_name,
        "architecture": "EfficientNetB0 transfer learning",
        "class_names": list(CLASS_NAMES),
        "image_size": image_size,
        "preprocessing": preprocessing_contract(image_size, crop),
        "synthetic": bool(synthetic),
        "dataset": dataset,
        "split": split,
        "params": params,
        "metrics": metrics or {},
        "git_commit": git_commit(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "files": files,
    }
    (tmp / SIDECAR).write_text(json.dumps(sidecar, indent=2))
    if run_dir.exists():
        shutil.rmtree(run_dir)
    os.replace(tmp, run_dir)
    return Artifact(run_dir, sidecar)


def update_metrics(run_dir: str | os.PathLike, metrics: dict[str, Any]) -> None:
    """Record test metrics after evaluation (the sidecar is the artifact's report card)."""
    path = Path(run_dir) / SIDECAR
    sidecar = json.loads(path.read_text())
    sidecar["metrics"] = {**sidecar.get("metrics", {}), **metrics}
    tmp = path.with_name(SIDECAR + ".tmp")
    tmp.write_text(json.dumps(sidecar, indent=2))
    os.replace(tmp, path)


def read_artifact(run_dir: str | os.PathLike, *, verify_hashes: bool = True,
                  need_keras: bool = False) -> Artifact:
    """Load and check the sidecar; raise ArtifactError naming what is wrong."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArtifactError(f"no model folder at {run_dir} (train one with ./train.sh)")
    sidecar_path = run_dir / SIDECAR
    if not sidecar_path.is_file():
        raise ArtifactError(f"{run_dir} has no {SIDECAR}: not a galaxylib artifact or an interrupted save")
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except ValueError as exc:
        raise ArtifactError(f"{sidecar_path} is not valid JSON: {exc}") from exc
    missing = [k for k in REQUIRED_KEYS if k not in sidecar]
    if missing:
        raise ArtifactError(f"{sidecar_path} is incomplete: missing {', '.join(missing)}")
    if sidecar["format_version"] != FORMAT_VERSION:
        raise ArtifactError(f"{run_dir} has artifact format {sidecar['format_version']}, this code reads {FORMAT_VERSION}")
    if list(sidecar["class_names"]) != list(CLASS_NAMES):
        raise ArtifactError(f"{run_dir} was trained with other class names: {sidecar['class_names']}")
    contract = sidecar["preprocessing"]
    if contract.get("version") != CONTRACT_VERSION or contract.get("image_size") != sidecar["image_size"]:
        raise ArtifactError(
            f"{run_dir} expects preprocessing contract {contract}, this code implements version "
            f"{CONTRACT_VERSION}: retrain or use a matching galaxylib")
    needed = [TFLITE_FILE] + ([KERAS_FILE] if need_keras else [])
    for name in needed:
        path = run_dir / name
        if not path.is_file():
            raise ArtifactError(f"{run_dir} is missing {name}")
        expected = sidecar["files"].get(name)
        if verify_hashes and expected and sha256_of(path) != expected:
            raise ArtifactError(f"{path} does not match the checksum in {SIDECAR}: the file was changed or is corrupt")
    return Artifact(run_dir, sidecar)


def load_keras_model(artifact: Artifact):
    import keras

    from galaxylib.orientation import register

    register()  # an orientation-averaged model holds galaxylib's own layers

    if not artifact.keras_path.is_file():
        raise ArtifactError(f"{artifact.path} is missing {KERAS_FILE}")
    return keras.models.load_model(artifact.keras_path, compile=False)


def latest_run(models_dir: Path) -> Path | None:
    """The newest complete artifact folder, by its sidecar's time."""
    runs = [p for p in models_dir.glob("*/" + SIDECAR) if not p.parent.name.endswith(".tmp")]
    return max(runs, key=lambda p: p.stat().st_mtime).parent if runs else None
