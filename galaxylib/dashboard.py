"""The voila dashboard: upload cutouts, see the class, its probabilities and why.

``notebooks/dashboard.ipynb`` only calls :func:`show`; everything else lives here so
it can be tested without a browser. Answers come from galaxylib's ``Predictor``
(the TFLite model, the one preprocessing path), so a file gets the same class and
probabilities here as from the API and predict.sh. The artifact's Keras model is
used only to draw the Grad-CAM saliency map.

Nothing a user does may put a Python traceback on the page: every widget callback
runs inside :func:`guarded`, which logs the traceback to the server log and shows a
one-line message instead.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import html
import io
import json
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from galaxylib.artifact import SIDECAR, Artifact, ArtifactError, load_keras_model, read_artifact
from galaxylib.classes import CLASS_NAMES
from galaxylib.config import MODELS_DIR, SAMPLES_DIR, database_url
from galaxylib.preprocessing import ImageError, decode_image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter is not for users

log = logging.getLogger("galaxylib.dashboard")

# ---------------------------------------------------------------- limits
# One upload (every file picked at once) travels to the kernel as ONE websocket message.
# voila.json sets tornado's websocket_max_message_size to websocket_max_message_size()
# (tornado's default, 10 MiB, would silently drop the connection well below this limit),
# and the page's upload guard (UPLOAD_GUARD_JS) holds back the bytes of files past the
# limit, so the kernel can answer with a message instead of losing the connection.
UPLOAD_LIMIT_BYTES = 20_000_000
UPLOAD_LIMIT_LABEL = "20 MB"
WEBSOCKET_HEADROOM_BYTES = 1 << 20  # the message's JSON part: names, types, sizes
MAX_FILES_PER_UPLOAD = 24  # Grad-CAM costs ~0.3 s an image on a laptop CPU
MAX_RESULT_CARDS = 24  # older cards drop off, so a long demo does not grow the page forever
HISTORY_ROWS = 8
DISPLAY_SIZE = 256  # images are shown at most this big (cutouts are 256 x 256)
ACCEPT = ".jpg,.jpeg,.png,image/jpeg,image/png"
SYNTHETIC_SEED = 20_240_610


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


def format_probability(p: float) -> str:
    """The one format for probabilities on the page (the browser test compares it)."""
    return f"{100.0 * float(p):.2f}%"


# ---------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelChoice:
    """One artifact the picker offers."""

    path: Path
    label: str
    from_env: bool = False


def _sidecar(run_dir: Path) -> dict[str, Any]:
    """The sidecar JSON alone: cheap, unlike read_artifact, which hashes the model files."""
    try:
        return json.loads((run_dir / SIDECAR).read_text())
    except (OSError, ValueError):
        return {}


def _choice_label(run_dir: Path) -> str:
    meta = _sidecar(run_dir)
    name = meta.get("run_name") or run_dir.name
    when = str(meta.get("created_at", ""))[:16].replace("T", " ")
    return " · ".join([str(name)] + ([when] if when else []))


def list_runs(models_dir: Path) -> list[Path]:
    """Complete artifact folders in ``models_dir``, newest first (the rule of ``latest_run``)."""
    runs = [p.parent for p in Path(models_dir).glob("*/" + SIDECAR) if not p.parent.name.endswith(".tmp")]
    return sorted(runs, key=lambda run: (run / SIDECAR).stat().st_mtime, reverse=True)


def discover_models(models_dir: Path = MODELS_DIR, model_path: str | None = None) -> list[ModelChoice]:
    """MODEL_PATH first (the default), then every run in ``models/``, newest first.

    MODEL_PATH may name one run, or a folder of runs that then replaces ``models/``.
    """
    if model_path is None:
        model_path = os.environ.get("MODEL_PATH", "").strip()
    choices: list[ModelChoice] = []
    if model_path:
        path = Path(model_path).expanduser()
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


# ---------------------------------------------------------------- examples


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


@functools.lru_cache(maxsize=16)
def _synthetic_png(class_index: int) -> bytes:
    from galaxylib.synthetic import render_galaxy

    pixels = render_galaxy(class_index, np.random.default_rng(SYNTHETIC_SEED + class_index))
    return png_bytes(pixels)


def list_examples(samples_dir: Path = SAMPLES_DIR) -> list[Example]:
    """One cutout per class: real ones from ``samples_dir`` when present, else synthetic."""
    labels = Path(samples_dir) / "labels.csv"
    examples: list[Example] = []
    if labels.is_file():
        import csv

        first: dict[int, Path] = {}
        with open(labels, newline="") as fh:
            for row in csv.DictReader(fh):
                path = Path(samples_dir) / row["filename"]
                index = int(row["label"])
                if path.is_file() and 0 <= index < len(CLASS_NAMES) and (
                        index not in first or path.name < first[index].name):
                    first[index] = path
        for index, path in sorted(first.items()):
            examples.append(Example(f"{CLASS_NAMES[index]} — {path.name}", path.name, CLASS_NAMES[index],
                                    synthetic=False, path=path))
    if not examples:
        for index, name in enumerate(CLASS_NAMES):
            slug = name.lower().replace(" ", "-")
            examples.append(Example(f"Synthetic {name} (generated, not a real galaxy)",
                                    f"synthetic-{slug}.png", name, synthetic=True, class_index=index))
    return examples


# ---------------------------------------------------------------- classification


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
    prediction: Any = None  # galaxylib.predictor.Prediction
    error: str | None = None
    hint: str | None = None  # what to do about the error
    image: np.ndarray | None = None  # uint8 RGB for display, at most DISPLAY_SIZE
    model_input: np.ndarray | None = None  # exactly what the Predictor classified
    original_size: tuple[int, int] | None = None  # (width, height) as uploaded

    @property
    def ok(self) -> bool:
        return self.prediction is not None


def uploads_from_widget(value: Iterable[Any]) -> list[Upload]:
    """ipywidgets 8 FileUpload ``value`` (dicts with a memoryview ``content``) -> Uploads."""
    uploads = []
    for item in value or ():
        content = item["content"]
        data = content.tobytes() if isinstance(content, memoryview) else bytes(content or b"")
        size = int(item.get("size") or len(data))
        uploads.append(Upload(name=str(item.get("name") or "upload"), content=data, size=max(size, len(data))))
    return uploads


def _named_stream(upload: Upload) -> io.BytesIO:
    stream = io.BytesIO(upload.content)
    stream.name = upload.name  # ImageError messages start with the file's name
    return stream


def _display_image(img: Image.Image) -> np.ndarray:
    img = img.copy()
    img.thumbnail((DISPLAY_SIZE, DISPLAY_SIZE), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def classify_uploads(predictor, uploads: Sequence[Upload], limit: int = UPLOAD_LIMIT_BYTES,
                     max_files: int = MAX_FILES_PER_UPLOAD) -> list[Outcome]:
    """Validate, decode and classify files in one Predictor forward pass.

    A file that cannot be classified gets a user-safe ``error``; it never stops the others.
    Files take their share of ``limit`` in order while they fit; one that does not fit is
    refused and takes nothing. The page's upload guard applies the same rule.
    """
    outcomes: list[Outcome] = []
    used = 0
    for i, upload in enumerate(uploads):
        out = Outcome(upload)
        outcomes.append(out)
        if i >= max_files:
            out.error = (f"{upload.name}: not classified; one upload takes at most {max_files} files. "
                         "Upload the rest separately.")
            continue
        if upload.size > limit:
            out.error = f"{upload.name}: {format_bytes(upload.size)} is over the upload limit of {UPLOAD_LIMIT_LABEL}."
            out.hint = "Galaxy10 cutouts are a few tens of kB; send a cutout, not a full-resolution image."
            continue
        if used + upload.size > limit or len(upload.content) < upload.size:
            out.error = (f"{upload.name}: not classified; with the files before it, this upload is over "
                         f"the limit of {UPLOAD_LIMIT_LABEL}.")
            out.hint = "Upload fewer files at a time."
            continue
        used += upload.size
        try:
            decoded = decode_image(_named_stream(upload))
            out.model_input = predictor.preprocess(decoded)  # the Predictor's own preprocessing
            out.image = _display_image(decoded)
            out.original_size = decoded.size
        except ImageError as exc:
            out.error, out.hint = str(exc), ERROR_HINTS.get(exc.code, ERROR_HINTS["invalid_image"])
        except Exception as exc:  # a decoder bug must not cost the other files their answer
            log.exception("could not decode %s", upload.name)
            out.error = f"{upload.name}: could not be read as an image ({type(exc).__name__})."
    good = [o for o in outcomes if o.model_input is not None]
    if good:
        probabilities = predictor.predict_arrays(np.stack([o.model_input for o in good]))
        for out, probs in zip(good, probabilities):
            out.prediction = predictor.to_prediction(probs)
    return outcomes


def prediction_rows(outcomes: Iterable[Outcome]) -> list[dict[str, Any]]:
    """Rows for ``PredictionStore.add_many``, with the API's metadata keys plus ``source``."""
    rows = []
    for out in outcomes:
        if not out.ok:
            continue
        p = out.prediction
        meta: dict[str, Any] = {
            "source": "dashboard",
            "model_version": p.model_version,
            "class_index": p.class_index,
            "probabilities": p.probabilities,
            "size_bytes": out.upload.size,
            "sha256": hashlib.sha256(out.upload.content).hexdigest(),
            "width": out.original_size[0] if out.original_size else None,
            "height": out.original_size[1] if out.original_size else None,
        }
        if out.upload.example is not None:
            meta["example"] = True
            meta["synthetic"] = out.upload.example.synthetic
        rows.append({"filename": out.upload.name, "predicted_class": p.predicted_class,
                     "confidence": p.confidence, "metadata": meta})
    return rows


