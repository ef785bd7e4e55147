"""Uploads: the dashboard's limits, then the one classify path for what passes them.

One upload (every file picked at once) travels to the kernel as ONE websocket message.
voila.json sets tornado's websocket_max_message_size to ``websocket_max_message_size()``
(tornado's default, 10 MiB, would silently drop the connection well below this limit),
and the page's upload guard (static/upload_guard.js) holds back the bytes of files past
the limit, so the kernel can answer with a message instead of losing the connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from galaxylib.apps.dashboard.sources import Example
from galaxylib.inference.classify import Classified, ImageInput, classify
from galaxylib.store.records import prediction_row

UPLOAD_LIMIT_BYTES = 20_000_000
UPLOAD_LIMIT_LABEL = "20 MB"
WEBSOCKET_HEADROOM_BYTES = 1 << 20  # the message's JSON part: names, types, sizes
MAX_FILES_PER_UPLOAD = 24  # Grad-CAM costs ~0.3 s an image on a laptop CPU
DISPLAY_SIZE = 256  # images are shown at most this big (cutouts are 256 x 256)
ACCEPT = ".jpg,.jpeg,.png,image/jpeg,image/png"

# What to do next, by ImageError.code; the message itself comes from galaxylib.preprocessing.
ERROR_HINTS = {
    "empty_file": "Nothing arrived: pick the file again.",
    "unsupported_media_type": "Only JPEG and PNG cutouts can be classified, and renaming a file "
    "does not change its format.",
    "image_too_large": "Galaxy10 cutouts are 256×256 pixels; send a cutout, not a mosaic.",
    "invalid_image": "The file looks damaged; export or download it again.",
}


def websocket_max_message_size() -> int:
    """The tornado setting that makes UPLOAD_LIMIT_BYTES the real limit (see voila.json)."""
    return UPLOAD_LIMIT_BYTES + WEBSOCKET_HEADROOM_BYTES


def format_bytes(n: int) -> str:
    """Sizes as a person reads them, in decimal units like UPLOAD_LIMIT_LABEL."""
    if n < 1000:
        return f"{n} bytes"
    if n < 1_000_000:
        return f"{n / 1000:.0f} kB"
    return f"{n / 1_000_000:.1f} MB"


@dataclass
class Upload:
    """One file as the browser sent it. ``size`` is what the browser reported: the upload
    guard sends no bytes for a file past the limit, so ``len(content)`` can be smaller."""

    name: str
    content: bytes
    size: int
    example: Example | None = None


@dataclass
class Outcome:
    """What the page shows for one file: a prediction, or a message saying why not."""

    upload: Upload
    result: Classified | None = None  # what galaxylib.inference.classify answered
    error: str | None = None
    hint: str | None = None  # what to do about the error
    image: np.ndarray | None = None  # uint8 RGB for display, at most DISPLAY_SIZE

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.ok

    @property
    def prediction(self):
        return self.result.prediction if self.result is not None else None

    @property
    def model_input(self) -> np.ndarray | None:
        """Exactly what the model classified (for Grad-CAM)."""
        return self.result.model_input if self.result is not None else None


def uploads_from_widget(value: Iterable[Any]) -> list[Upload]:
    """ipywidgets 8 FileUpload ``value`` (dicts with a memoryview ``content``) -> Uploads."""
    uploads = []
    for item in value or ():
        content = item["content"]
        data = content.tobytes() if isinstance(content, memoryview) else bytes(content or b"")
        size = int(item.get("size") or len(data))
        uploads.append(Upload(name=str(item.get("name") or "upload"), content=data, size=max(size, len(data))))
    return uploads


def _display_image(img: Image.Image) -> np.ndarray:
    img = img.copy()
    img.thumbnail((DISPLAY_SIZE, DISPLAY_SIZE), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def classify_uploads(
    predictor, uploads: Sequence[Upload], limit: int = UPLOAD_LIMIT_BYTES, max_files: int = MAX_FILES_PER_UPLOAD
) -> list[Outcome]:
    """Apply the upload limits, then classify what passed through ``classify`` in one call.

    A file that cannot be classified gets a user-safe ``error``; it never stops the others.
    Files take their share of ``limit`` in order while they fit; one that does not fit is
    refused and takes nothing. The page's upload guard applies the same rule.
    """
    outcomes: list[Outcome] = []
    accepted: list[Outcome] = []
    used = 0
    for i, upload in enumerate(uploads):
        out = Outcome(upload)
        outcomes.append(out)
        if i >= max_files:
            out.error = (
                f"{upload.name}: not classified; one upload takes at most {max_files} files. "
                "Upload the rest separately."
            )
        elif upload.size > limit:
            out.error = f"{upload.name}: {format_bytes(upload.size)} is over the upload limit of {UPLOAD_LIMIT_LABEL}."
            out.hint = "Galaxy10 cutouts are a few tens of kB; send a cutout, not a full-resolution image."
        elif used + upload.size > limit or len(upload.content) < upload.size:
            out.error = (
                f"{upload.name}: not classified; with the files before it, this upload is over "
                f"the limit of {UPLOAD_LIMIT_LABEL}."
            )
            out.hint = "Upload fewer files at a time."
        else:
            used += upload.size
            accepted.append(out)
    results = classify(
        predictor, [ImageInput.from_bytes(o.upload.content, o.upload.name) for o in accepted], keep_images=True
    )
    for out, result in zip(accepted, results):
        out.result = result
        if result.ok:
            out.image = _display_image(result.image)
            result.image = None  # the thumbnail is all the page keeps
        else:
            out.error = str(result.error)
            out.hint = ERROR_HINTS.get(result.error.code, ERROR_HINTS["invalid_image"])
    return outcomes


def prediction_rows(outcomes: Iterable[Outcome]) -> list[dict[str, Any]]:
    """Rows for ``PredictionStore.add_many``: the one record builder, source ``dashboard``."""
    return [prediction_row(o.result, "dashboard", example=o.upload.example is not None) for o in outcomes if o.ok]
