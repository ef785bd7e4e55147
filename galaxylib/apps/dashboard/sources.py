"""What the dashboard offers: the models to pick from and the example cutouts."""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from galaxylib.artifact import SIDECAR, list_runs, read_sidecar
from galaxylib.classes import CLASS_NAMES
from galaxylib.config import MODELS_DIR, SAMPLES_DIR, user_path
from galaxylib.data.labels import LabelsError, read_labelled_folder

SYNTHETIC_SEED = 20_240_610


@dataclass(frozen=True)
class ModelChoice:
    """One artifact the picker offers."""

    path: Path
    label: str
    from_env: bool = False


def _choice_label(run_dir: Path) -> str:
    meta = read_sidecar(run_dir)
    name = meta.get("run_name") or run_dir.name
    when = str(meta.get("created_at", ""))[:16].replace("T", " ")
    return " · ".join([str(name)] + ([when] if when else []))


def discover_models(models_dir: Path = MODELS_DIR, model_path: str | None = None) -> list[ModelChoice]:
    """MODEL_PATH first (the default), then every run in ``models/``, newest first.

    MODEL_PATH may name one run, or a folder of runs that then replaces ``models/``; a
    relative MODEL_PATH is relative to the folder dashboard.sh was started from.
    """
    if model_path is None:
        model_path = os.environ.get("MODEL_PATH", "").strip()
    choices: list[ModelChoice] = []
    if model_path:
        path = user_path(model_path)
        if path.is_dir() and not (path / SIDECAR).exists() and list_runs(path):
            models_dir = path  # a folder of runs
        else:
            label = _choice_label(path) if (path / SIDECAR).exists() else path.name
            choices.append(ModelChoice(path, f"MODEL_PATH: {label}", from_env=True))
    seen = {c.path.resolve() for c in choices}
    for run in list_runs(models_dir):
        if run.resolve() not in seen:
            choices.append(ModelChoice(run, _choice_label(run)))
    return choices


@dataclass(frozen=True)
class Example:
    """A cutout offered in the example picker: a real labelled one, or a synthetic stand-in."""

    label: str
    filename: str
    true_class: str | None
    synthetic: bool
    path: Path | None = None
    class_index: int | None = None

    def read_bytes(self) -> bytes:
        if self.path is not None:
            return self.path.read_bytes()
        return _synthetic_png(int(self.class_index))


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@functools.lru_cache(maxsize=16)
def _synthetic_png(class_index: int) -> bytes:
    from galaxylib.data.synthetic import render_galaxy

    pixels = render_galaxy(class_index, np.random.default_rng(SYNTHETIC_SEED + class_index))
    return png_bytes(pixels)


def list_examples(samples_dir: Path = SAMPLES_DIR) -> list[Example]:
    """One cutout per class: real ones from ``samples_dir`` when present, else synthetic."""
    examples: list[Example] = []
    try:
        listing = read_labelled_folder(samples_dir)
    except LabelsError:
        listing = None
    if listing is not None:
        first: dict[int, Path] = {}
        for path, index in zip(listing.paths, listing.labels):
            if index not in first or path.name < first[index].name:
                first[index] = path
        for index, path in sorted(first.items()):
            name = listing.class_names[index]
            examples.append(Example(f"{name} — {path.name}", path.name, name, synthetic=False, path=path))
    if not examples:
        for index, name in enumerate(CLASS_NAMES):
            slug = name.lower().replace(" ", "-")
            examples.append(
                Example(
                    f"Synthetic {name} (generated, not a real galaxy)",
                    f"synthetic-{slug}.png",
                    name,
                    synthetic=True,
                    class_index=index,
                )
            )
    return examples