# ---------------------------------------------------------------- saliency


@dataclass
class Saliency:
    image: np.ndarray | None  # the overlay, uint8 RGB at the display size
    caption: str
    error: str | None = None


def saliency_for(gradcam, outcomes: Sequence[Outcome]) -> list[Saliency]:
    """Grad-CAM overlays for classified outcomes, explaining the Predictor's class."""
    from galaxylib.saliency import overlay

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


# ---------------------------------------------------------------- HTML pieces

esc = functools.partial(html.escape, quote=True)


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def prediction_html(out: Outcome) -> str:
    """Class, confidence, the 10-class bar chart and the model version, with data-* for tests."""
    p = out.prediction
    rows = []
    for rank, (name, prob) in enumerate(sorted(p.probabilities.items(), key=lambda kv: -kv[1])):
        top = " gc-top" if name == p.predicted_class else ""
        rows.append(
            f'<div class="gc-prob-row{top}" data-class="{esc(name)}" data-probability="{prob!r}">'
            f'<span class="gc-prob-name">{esc(name)}</span>'
            f'<span class="gc-prob-track"><span class="gc-prob-bar" style="width:{100.0 * prob:.2f}%"></span></span>'
            f'<span class="gc-prob-pct">{format_probability(prob)}</span></div>')
    truth = ""
    example = out.upload.example
    if example is not None and example.true_class:
        agree = "gc-agree" if example.true_class == p.predicted_class else "gc-disagree"
        truth = (f'<div class="gc-truth {agree}">Galaxy Zoo label: <b>{esc(example.true_class)}</b></div>'
                 if not example.synthetic else
                 f'<div class="gc-truth {agree}">Drawn as: <b>{esc(example.true_class)}</b></div>')
    return (
        f'<div class="gc-prediction" data-filename="{esc(out.upload.name)}" '
        f'data-class="{esc(p.predicted_class)}" data-confidence="{p.confidence!r}">'
        f'<div class="gc-kicker">Predicted class</div>'
        f'<div class="gc-class">{esc(p.predicted_class)}</div>'
        f'<div class="gc-confidence">confidence <b>{format_probability(p.confidence)}</b></div>'
        f'{truth}'
        f'<div class="gc-probs" role="table" aria-label="class probabilities">{"".join(rows)}</div>'
        f'<div class="gc-version">model <code>{esc(p.model_version)}</code></div></div>')


