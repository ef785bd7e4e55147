"""Grad-CAM for the dashboard: the one part of the page that needs TensorFlow.

The answer (class and probabilities) always comes from the LiteRT Predictor; the
artifact's Keras model is loaded here only to draw the saliency map, lazily and once
per artifact. The import-linter contract exempts this module alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Saliency:
    image: np.ndarray | None  # the overlay, uint8 RGB at the display size
    caption: str
    error: str | None = None


def load_gradcam(model_dir: Path):
    """A GradCam over the artifact's Keras model (a few seconds: TensorFlow starts)."""
    from galaxylib.artifact import read_artifact
    from galaxylib.modeling.loading import load_keras_model
    from galaxylib.modeling.saliency import GradCam

    return GradCam(load_keras_model(read_artifact(model_dir, need_keras=True)))


def saliency_for(gradcam, outcomes: Sequence) -> list[Saliency]:
    """Grad-CAM overlays for classified outcomes, explaining the Predictor's class."""
    from galaxylib.modeling.saliency import overlay

    batch = np.stack([o.model_input for o in outcomes])
    maps = gradcam.heatmaps(batch, [o.prediction.class_index for o in outcomes])
    h, w = gradcam.map_size
    results = []
    for out, cam in zip(outcomes, maps):
        note = ""
        if h * w == 1:
            note = " — a 1×1 map at this model size, so it is uniform"
        elif not cam.any():
            note = " — no pixel raised this class's score"
        caption = f"Grad-CAM for {out.prediction.predicted_class} · {gradcam.layer_name} {h}×{w}{note}"
        results.append(Saliency(overlay(out.image, cam), caption))
    return results
