"""The one artifact format, read side: ``models/<run>/`` with model.tflite, model.keras, model.json.

The JSON sidecar makes an artifact self-describing: its class table, input size,
preprocessing contract and each file's SHA-256 travel with it. ``read_artifact``
refuses a folder that is incomplete, altered or made for another preprocessing
contract. Reading needs no TensorFlow; the writers live in ``galaxylib.modeling.export``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from galaxylib.files import atomic_write_json, sha256_file
from galaxylib.preprocessing import CONTRACT_VERSION

SIDECAR = "model.json"
KERAS_FILE = "model.keras"
TFLITE_FILE = "model.tflite"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model_version", "class_names", "image_size", "preprocessing", "files", "created_at")


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
    def class_names(self) -> tuple[str, ...]:
        """The model's own class table: index i of its output is class_names[i]."""
        return tuple(self.sidecar["class_names"])

    @property
    def image_size(self) -> int:
        return int(self.sidecar["image_size"])

    @property
    def crop(self) -> float:
        return float(self.sidecar["preprocessing"].get("crop", 1.0))

    @property
    def synthetic(self) -> bool:
        return bool(self.sidecar.get("synthetic", False))

    @property
    def tflite_path(self) -> Path:
        return self.path / TFLITE_FILE

    @property
    def keras_path(self) -> Path:
        return self.path / KERAS_FILE


def read_sidecar(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The sidecar JSON alone, without checks or hashing ({} when unreadable): for listings."""
    try:
        value = json.loads((Path(run_dir) / SIDECAR).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_artifact(run_dir: str | os.PathLike, *, verify_hashes: bool = True, need_keras: bool = False) -> Artifact:
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
    if not isinstance(sidecar, dict):
        raise ArtifactError(f"{sidecar_path} does not hold a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in sidecar]
    if missing:
        raise ArtifactError(f"{sidecar_path} is incomplete: missing {', '.join(missing)}")
    if sidecar["format_version"] != FORMAT_VERSION:
        raise ArtifactError(
            f"{run_dir} has artifact format {sidecar['format_version']}, this code reads {FORMAT_VERSION}"
        )
    names = sidecar["class_names"]
    if (
        not isinstance(names, list)
        or len(names) < 2
        or len(set(names)) != len(names)
        or not all(isinstance(n, str) and n for n in names)
    ):
        raise ArtifactError(f"{sidecar_path}: class_names must be a list of two or more distinct names")
    contract = sidecar["preprocessing"]
    if contract.get("version") != CONTRACT_VERSION or contract.get("image_size") != sidecar["image_size"]:
        raise ArtifactError(
            f"{run_dir} expects preprocessing contract {contract}, this code implements version "
            f"{CONTRACT_VERSION}: retrain or use a matching galaxylib"
        )
    needed = [TFLITE_FILE] + ([KERAS_FILE] if need_keras else [])
    needed += [name for name in sidecar["files"] if name not in (TFLITE_FILE, KERAS_FILE)]  # e.g. ood.npz
    for name in needed:
        path = run_dir / name
        if not path.is_file():
            raise ArtifactError(f"{run_dir} is missing {name}")
        expected = sidecar["files"].get(name)
        if verify_hashes and expected and sha256_file(path) != expected:
            raise ArtifactError(f"{path} does not match the checksum in {SIDECAR}: the file was changed or is corrupt")
    return Artifact(run_dir, sidecar)


def update_metrics(run_dir: str | os.PathLike, metrics: dict[str, Any]) -> None:
    """Record test metrics after evaluation (the sidecar is the artifact's report card)."""
    path = Path(run_dir) / SIDECAR
    sidecar = json.loads(path.read_text())
    sidecar["metrics"] = {**sidecar.get("metrics", {}), **metrics}
    atomic_write_json(path, sidecar)


def add_to_artifact(
    run_dir: str | os.PathLike,
    updates: dict[str, Any],
    new_files: tuple[str, ...] = (),
    removed_files: tuple[str, ...] = (),
) -> None:
    """Merge ``updates`` into the sidecar and record the SHA-256 of ``new_files`` (already written
    into the folder, atomically): how calibration and the OOD statistics join a saved artifact."""
    run_dir = Path(run_dir)
    path = run_dir / SIDECAR
    sidecar = json.loads(path.read_text())
    for name in new_files:
        sidecar["files"][name] = sha256_file(run_dir / name)
    for name in removed_files:
        sidecar["files"].pop(name, None)
    sidecar.update(updates)
    atomic_write_json(path, sidecar)
    for name in removed_files:
        (run_dir / name).unlink(missing_ok=True)


# A training run builds its artifact in ``models/<run>.partial`` (model, calibration, OOD check,
# metrics) and renames it to ``models/<run>`` only when all of it is there: an artifact is
# complete or absent, whenever the run stops.
PARTIAL_SUFFIX = ".partial"


def staging_dir(run_dir: str | os.PathLike) -> Path:
    """Where the artifact for ``run_dir`` is built before it is published."""
    run_dir = Path(run_dir)
    return run_dir.with_name(run_dir.name + PARTIAL_SUFFIX)


def publish_artifact(staging: str | os.PathLike, run_dir: str | os.PathLike) -> Artifact:
    """Check the finished artifact in ``staging``, then put it in place of ``run_dir`` by rename."""
    import shutil

    staging, run_dir = Path(staging), Path(run_dir)
    read_artifact(staging)  # every hash and the contract, before it replaces anything
    if run_dir.exists():
        shutil.rmtree(run_dir)
    os.replace(staging, run_dir)
    return read_artifact(run_dir, verify_hashes=False)


def list_runs(models_dir: str | os.PathLike) -> list[Path]:
    """Complete artifact folders in ``models_dir``, newest sidecar first."""
    runs = [
        p.parent for p in Path(models_dir).glob("*/" + SIDECAR) if not p.parent.name.endswith((".tmp", PARTIAL_SUFFIX))
    ]
    return sorted(runs, key=lambda run: (run / SIDECAR).stat().st_mtime, reverse=True)