def card_header_html(upload: Upload) -> str:
    tags = []
    if upload.example is not None:
        tags.append('<span class="gc-tag gc-tag-synthetic">synthetic example</span>' if upload.example.synthetic
                    else '<span class="gc-tag">example cutout</span>')
    return (f'<div class="gc-card-head"><span class="gc-filename" title="{esc(upload.name)}">'
            f'{esc(upload.name)}</span>{"".join(tags)}'
            f'<span class="gc-size">{format_bytes(upload.size)}</span></div>')


def error_html(message: str, filename: str | None = None, hint: str | None = None) -> str:
    name = f' data-filename="{esc(filename)}"' if filename is not None else ""
    more = f'<div class="gc-error-hint">{esc(hint)}</div>' if hint else ""
    return (f'<div class="gc-error"{name} role="alert"><span class="gc-error-icon">!</span>'
            f'<div><div class="gc-error-text">{esc(message)}</div>{more}</div></div>')


def status_html(message: str, kind: str = "info") -> str:
    if not message:
        return ""
    return f'<div class="gc-status gc-status-{esc(kind)}" role="status">{esc(message)}</div>'


def model_info_html(artifact: Artifact | None, problem: str | None = None) -> str:
    if artifact is None:
        return f'<div class="gc-model gc-model-missing">{esc(problem or "No model loaded.")}</div>'
    meta = artifact.sidecar
    trained = str(meta.get("created_at", ""))[:10]
    details = f"{artifact.image_size} px input" + (f" · trained {esc(trained)}" if trained else "")
    warn = ('<div class="gc-model-warn">Trained on synthetic galaxies: a plumbing demo, '
            'not a scientific classifier.</div>') if meta.get("synthetic") else ""
    return (f'<div class="gc-model">version <code>{esc(artifact.model_version)}</code></div>'
            f'<div class="gc-model gc-muted">{details}</div>{warn}')


def _when(iso: str | None, today: dt.date | None = None) -> tuple[str, str]:
    """(short, full) UTC times: the clock for today's rows, the date for older ones."""
    if not iso:
        return "", ""
    try:
        t = dt.datetime.fromisoformat(iso).astimezone(dt.timezone.utc)
    except ValueError:
        return iso, iso
    today = today or dt.datetime.now(dt.timezone.utc).date()
    short = t.strftime("%H:%M UTC") if t.date() == today else t.strftime("%Y-%m-%d")
    return short, t.strftime("%Y-%m-%d %H:%M:%S UTC")


