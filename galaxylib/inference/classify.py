"""The one classify path: files, bytes or arrays in; predictions and per-file errors out.

predict.sh, the API and the dashboard all call :func:`classify`, so a cutout gets the same
decode, the same preprocessing (the artifact's contract), the same forward pass and the
same bookkeeping (size, hash, latency) wherever it comes from. A file that cannot be read
gets its own ``ImageError`` and never stops the others.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from galaxylib.files import sha256_bytes
from galaxylib.inference.predictor import Prediction, Predictor
from galaxylib.preprocessing import ImageError, decode_image, preprocess_image


@dataclass(frozen=True)
class ImageInput:
    """One thing to classify, named as the caller wants it stored and shown."""

    name: str
    data: bytes | None = None  # an encoded JPEG/PNG
    path: Path | None = None  # a file, read when classified
    array: np.ndarray | None = None  # uint8 (H, W, 3), a Galaxy10 h5 row

    @classmethod
    def from_path(cls, path: str | Path, name: str | None = None) -> ImageInput:
        return cls(name=name or str(path), path=Path(path))

    @classmethod
    def from_bytes(cls, data: bytes, name: str) -> ImageInput:
        return cls(name=name, data=bytes(data))

    @classmethod
    def from_array(cls, array: np.ndarray, name: str) -> ImageInput:
        return cls(name=name, array=array)


@dataclass
class Classified:
    """The outcome for one input: a prediction, or the error that explains why not."""

    name: str
    prediction: Prediction | None = None
    error: ImageError | None = None
    width: int | None = None
    height: int | None = None
    size_bytes: int | None = None  # bytes as received (the pixel buffer for an array)
    sha256: str | None = None  # of those bytes
    decode_ms: float = 0.0
    forward_ms: float = 0.0  # this input's share of its batch's forward pass
    batch_size: int = 0  # inputs classified in the same call
    image: Image.Image | None = None  # the decoded image (keep_images=True), e.g. for display
    model_input: np.ndarray | None = None  # exactly what the model saw (keep_images=True)

    @property
    def ok(self) -> bool:
        return self.prediction is not None

    @property
    def latency_ms(self) -> float:
        return self.decode_ms + self.forward_ms


def _read(item: ImageInput) -> tuple[Image.Image, bytes]:
    if item.array is not None:
        image = decode_image(item.array)
        return image, np.ascontiguousarray(item.array).tobytes()
    data = item.data
    if data is None:
        if item.path is None:
            raise ImageError(f"{item.name}: nothing to read")
        try:
            data = item.path.read_bytes()
        except FileNotFoundError:
            raise ImageError(f"{item.name}: no such file") from None
        except IsADirectoryError:
            raise ImageError(f"{item.name}: is a folder, not an image") from None
        except OSError as exc:
            raise ImageError(f"{item.name}: cannot be read ({exc.strerror or exc})") from exc
    return decode_image(data, name=item.name), data


def classify(
    predictor: Predictor, inputs: Sequence[ImageInput], *, forward_batch: int = 32, keep_images: bool = False
) -> list[Classified]:
    """Decode and preprocess every input, then run the good ones in stacked forward passes of
    at most ``forward_batch`` images. Results come back in input order."""
    results: list[Classified] = []
    arrays: list[np.ndarray] = []
    good: list[Classified] = []
    for item in inputs:
        out = Classified(name=item.name)
        results.append(out)
        started = time.perf_counter()
        try:
            image, raw = _read(item)
        except ImageError as exc:
            out.error = exc
            continue
        model_input = preprocess_image(image, predictor.image_size, predictor.crop)
        out.decode_ms = (time.perf_counter() - started) * 1e3
        out.width, out.height = image.size
        out.size_bytes, out.sha256 = len(raw), sha256_bytes(raw)
        if keep_images:
            out.image, out.model_input = image, model_input
        arrays.append(model_input)
        good.append(out)
    for start in range(0, len(good), max(1, forward_batch)):
        part = arrays[start : start + forward_batch]
        batch = part[0][None] if len(part) == 1 else np.stack(part)  # [None] is a view, no copy
        started = time.perf_counter()
        probabilities, ood_scores = predictor.score_arrays(batch)
        share = (time.perf_counter() - started) * 1e3 / len(part)
        for i, (out, probs) in enumerate(zip(good[start : start + forward_batch], probabilities)):
            out.prediction = predictor.to_prediction(probs, None if ood_scores is None else ood_scores[i])
            out.forward_ms = share
    for out in good:
        out.batch_size = len(good)
    return results
