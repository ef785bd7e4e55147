"""Predictor: load an artifact's TFLite export once, classify model inputs in batches.

predict.sh, the API and the dashboard all reach it through ``galaxylib.inference.classify``.
It runs on LiteRT (``ai-edge-litert``) and never imports TensorFlow: ~0.4 s and ~100 MB to
get ready, against ~4 s and ~600 MB for TensorFlow. Class names come from the artifact, and
so do the calibration and the out-of-distribution check it applies (``trust_check.py``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from galaxylib.artifact import Artifact, ArtifactError, read_artifact
from galaxylib.inference.ood import pixel_statistics
from galaxylib.inference.trust_check import TrustCheck, trust_from_sidecar
from galaxylib.preprocessing import ImageSource, decode_image, preprocess_image

TOP_K = 3


@contextlib.contextmanager
def _native_info_silenced() -> Iterator[None]:
    """LiteRT's C++ side writes "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." straight
    to file descriptor 2 when an interpreter first allocates, on every predict.sh call, and no
    Python setting lowers its log level; so descriptor 2 points at /dev/null for the construction
    only. Errors still arrive: LiteRT raises them as Python exceptions. Only on the command
    line: in the API's workers it left gunicorn's metrics folder behind at shutdown
    (tests/test_serve_metrics.py), a cause not yet found."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@dataclass(frozen=True)
class Prediction:
    class_index: int
    predicted_class: str
    confidence: float
    probabilities: dict[str, float]
    model_version: str
    top_classes: list[tuple[str, float]] = field(default_factory=list)  # the TOP_K most likely
    # The out-of-distribution check (galaxylib/inference/ood.py): None for an artifact without one.
    ood_score: float | None = None  # larger = less like the training cutouts
    in_distribution: bool | None = (
        None  # ood_score <= the artifact's threshold (>= 95 % of in-distribution cutouts pass)
    )
    decision_rule: str = "most_probable"  # or "balanced": TrustCheck.decision_rule

    @property
    def most_probable_class(self) -> str:
        """The class with the largest calibrated probability; under the balanced rule it can
        differ from ``predicted_class``."""
        return self.top_classes[0][0] if self.top_classes else self.predicted_class


def default_threads() -> int:
    """``GALAXY_NUM_THREADS`` or all cores; servers with many workers set it to 1."""
    value = os.environ.get("GALAXY_NUM_THREADS", "").strip()
    return int(value) if value else (os.cpu_count() or 1)


