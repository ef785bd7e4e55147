"""The voila dashboard: upload cutouts, see the class, its probabilities and why.

``notebooks/dashboard.ipynb`` only calls :func:`show`. Answers come from the one classify
path (``galaxylib.inference.classify``, the LiteRT Predictor), so a file gets the same
class and probabilities here as from the API and predict.sh, and its logged row comes
from the one record builder. Grad-CAM (``gradcam.py``) is the only part that needs
TensorFlow, loaded in the background once per artifact.

Nothing a user does may put a Python traceback on the page: every widget callback runs
inside :func:`guarded`, which logs the traceback to the server log and shows a one-line
message instead.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from galaxylib.apps.dashboard.render import (
    card_header_html,
    error_html,
    esc,
    history_html,
    kernel_release_js,
    model_info_html,
    page_css,
    prediction_html,
    status_html,
    upload_guard_js,
)
from galaxylib.apps.dashboard.sources import Example, ModelChoice, discover_models, list_examples, png_bytes
from galaxylib.apps.dashboard.uploads import (
    ACCEPT,
    MAX_FILES_PER_UPLOAD,
    UPLOAD_LIMIT_LABEL,
    Outcome,
    Upload,
    classify_uploads,
    prediction_rows,
    uploads_from_widget,
)
from galaxylib.artifact import ArtifactError
from galaxylib.classes import CLASS_NAMES
from galaxylib.config import MODELS_DIR, database_url

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter is not for users

log = logging.getLogger("galaxylib.dashboard")

MAX_RESULT_CARDS = 24  # older cards drop off, so a long demo does not grow the page forever
HISTORY_ROWS = 8


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
                self.set_status(
                    f"Something went wrong while {action} ({short_reason(exc)}). The server log has the details.",
                    "error",
                )
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

    def __init__(
        self,
        models: list[ModelChoice] | None = None,
        examples: list[Example] | None = None,
        db_url: str | None = None,
        log_predictions: bool = False,
        warm_saliency: bool = True,
    ):
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
            '<div class="gc-title">Galaxy morphology classifier</div>'
            '<div class="gc-subtitle">Drop galaxy cutouts (JPEG or PNG) to see the predicted class, the '
            "probability of each of the model's classes and a Grad-CAM map of the pixels behind the "
            "answer.</div>"
        )
        self.model_picker = w.Dropdown(
            options=[(c.label, str(c.path)) for c in self.models], layout=w.Layout(width="auto")
        )
        self.model_picker.add_class("gc-model-picker")
        self.model_info = w.HTML()
        self.upload = w.FileUpload(
            accept=ACCEPT, multiple=True, description="Upload cutouts", icon="upload", button_style="primary"
        )
        self.upload.add_class("gc-upload")
        limit_hint = w.HTML(
            f'<div class="gc-hint">JPEG or PNG · several at once · up to {UPLOAD_LIMIT_LABEL} '
            f"per upload · at most {MAX_FILES_PER_UPLOAD} files</div>"
        )
        synthetic = bool(self.examples) and all(e.synthetic for e in self.examples)
        example_note = (
            "No real sample cutouts found: these are synthetic galaxies."
            if synthetic
            else "Real Galaxy10 DECaLS cutouts with their Galaxy Zoo labels."
        )
        self.example_picker = w.Dropdown(
            options=[(e.label, i) for i, e in enumerate(self.examples)],
            layout=w.Layout(width="auto", flex="1 1 260px", min_width="0"),
        )
        self.example_picker.add_class("gc-example-picker")
        self.example_button = w.Button(description="Classify example", icon="play")
        self.example_button.add_class("gc-example-button")
        self.log_toggle = w.Checkbox(value=log_predictions, description="Log predictions to the database", indent=False)
        self.log_toggle.add_class("gc-log-toggle")
        self.status = w.HTML()
        self.status.add_class("gc-status-box")
        self.status_message, self.status_kind = "", "info"
        self.results = w.VBox()
        self.results.add_class("gc-results")
        self.empty = w.HTML(
            '<div class="gc-empty gc-empty-results">Results appear here. Upload a cutout or '
            "classify an example to start.</div>"
        )
        self.clear_button = w.Button(description="Clear results", icon="trash")
        self.clear_button.add_class("gc-clear")
        self.history = w.HTML()
        self.history_button = w.Button(description="Refresh", icon="refresh")
        self.history_button.add_class("gc-refresh")

        upload_box = self._box([self.upload, limit_hint], "gc-row")
        example_box = self._box([self.example_picker, self.example_button], "gc-row")
        controls = self._box(
            [
                w.HTML('<div class="gc-section-title">1 · Your cutouts</div>'),
                upload_box,
                w.HTML(f'<div class="gc-section-title">or an example</div><div class="gc-hint">{example_note}</div>'),
                example_box,
                self.log_toggle,
            ],
            "gc-card gc-controls",
        )
        model_card = self._box(
            [w.HTML('<div class="gc-section-title">Model</div>'), self.model_picker, self.model_info],
            "gc-card gc-model-card",
        )
        if len(self.models) < 2:
            self.model_picker.layout.display = "none"  # the picker only appears when there is a choice
        results_head = self._box(
            [w.HTML('<div class="gc-section-title">2 · Results</div>'), self.clear_button], "gc-results-head"
        )
        main = self._box([controls, self.status, results_head, self.empty, self.results], "gc-main")
        history_head = self._box(
            [w.HTML('<div class="gc-section-title">History</div>'), self.history_button], "gc-results-head"
        )
        side = self._box([model_card, self._box([history_head, self.history], "gc-card gc-history-card")], "gc-side")
        self.root = self._box([self._box([self.header], "gc-header"), self._box([main, side], "gc-columns")], "gc-app")

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
                f"so that {MODELS_DIR.name}/ holds a run, or set MODEL_PATH to an artifact folder."
            )
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
        from galaxylib.inference.predictor import Predictor

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
            threading.Thread(target=self._gradcam_for, args=(loaded,), daemon=True, name="gradcam-warmup").start()

    def _gradcam_for(self, loaded: _Loaded):
        """Load the Keras model once per artifact (a few seconds: TensorFlow) under a lock."""
        with loaded.gradcam_lock:
            if loaded.gradcam is None and loaded.gradcam_problem is None:
                try:
                    from galaxylib.apps.dashboard.gradcam import load_gradcam

                    loaded.gradcam = load_gradcam(loaded.predictor.path)
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
            return self._box(
                [head, w.HTML(error_html(out.error or "not classified", out.upload.name, out.hint))],
                "gc-card gc-result gc-result-error",
            ), None
        original = w.Image(value=png_bytes(out.image), format="png")
        original.add_class("gc-img")
        slot = self._box([w.HTML('<div class="gc-img-placeholder">computing saliency…</div>')], "gc-slot")
        figure_in = self._box([original, w.HTML('<div class="gc-caption">input</div>')], "gc-figure")
        figure_sal = self._box(
            [slot, w.HTML('<div class="gc-caption gc-saliency-caption" data-state="pending">Grad-CAM saliency</div>')],
            "gc-figure",
        )
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
            from galaxylib.apps.dashboard.gradcam import saliency_for

            maps = saliency_for(gradcam, [o for o, _ in pending]) if gradcam is not None else None
            problem = self.current.gradcam_problem
        except Exception as exc:
            log.exception("Grad-CAM failed")
            maps, problem = None, short_reason(exc)
        for i, (_, figure) in enumerate(pending):
            slot, caption = figure.children
            if maps is None:
                slot.children = (w.HTML(error_html(f"Saliency unavailable: {problem}")),)
                caption.value = '<div class="gc-caption gc-saliency-caption" data-state="unavailable">no saliency</div>'
                continue
            img = w.Image(value=png_bytes(maps[i].image), format="png")
            img.add_class("gc-img")
            img.add_class("gc-saliency")
            slot.children = (img,)
            caption.value = (
                f'<div class="gc-caption gc-saliency-caption" data-state="ready">{esc(maps[i].caption)}</div>'
            )
        self.set_status(message, kind)

    # -- database
    def store(self):
        if self._store is None:
            from galaxylib.store.database import PredictionStore

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
            names = self.current.predictor.class_names if self.current.predictor is not None else CLASS_NAMES
            self.history.value = history_html(
                [r.as_dict() for r in records], total, store.class_counts(), store.url, names
            )
        except Exception as exc:
            log.exception("could not read the predictions table")
            self.history.value = error_html(f"Cannot read the predictions table ({short_reason(exc)}).")


def show(**kwargs) -> Dashboard:
    """Display the dashboard (the notebook's only call) and return it for tinkering."""
    from IPython.display import HTML, Javascript, display

    display(HTML(page_css()))
    display(Javascript(upload_guard_js()))
    display(Javascript(kernel_release_js()))
    app = Dashboard(**kwargs)
    display(app.root)
    return app