def history_html(rows: Sequence[dict[str, Any]], total: int, counts: dict[str, int], where: str) -> str:
    """Latest predictions and a per-class count chart, from the predictions table."""
    if rows:
        items = []
        for r in rows:
            short, full = _when(r.get("created_at"))
            source = (r.get("metadata") or {}).get("source") or ""
            items.append(
                f'<div class="gc-h-item"><div class="gc-h-line"><span class="gc-h-file" title="{esc(r["filename"])}">'
                f'{esc(r["filename"])}</span><span class="gc-h-time" title="{esc(full)}">{esc(short)}</span></div>'
                f'<div class="gc-h-line gc-muted"><span>{esc(r["predicted_class"])} · '
                f'{format_probability(r["confidence"])}</span><span>{esc(str(source))}</span></div></div>')
        listing = f'<div class="gc-history-list">{"".join(items)}</div>'
    else:
        listing = '<div class="gc-empty">No predictions logged yet. Tick the logging box and classify a cutout.</div>'
    top = max(counts.values(), default=0) or 1
    bars = "".join(
        f'<div class="gc-count-row" data-class="{esc(name)}" data-count="{counts.get(name, 0)}">'
        f'<span class="gc-prob-name">{esc(name)}</span>'
        f'<span class="gc-prob-track"><span class="gc-count-bar" style="width:{100.0 * counts.get(name, 0) / top:.1f}%">'
        f'</span></span><span class="gc-prob-pct">{counts.get(name, 0)}</span></div>' for name in CLASS_NAMES)
    return (f'<div class="gc-history" data-total="{total}">'
            f'<div class="gc-section-title">Latest predictions <span class="gc-muted">({total} logged)</span></div>'
            f'{listing}<div class="gc-section-title">Predictions per class</div>'
            f'<div class="gc-counts">{bars}</div><div class="gc-db">database: <code>{esc(where)}</code></div></div>')


# ---------------------------------------------------------------- callbacks


def short_reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def guarded(action: str) -> Callable:
    """Run a widget callback so that a failure becomes a one-line message, never a traceback."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            try:
                return fn(self, *args, **kwargs)
            except Exception as exc:
                log.exception("dashboard: %s failed", action)
                self.set_status(f"Something went wrong while {action} ({short_reason(exc)}). "
                                "The server log has the details.", "error")
                return None

        return wrapper

    return decorate


def _server_log_handler() -> None:
    """Tracebacks go to the voila terminal, never to the page."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.__stderr__)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


# ---------------------------------------------------------------- the app


@dataclass
class _Loaded:
    predictor: Any = None
    problem: str | None = None
    gradcam: Any = None
    gradcam_problem: str | None = None
    gradcam_lock: threading.Lock = field(default_factory=threading.Lock)


