"""The one classify path: files, bytes or arrays in; predictions and per-file errors out.

predict.sh, the API and the dashboard all call :func:`classify`, so a cutout gets the same
decode, the same preprocessing (the artifact's contract), the same forward pass and the
same bookkeeping (size, hash, latency) wherever it comes from. A file that cannot be read
gets its own ``ImageError`` and never stops the others.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from galaxylib.files import sha256_bytes
from galaxylib.inference.predictor import Prediction, Predictor
from galaxylib.preprocessing import ImageError, decode_image, preprocess_image, read_regular_file

_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def path_name(path: str | bytes | os.PathLike) -> str:
    r"""How a file's path is named in every output (the CSV, the database, messages).

    A path is bytes, and not every path is UTF-8, but the CSV and a PostgreSQL text column take
    only valid UTF-8. So the name is the path's bytes read as UTF-8, with each byte that is not
    part of valid UTF-8 written as the backslash escape ``\xHH`` (two lower-case hex digits), and
    each backslash written ``\\``: ``b"bad\xffname.jpg"`` is named ``bad\xffname.jpg`` (a
    backslash, ``x``, ``f``, ``f``). A UTF-8 path without a backslash (nearly every path) is
    named as it is, and :func:`path_from_name` gives back the exact bytes of any name.
    """
    return os.fsencode(path).replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def path_from_name(name: str) -> bytes:
    """The path's bytes from its :func:`path_name` (e.g. to open the file a CSV line names)."""
    parts = _ESCAPE.split(name)  # text, escape, text, escape, ..., text
    return b"".join(
        part.encode("utf-8") if i % 2 == 0 else b"\\" if part == "\\" else bytes([int(part[1:], 16)])
        for i, part in enumerate(parts)
    )


def printable(text: str) -> str:
    r"""``text`` as valid UTF-8, for a message that may quote a path that is not UTF-8 (its bytes
    come through Python as lone surrogates, which no UTF-8 writer takes): each such byte becomes
    ``\xHH``, as in :func:`path_name`."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")  # the bytes os.fsdecode escaped
        except UnicodeEncodeError:  # some other lone surrogate
            raw = text.encode("utf-8", "backslashreplace")
        return raw.decode("utf-8", "backslashreplace")
    return text


@dataclass(frozen=True)
class ImageInput:
    """One thing to classify, named as the caller wants it stored and shown."""

    name: str
    data: bytes | None = None  # an encoded JPEG/PNG
    path: Path | None = None  # a file, read when classified
    array: np.ndarray | None = None  # uint8 (H, W, 3), a Galaxy10 h5 row
    problem: str | None = None  # why it cannot be classified, known before any read (an unusable h5)

    @classmethod
    def from_path(cls, path: str | Path, name: str | None = None) -> ImageInput:
        """A file, named by :func:`path_name` unless ``name`` is given."""
        return cls(name=name or path_name(path), path=Path(path))

    @classmethod
    def from_bytes(cls, data: bytes, name: str) -> ImageInput:
        return cls(name=name, data=bytes(data))

    @classmethod
    def from_array(cls, array: np.ndarray, name: str) -> ImageInput:
        return cls(name=name, array=array)

    @classmethod
    def unusable(cls, name: str, problem: str) -> ImageInput:
        """An input that is never read and gets an error line saying ``problem`` (e.g. an h5
        that is not in the Galaxy10 layout): a line of its own, like a file that cannot be read."""
        return cls(name=name, problem=printable(problem))


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
    if item.problem is not None:
        raise ImageError(item.problem)
    if item.array is not None:
        try:
            image = decode_image(item.array)
        except ImageError as exc:  # an array's error names no row: say which, as a file's does
            raise type(exc)(f"{item.name}: {exc}") from exc
        return image, np.ascontiguousarray(item.array).tobytes()
    data, label = item.data, item.name
    if data is None:
        if item.path is None:
            raise ImageError(f"{item.name}: nothing to read")
        shown = path_name(item.path)
        if shown != item.name:  # e.g. row 3 of a listing h5: say which file
            label = f"{item.name} ({shown})"
        data = read_regular_file(item.path, label)
    return decode_image(data, name=label), data


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
        del image, raw  # freed before the next decode: two full frames at once would double the peak
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
