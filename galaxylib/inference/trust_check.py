"""What an artifact carries beside its network: the calibration and the OOD check, applied.

Both are fitted once after training (``galaxylib.pipeline.trust``) on the served model's own
outputs and travel in the artifact (``model.json`` and ``ood.npz``); the Predictor applies them
through a ``TrustCheck``, in NumPy, so the LiteRT path needs neither TensorFlow nor SciPy. The
calibration never changes the reported class (``galaxylib.inference.calibration``); with
orientation averaging it calibrates the averaged answer, the one every entry point reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from galaxylib.inference.calibration import apply_calibration, decide, remove_bias
from galaxylib.inference.ood import OOD_FILE, UNION, OODScorer, load_scorer

MOST_PROBABLE, BALANCED = "most_probable", "balanced"  # the two decision rules


@dataclass(frozen=True)
class TrustCheck:
    """What an artifact carries: its calibration (T, and a class bias or None), and its OOD scorer
    with the threshold."""

    temperature: float = 1.0
    scorer: OODScorer | None = None
    threshold: float | None = None
    bias: tuple[float, ...] | None = None

    @property
    def has_ood(self) -> bool:
        return self.scorer is not None and self.threshold is not None

    @property
    def decision_rule(self) -> str:
        """How the reported class is chosen: ``most_probable`` (the calibrated argmax), or
        ``balanced`` (the model's own argmax, which a class bias can set apart from the most
        probable class: docs/trust.md, "The reported class is not always the most probable one")."""
        return MOST_PROBABLE if self.bias is None else BALANCED

    @property
    def needs_pixels(self) -> bool:
        """Whether scoring needs ``pixel_statistics`` of the model inputs (computed only then)."""
        return self.has_ood and self.scorer.method in ("pixels", UNION)

    @property
    def needs_features(self) -> bool:
        return self.has_ood and self.scorer.method in ("mahalanobis", "knn", UNION)

    def calibrate(self, probs: np.ndarray) -> np.ndarray:
        return apply_calibration(probs, self.temperature, self.bias)

    def decide(self, calibrated: np.ndarray) -> np.ndarray:
        """The reported class of each row of calibrated probabilities (the model's own argmax)."""
        return decide(calibrated, self.bias)

    def without_bias(self, calibrated: np.ndarray) -> np.ndarray:
        """The temperature-scaled probabilities before the class bias (they are the calibrated
        ones when there is no bias)."""
        return remove_bias(calibrated, self.bias)

    def ood_scores(
        self, features: np.ndarray | None, calibrated: np.ndarray, pixels: np.ndarray | None = None
    ) -> np.ndarray | None:
        if not self.has_ood:
            return None
        return self.scorer.score(features, calibrated, pixels)


def trust_from_sidecar(sidecar: dict, folder: Path) -> TrustCheck:
    """The TrustCheck an artifact's sidecar describes; an artifact from before it has T = 1 and no OOD."""
    calibration = sidecar.get("calibration", {})
    temperature = float(calibration.get("temperature", 1.0))
    bias = tuple(float(b) for b in calibration["bias"]) if calibration.get("bias") is not None else None
    n_classes = len(sidecar.get("class_names") or ())
    if bias is not None and n_classes and len(bias) != n_classes:
        raise ValueError(f"model.json's calibration has {len(bias)} class biases for {n_classes} classes")
    ood = sidecar.get("ood")
    if not ood:
        return TrustCheck(temperature, bias=bias)
    scorer = load_scorer(str(ood["method"]), folder / OOD_FILE if ood.get("file") else None)
    return TrustCheck(temperature, scorer, float(ood["threshold"]), bias)