class Dashboard:
    """The widget tree and its callbacks. Construct with no arguments for the real page;
    tests pass ``models``, ``examples`` and ``db_url`` to stay off the real folders."""

    def __init__(self, models: list[ModelChoice] | None = None, examples: list[Example] | None = None,
                 db_url: str | None = None, log_predictions: bool = False, warm_saliency: bool = True):
        import ipywidgets as w

        _server_log_handler()
        self.w = w
        self.models = discover_models() if models is None else models
        self.examples = list_examples() if examples is None else examples
        self.db_url = db_url
        self.warm_saliency = warm_saliency
        self._store = None
        self._loaded: dict[Path, _Loaded] = {}
        self.current: _Loaded = _Loaded(problem="No model loaded.")

        self.header = w.HTML(
            '<div class="gc-title">Galaxy10 morphology classifier</div>'
            '<div class="gc-subtitle">Drop DECaLS cutouts (JPEG or PNG) to see the predicted Galaxy10 '
            'class, all ten probabilities and a Grad-CAM map of the pixels behind the answer.</div>')
        self.model_picker = w.Dropdown(options=[(c.label, str(c.path)) for c in self.models],
                                       layout=w.Layout(width="auto"))
        self.model_picker.add_class("gc-model-picker")
        self.model_info = w.HTML()
        self.upload = w.FileUpload(accept=ACCEPT, multiple=True, description="Upload cutouts",
                                   icon="upload", button_style="primary")
        self.upload.add_class("gc-upload")
        limit_hint = w.HTML(f'<div class="gc-hint">JPEG or PNG · several at once · up to {UPLOAD_LIMIT_LABEL} '
                            f'per upload · at most {MAX_FILES_PER_UPLOAD} files</div>')
        synthetic = bool(self.examples) and all(e.synthetic for e in self.examples)
        example_note = ("No real sample cutouts found: these are synthetic galaxies." if synthetic
                        else "Real Galaxy10 DECaLS cutouts with their Galaxy Zoo labels.")
        self.example_picker = w.Dropdown(options=[(e.label, i) for i, e in enumerate(self.examples)],
                                         layout=w.Layout(width="auto", flex="1 1 260px", min_width="0"))
        self.example_picker.add_class("gc-example-picker")
        self.example_button = w.Button(description="Classify example", icon="play")
        self.example_button.add_class("gc-example-button")
        self.log_toggle = w.Checkbox(value=log_predictions, description="Log predictions to the database",
                                     indent=False)
        self.log_toggle.add_class("gc-log-toggle")
        self.status = w.HTML()
        self.status.add_class("gc-status-box")
        self.status_message, self.status_kind = "", "info"
        self.results = w.VBox()
        self.results.add_class("gc-results")
        self.empty = w.HTML('<div class="gc-empty gc-empty-results">Results appear here. Upload a cutout or '
                            'classify an example to start.</div>')
        self.clear_button = w.Button(description="Clear results", icon="trash")
        self.clear_button.add_class("gc-clear")
        self.history = w.HTML()
        self.history_button = w.Button(description="Refresh", icon="refresh")
        self.history_button.add_class("gc-refresh")

        upload_box = self._box([self.upload, limit_hint], "gc-row")
        example_box = self._box([self.example_picker, self.example_button], "gc-row")
        controls = self._box([
            w.HTML('<div class="gc-section-title">1 · Your cutouts</div>'), upload_box,
            w.HTML(f'<div class="gc-section-title">or an example</div><div class="gc-hint">{example_note}</div>'),
            example_box, self.log_toggle], "gc-card gc-controls")
        model_card = self._box([w.HTML('<div class="gc-section-title">Model</div>'), self.model_picker,
                                self.model_info], "gc-card gc-model-card")
        if len(self.models) < 2:
            self.model_picker.layout.display = "none"  # the picker only appears when there is a choice
        results_head = self._box([w.HTML('<div class="gc-section-title">2 · Results</div>'), self.clear_button],
                                 "gc-results-head")
        main = self._box([controls, self.status, results_head, self.empty, self.results], "gc-main")
        history_head = self._box([w.HTML('<div class="gc-section-title">History</div>'), self.history_button],
                                 "gc-results-head")
        side = self._box([model_card, self._box([history_head, self.history], "gc-card gc-history-card")],
                         "gc-side")
        self.root = self._box([self._box([self.header], "gc-header"),
                               self._box([main, side], "gc-columns")], "gc-app")

        self.upload.observe(self._on_upload, names="value")
        self.upload.observe(self._on_upload_error, names="error")
        self.example_button.on_click(self._on_example)
        self.clear_button.on_click(self._on_clear)
        self.history_button.on_click(self._on_refresh)
        self.model_picker.observe(self._on_model_change, names="value")

        if self.models:
            self.select_model(Path(self.model_picker.value))
        else:
            self._set_model_problem(
                f"No trained model found. Train one (a quick synthetic run is enough to try the page) "
                f"so that {MODELS_DIR.name}/ holds a run, or set MODEL_PATH to an artifact folder.")
        self.refresh_history()

    # -- small helpers
    def _box(self, children: list, classes: str):
        box = self.w.Box(children)
        for c in classes.split():
            box.add_class(c)
        return box

    def set_status(self, message: str, kind: str = "info") -> None:
        self.status_message, self.status_kind = message, kind
        self.status.value = status_html(message, kind)

    def _set_busy(self, busy: bool) -> None:
        """No second upload while one is running: the kernel handles one callback at a time."""
        self.model_picker.disabled = busy
        self.example_button.disabled = self.upload.disabled = busy or self.current.predictor is None

    def _set_model_problem(self, problem: str) -> None:
        self.current = _Loaded(problem=problem)
        self.model_info.value = model_info_html(None, problem)
        self.upload.disabled = self.example_button.disabled = True
        self.set_status(problem, "error")

    # -- model
    def select_model(self, path: Path) -> None:
        """Load (or reuse) the Predictor for ``path``; a broken artifact becomes a message."""
        from galaxylib.predictor import Predictor

        loaded = self._loaded.get(path)
        if loaded is None:
            try:
                loaded = _Loaded(predictor=Predictor(path))
            except ArtifactError as exc:
                self._set_model_problem(f"Cannot use the model at {path}: {exc}")
                return
            except Exception as exc:
                log.exception("could not load %s", path)
                self._set_model_problem(f"Cannot load the model at {path} ({short_reason(exc)}).")
                return
            self._loaded[path] = loaded
        self.current = loaded
        self.model_info.value = model_info_html(loaded.predictor.artifact)
        self.upload.disabled = self.example_button.disabled = False
        self.set_status("")
        if self.warm_saliency and loaded.gradcam is None and loaded.gradcam_problem is None:
            threading.Thread(target=self._gradcam_for, args=(loaded,), daemon=True,
                             name="gradcam-warmup").start()

    def _gradcam_for(self, loaded: _Loaded):
        """Load the Keras model once per artifact (a few seconds: TensorFlow) under a lock."""
        with loaded.gradcam_lock:
            if loaded.gradcam is None and loaded.gradcam_problem is None:
                try:
                    from galaxylib.saliency import GradCam

                    artifact = read_artifact(loaded.predictor.path, need_keras=True)
                    loaded.gradcam = GradCam(load_keras_model(artifact))
                except Exception as exc:
                    log.exception("no Grad-CAM for %s", loaded.predictor.path)
                    loaded.gradcam_problem = str(exc) if isinstance(exc, ArtifactError) else short_reason(exc)
            return loaded.gradcam

    # -- callbacks
    @guarded("switching models")
    def _on_model_change(self, change) -> None:
        if change["new"]:
            self.select_model(Path(change["new"]))

    @guarded("reading the upload")
    def _on_upload(self, change) -> None:
        uploads = uploads_from_widget(change["new"])
        if not uploads:
            return
        try:
            self.classify(uploads)
        finally:
            self.upload.value = ()  # frees the bytes; the same file can be sent again

    @guarded("reading the upload")
    def _on_upload_error(self, change) -> None:
        if change["new"]:
            self.set_status("The browser could not read that file. Try again, or pick another file.", "error")

    @guarded("classifying the example")
    def _on_example(self, _button) -> None:
        if not self.examples:
            return
        example = self.examples[int(self.example_picker.value)]
        content = example.read_bytes()
        self.classify([Upload(example.filename, content, len(content), example=example)])

    @guarded("clearing the results")
    def _on_clear(self, _button) -> None:
        self.results.children = ()
        self.empty.layout.display = None
        self.set_status("")

    @guarded("reading the history")
    def _on_refresh(self, _button) -> None:
        self.refresh_history()

    # -- the work
    def classify(self, uploads: list[Upload]) -> list[Outcome]:
        """Predict, show cards at once, log if asked, then fill in the saliency maps."""
        if self.current.predictor is None:
            self.set_status(self.current.problem or "No model loaded.", "error")
            return []
        n = len(uploads)
        self.set_status(f"Classifying {n} file{'s' * (n != 1)}…", "busy")
        self._set_busy(True)
        try:
            outcomes = classify_uploads(self.current.predictor, uploads)
            cards, pending = [], []
            for out in outcomes:
                card, slot = self._card(out)
                cards.append(card)
                if out.ok:
                    pending.append((out, slot))
            self.empty.layout.display = "none"
            self.results.children = tuple(cards) + tuple(self.results.children)[: max(0, MAX_RESULT_CARDS - len(cards))]
            failed = n - len(pending)
            summary = f"Classified {len(pending)} of {n} file{'s' * (n != 1)}."
            if failed:
                summary += f" {failed} could not be classified; see the red message{'s' * (failed != 1)} below."
            logged = self._log(outcomes)
            if logged:
                summary += f" {logged}"
            self.set_status(summary, "error" if failed else "ok")
            if pending:
                self._fill_saliency(pending)
            return outcomes
        finally:
            self._set_busy(False)

    def _card(self, out: Outcome):
        w = self.w
        head = w.HTML(card_header_html(out.upload))
        if not out.ok:
            return self._box([head, w.HTML(error_html(out.error or "not classified", out.upload.name, out.hint))],
                             "gc-card gc-result gc-result-error"), None
        original = w.Image(value=png_bytes(out.image), format="png")
        original.add_class("gc-img")
        slot = self._box([w.HTML('<div class="gc-img-placeholder">computing saliency…</div>')], "gc-slot")
        figure_in = self._box([original, w.HTML('<div class="gc-caption">input</div>')], "gc-figure")
        figure_sal = self._box([slot, w.HTML('<div class="gc-caption gc-saliency-caption" data-state="pending">'
                                             'Grad-CAM saliency</div>')], "gc-figure")
        panel = w.HTML(prediction_html(out))
        panel.add_class("gc-prediction-box")
        body = self._box([figure_in, figure_sal, panel], "gc-result-body")
        return self._box([head, body], "gc-card gc-result"), figure_sal

    def _fill_saliency(self, pending: list[tuple[Outcome, Any]]) -> None:
        w = self.w
        message, kind = self.status_message, self.status_kind
        self.set_status(f"{message} Drawing saliency maps…", "busy")
        gradcam = self._gradcam_for(self.current)
        try:
            maps = saliency_for(gradcam, [o for o, _ in pending]) if gradcam is not None else None
            problem = self.current.gradcam_problem
        except Exception as exc:
            log.exception("Grad-CAM failed")
            maps, problem = None, short_reason(exc)
        for i, (out, figure) in enumerate(pending):
            slot, caption = figure.children
            if maps is None:
                slot.children = (w.HTML(error_html(f"Saliency unavailable: {problem}")),)
                caption.value = '<div class="gc-caption gc-saliency-caption" data-state="unavailable">no saliency</div>'
                continue
            img = w.Image(value=png_bytes(maps[i].image), format="png")
            img.add_class("gc-img")
            img.add_class("gc-saliency")
            slot.children = (img,)
            caption.value = (f'<div class="gc-caption gc-saliency-caption" data-state="ready">'
                             f'{esc(maps[i].caption)}</div>')
        self.set_status(message, kind)

    # -- database
    def store(self):
        if self._store is None:
            from galaxylib.db import PredictionStore

            self._store = PredictionStore(self.db_url or database_url())
        return self._store

    def _log(self, outcomes: list[Outcome]) -> str:
        if not self.log_toggle.value:
            return ""
        rows = prediction_rows(outcomes)
        if not rows:
            return ""
        try:
            self.store().add_many(rows)
        except Exception as exc:
            log.exception("could not log predictions")
            return f"Not logged: the database refused ({short_reason(exc)})."
        self.refresh_history()
        return f"Logged {len(rows)} prediction{'s' * (len(rows) != 1)}."

    def refresh_history(self) -> None:
        """Re-read the latest rows and per-class counts; a database problem becomes a message."""
        try:
            store = self.store()
            records, total = store.list(limit=HISTORY_ROWS)
            self.history.value = history_html([r.as_dict() for r in records], total, store.class_counts(),
                                              store.url)
        except Exception as exc:
            log.exception("could not read the predictions table")
            self.history.value = error_html(f"Cannot read the predictions table ({short_reason(exc)}).")