class Predictor:
    def __init__(
        self,
        model_dir: str | os.PathLike,
        num_threads: int | None = None,
        verify_hashes: bool = True,
        trust: bool = True,
        quiet: bool = False,
    ):
        """``trust=False`` ignores the artifact's calibration and OOD check: for refitting them.
        ``quiet=True`` keeps LiteRT's delegate notice off stderr (``_native_info_silenced``): for
        a single-threaded command line only, since descriptor 2 is the whole process's."""
        from ai_edge_litert.interpreter import Interpreter

        self.artifact: Artifact = read_artifact(model_dir, verify_hashes=verify_hashes)
        self.class_names = self.artifact.class_names
        self.image_size = self.artifact.image_size
        self.crop = self.artifact.crop
        self.model_version = self.artifact.model_version
        self.num_threads = num_threads or default_threads()
        with _native_info_silenced() if quiet else contextlib.nullcontext():  # made at the first allocation
            self._interpreter = Interpreter(model_path=str(self.artifact.tflite_path), num_threads=self.num_threads)
            self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output, self._features = self._find_outputs(self._interpreter.get_output_details())
        try:
            self.trust: TrustCheck = (
                trust_from_sidecar(self.artifact.sidecar, self.artifact.path) if trust else TrustCheck()
            )
        except (OSError, KeyError, ValueError) as exc:
            raise ArtifactError(f"{self.artifact.path}: its calibration or OOD check cannot be read ({exc})") from exc
        if self.trust.needs_features and self._features is None:
            raise ArtifactError(
                f"{self.artifact.path}: its OOD check needs the features output, which "
                f"{self.artifact.tflite_path.name} lacks"
            )
        self._batch = 0
        self._lock = threading.Lock()  # one interpreter is not thread-safe
        self._resize(1)

    def _find_outputs(self, outputs: list[dict]) -> tuple[int, int | None]:
        """The probabilities (one per class) and, when exported, the pooled features."""
        n = len(self.class_names)
        probs = [o for o in outputs if int(o["shape"][-1]) == n]
        if len(probs) != 1 or len(outputs) > 2:
            shapes = ", ".join(str([int(d) for d in o["shape"]]) for o in outputs)
            raise ArtifactError(
                f"{self.artifact.path}: {n} class names for {int(outputs[0]['shape'][-1])} outputs "
                f"of {self.artifact.tflite_path.name} (output shapes {shapes})"
            )
        others = [o["index"] for o in outputs if o is not probs[0]]
        return probs[0]["index"], (others[0] if others else None)

    @property
    def path(self) -> Path:
        return self.artifact.path

    @property
    def has_ood(self) -> bool:
        """Whether predictions carry ``ood_score`` and ``in_distribution`` (artifacts since issue 13)."""
        return self.trust.has_ood

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            self._interpreter.resize_tensor_input(self._input, [batch, self.image_size, self.image_size, 3])
            self._interpreter.allocate_tensors()
            self._batch = batch

    def preprocess(self, source: ImageSource) -> np.ndarray:
        """The artifact's own preprocessing contract (size and crop) on one image."""
        return preprocess_image(decode_image(source), self.image_size, self.crop)

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """float32 (N, size, size, 3) model inputs -> the model's own (N, n_classes) probabilities,
        before calibration, and its (N, D) pooled features (None for an older export): one pass."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"expected (N, {self.image_size}, {self.image_size}, 3), got {batch.shape}")
        if len(batch) == 0:
            return np.zeros((0, len(self.class_names)), np.float32), None
        with self._lock:
            self._resize(len(batch))
            self._interpreter.set_tensor(self._input, batch)
            self._interpreter.invoke()
            probs = np.array(self._interpreter.get_tensor(self._output), dtype=np.float32)
            features = (
                None
                if self._features is None
                else np.array(self._interpreter.get_tensor(self._features), dtype=np.float32)
            )
        return probs, features

    def score_arrays(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities and OOD scores (None without an OOD check) for model inputs."""
        raw, features = self.forward(batch)
        calibrated = self.trust.calibrate(raw) if len(raw) else raw.astype(np.float64)
        if not len(raw):
            return calibrated, None
        pixels = pixel_statistics(batch) if self.trust.needs_pixels else None
        return calibrated, self.trust.ood_scores(features, calibrated, pixels)

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, size, size, 3) model inputs -> (N, n_classes) calibrated probabilities."""
        return self.score_arrays(batch)[0]

    def to_prediction(self, probs: np.ndarray, ood_score: float | None = None) -> Prediction:
        probs = np.asarray(probs, dtype=np.float64)
        idx = int(self.trust.decide(probs[None])[0])  # the model's own class; calibration never changes it
        order = np.argsort(-probs)[:TOP_K]
        names = self.class_names
        known = ood_score is not None and self.trust.threshold is not None
        return Prediction(
            class_index=idx,
            predicted_class=names[idx],
            confidence=float(probs[idx]),
            probabilities={name: float(p) for name, p in zip(names, probs)},
            model_version=self.model_version,
            top_classes=[(names[i], float(probs[i])) for i in order],
            ood_score=float(ood_score) if known else None,
            in_distribution=bool(ood_score <= self.trust.threshold) if known else None,
            decision_rule=self.trust.decision_rule,
        )

    def predict(self, source: ImageSource) -> Prediction:
        return self.predict_batch([source])[0]

    def predict_batch(self, sources: list[ImageSource]) -> list[Prediction]:
        """All images in one forward pass; an undecodable one raises ImageError."""
        arrays = (
            np.stack([self.preprocess(s) for s in sources])
            if sources
            else np.zeros((0, self.image_size, self.image_size, 3), np.float32)
        )
        probs, scores = self.score_arrays(arrays)
        return [self.to_prediction(p, None if scores is None else scores[i]) for i, p in enumerate(probs)]