# ---------------------------------------------------------------- page


PAGE_CSS = """
<style>
:root { --gc-ink:#172033; --gc-muted:#5b6579; --gc-line:#e3e7ef; --gc-accent:#2f5bd3; --gc-bg:#f4f6fa;
        --gc-err:#b42318; --gc-err-bg:#fef3f2; --gc-ok:#067647; }
body, .jp-Notebook { background: var(--gc-bg) !important; }
.gc-app { display:flex; flex-direction:column; gap:16px; width:100%; max-width:1480px; margin:0 auto;
          color:var(--gc-ink); font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue",
          Arial, sans-serif; font-size:14px; line-height:1.45; }
.gc-app .widget-html-content { line-height:1.45; font-size:14px; }
.gc-header .widget-html-content, .gc-header { color:#fff; }
.gc-app .widget-html { margin:0; }
.gc-header { background: linear-gradient(120deg, #0b1d3a 0%, #1d3a6e 60%, #2f5bd3 100%); color:#fff;
             border-radius:12px; padding:18px 24px; }
.gc-title { font-size:24px; font-weight:700; letter-spacing:.2px; }
.gc-subtitle { opacity:.85; margin-top:4px; max-width:900px; }
.gc-columns { display:flex; flex-wrap:wrap; gap:16px; align-items:flex-start; }
.gc-main { display:flex; flex-direction:column; gap:12px; flex:1 1 720px; min-width:0; }
.gc-side { display:flex; flex-direction:column; gap:16px; flex:0 1 380px; min-width:300px; }
.gc-card { display:flex; flex-direction:column; gap:8px; background:#fff; border:1px solid var(--gc-line);
           border-radius:12px; padding:14px 16px; box-shadow:0 1px 2px rgba(16,24,40,.05); }
.gc-row { display:flex; flex-wrap:wrap; gap:10px; align-items:center; }
.gc-section-title { font-weight:650; font-size:15px; }
.gc-muted, .gc-hint { color:var(--gc-muted); font-weight:400; font-size:13px; }
.gc-app .gc-upload.jupyter-button { width:auto; height:36px; padding:0 18px; border-radius:8px; font-size:0; }
/* ipywidgets writes "Upload cutouts (0)", a count that is always 0 here: show the words only */
.gc-app .gc-upload.jupyter-button i { font-size:14px; margin-right:6px; }
.gc-app .gc-upload.jupyter-button::after { content:"Upload cutouts"; font-size:14px; font-weight:600; }
.gc-app .gc-example-button.jupyter-button, .gc-app .gc-clear.jupyter-button, .gc-app .gc-refresh.jupyter-button {
           width:auto; height:32px; padding:0 14px; border-radius:8px; }
.gc-app .gc-model-picker { width:100%; margin:0; }
.gc-example-picker select, .gc-model-picker select { height:32px; font-size:14px; }
.gc-results-head { display:flex; justify-content:space-between; align-items:center; }
.gc-results { display:flex; flex-direction:column; gap:12px; }
.gc-empty { color:var(--gc-muted); padding:10px 0; }
.gc-empty-results { background:#fff; border:1px dashed #c8cfdc; border-radius:12px; padding:28px;
                    text-align:center; }
.gc-status { border-radius:8px; padding:8px 12px; font-size:14px; }
.gc-status-info, .gc-status-busy { background:#eef3ff; color:#1d3a8a; }
.gc-status-ok { background:#ecfdf3; color:var(--gc-ok); }
.gc-status-error { background:var(--gc-err-bg); color:var(--gc-err); }
.gc-card-head { display:flex; gap:8px; align-items:baseline; min-width:0; }
.gc-filename { font-weight:650; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
.gc-size { color:var(--gc-muted); font-size:12px; margin-left:auto; white-space:nowrap; }
.gc-tag { background:#eef3ff; color:#1d3a8a; border-radius:999px; padding:1px 8px; font-size:12px;
          white-space:nowrap; }
.gc-tag-synthetic { background:#fff4e5; color:#9a5b00; }
.gc-result-body { display:flex; flex-wrap:wrap; gap:16px; align-items:flex-start; }
.gc-figure { display:flex; flex-direction:column; gap:4px; width:220px; flex:0 0 220px; }
.gc-img img, img.gc-img { width:220px; height:220px; object-fit:contain; border-radius:8px; background:#000;
          display:block; }
.gc-img-placeholder { width:220px; height:220px; border-radius:8px; background:#e9edf5; color:var(--gc-muted);
          display:flex; align-items:center; justify-content:center; font-size:13px; }
.gc-caption { color:var(--gc-muted); font-size:12px; line-height:1.3; }
.gc-app .gc-prediction-box { flex:1 1 300px; min-width:280px; margin:0; }
.gc-prediction-box .widget-html-content { width:100%; }
.gc-kicker { color:var(--gc-muted); font-size:12px; text-transform:uppercase; letter-spacing:.6px; }
.gc-class { font-size:22px; font-weight:700; line-height:1.2; }
.gc-confidence { margin:2px 0 6px; }
.gc-truth { font-size:13px; margin-bottom:6px; }
.gc-agree b { color:var(--gc-ok); }
.gc-disagree b { color:#9a5b00; }
.gc-prob-row, .gc-count-row { display:grid; grid-template-columns: minmax(120px, 196px) 1fr 62px; gap:8px;
          align-items:center; font-size:13px; padding:1px 0; }
.gc-prob-name { overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
.gc-prob-track { background:#edf0f6; border-radius:4px; height:10px; overflow:hidden; }
.gc-prob-bar { display:block; height:100%; background:#9db2e8; border-radius:4px; }
.gc-top .gc-prob-bar { background:var(--gc-accent); }
.gc-top { font-weight:650; }
.gc-count-bar { display:block; height:100%; background:#7c8db5; border-radius:4px; }
.gc-prob-pct { text-align:right; font-variant-numeric:tabular-nums; }
.gc-version, .gc-db { color:var(--gc-muted); font-size:12px; margin-top:8px; overflow-wrap:anywhere; }
.gc-error { display:flex; gap:10px; align-items:flex-start; background:var(--gc-err-bg); color:var(--gc-err);
            border:1px solid #fecdca; border-radius:8px; padding:10px 12px; }
.gc-error-text { font-weight:600; overflow-wrap:anywhere; }
.gc-error-hint { color:#7a271a; font-size:13px; margin-top:2px; }
.gc-error-icon { flex:0 0 20px; height:20px; border-radius:50%; background:var(--gc-err); color:#fff;
                 font-weight:700; display:flex; align-items:center; justify-content:center; font-size:13px; }
.gc-model { font-size:13px; overflow-wrap:anywhere; }
.gc-model-missing { color:var(--gc-err); }
.gc-model-warn { background:#fff4e5; color:#9a5b00; border-radius:8px; padding:6px 10px; font-size:12px; }
.gc-history-list { margin:4px 0 12px; }
.gc-h-item { padding:5px 0; border-bottom:1px solid #f0f2f7; font-size:13px; }
.gc-h-line { display:flex; justify-content:space-between; gap:8px; min-width:0; }
.gc-h-file { font-weight:600; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
.gc-h-time { color:var(--gc-muted); white-space:nowrap; font-size:12px; }
.gc-history .gc-count-row { grid-template-columns: minmax(110px, 184px) 1fr 32px; }
.gc-log-toggle { margin-top:4px; }
.gc-log-toggle label { font-size:14px; }
@media (max-width: 1100px) { .gc-side { flex:1 1 100%; } }
</style>
"""

# Files past the limit reach the kernel as their name and size only (no bytes), so the page
# can explain the limit instead of tornado closing the websocket on an over-size message.
# Files take their share of the limit in order while they fit (as in classify_uploads);
# a selection's reads all start in one task, so the running total covers one upload.
UPLOAD_GUARD_JS = """
(function () {
  document.title = "Galaxy10 classifier";
  if (window.__galaxyUploadGuard) { return; }
  window.__galaxyUploadGuard = true;
  var LIMIT = %d;
  var read = FileReader.prototype.readAsArrayBuffer;
  var used = 0;
  FileReader.prototype.readAsArrayBuffer = function (blob) {
    if (typeof File !== "undefined" && blob instanceof File) {
      if (used === 0) { setTimeout(function () { used = 0; }, 0); }
      if (used + blob.size > LIMIT) { return read.call(this, new Blob([])); }
      used += blob.size;
    }
    return read.call(this, blob);
  };
})();
""" % UPLOAD_LIMIT_BYTES


def show(**kwargs) -> Dashboard:
    """Display the dashboard (the notebook's only call) and return it for tinkering."""
    from IPython.display import HTML, Javascript, display

    display(HTML(PAGE_CSS))
    display(Javascript(UPLOAD_GUARD_JS))
    app = Dashboard(**kwargs)
    display(app.root)
    return app
