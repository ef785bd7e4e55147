"""The page's HTML pieces, its CSS, its upload guard and its kernel release (static/): pure
functions of their inputs."""

from __future__ import annotations

import datetime as dt
import functools
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from galaxylib.apps.dashboard.uploads import UPLOAD_LIMIT_BYTES, Outcome, Upload, format_bytes
from galaxylib.artifact import Artifact
from galaxylib.classes import CLASS_NAMES

STATIC = Path(__file__).resolve().parent / "static"


def page_css() -> str:
    return "<style>\n" + (STATIC / "dashboard.css").read_text() + "</style>\n"


def upload_guard_js() -> str:
    """Files past the limit reach the kernel as their name and size only (no bytes), so the page
    can explain the limit instead of tornado closing the websocket on an over-size message.
    Files take their share of the limit in order while they fit (as in classify_uploads)."""
    return (STATIC / "upload_guard.js").read_text().replace("__UPLOAD_LIMIT_BYTES__", str(UPLOAD_LIMIT_BYTES))


def kernel_release_js() -> str:
    """Lets voila's page-close request shut the page's kernel down: it needs an ``_xsrf`` cookie
    that voila 0.5 never sets (voila#1458), so without this every closed page kept its kernel."""
    return (STATIC / "kernel_release.js").read_text()


def format_probability(p: float) -> str:
    """The one format for probabilities on the page (the browser test compares it)."""
    return f"{100.0 * float(p):.2f}%"


esc = functools.partial(html.escape, quote=True)


def prediction_html(out: Outcome) -> str:
    """Class, confidence, the class bar chart and the model version, with data-* for tests; a
    warning first when the out-of-distribution check flags the image."""
    p = out.prediction
    rows = []
    for name, prob in sorted(p.probabilities.items(), key=lambda kv: -kv[1]):
        top = " gc-top" if name == p.predicted_class else ""
        rows.append(
            f'<div class="gc-prob-row{top}" data-class="{esc(name)}" data-probability="{prob!r}">'
            f'<span class="gc-prob-name">{esc(name)}</span>'
            f'<span class="gc-prob-track"><span class="gc-prob-bar" style="width:{100.0 * prob:.2f}%"></span></span>'
            f'<span class="gc-prob-pct">{format_probability(prob)}</span></div>'
        )
    truth = ""
    example = out.upload.example
    if example is not None and example.true_class in p.probabilities:  # a label in the model's own classes
        agree = "gc-agree" if example.true_class == p.predicted_class else "gc-disagree"
        truth = (
            f'<div class="gc-truth {agree}">Galaxy Zoo label: <b>{esc(example.true_class)}</b></div>'
            if not example.synthetic
            else f'<div class="gc-truth {agree}">Drawn as: <b>{esc(example.true_class)}</b></div>'
        )
    flag = "" if p.in_distribution is None else str(p.in_distribution).lower()
    ood = (
        ""
        if p.in_distribution is not False
        else (
            '<div class="gc-ood-warn" role="alert"><b>This does not look like the galaxy cutouts the model was '
            "trained on.</b> The class below is the model's best guess; treat it with care.</div>"
        )
    )
    likeliest = max(p.probabilities, key=p.probabilities.get) if p.probabilities else p.predicted_class
    balanced = (
        ""
        if p.probabilities.get(likeliest, 0.0) <= p.confidence
        # a calibration with a class bias (docs/trust.md)
        else (
            f'<div class="gc-balanced-note">Most probable: <b>{esc(likeliest)}</b> '
            f"({format_probability(p.probabilities[likeliest])}). The model names {esc(p.predicted_class)} because it was "
            f"trained to find every class as often as the others; the confidence says how often such a call is right.</div>"
        )
    )
    return (
        f'<div class="gc-prediction" data-filename="{esc(out.upload.name)}" '
        f'data-class="{esc(p.predicted_class)}" data-confidence="{p.confidence!r}" '
        f'data-in-distribution="{flag}">'
        f"{ood}"
        f'<div class="gc-kicker">Predicted class</div>'
        f'<div class="gc-class">{esc(p.predicted_class)}</div>'
        f'<div class="gc-confidence">confidence <b>{format_probability(p.confidence)}</b></div>'
        f"{balanced}{truth}"
        f'<div class="gc-probs" role="table" aria-label="class probabilities">{"".join(rows)}</div>'
        f'<div class="gc-version">model <code>{esc(p.model_version)}</code></div></div>'
    )


def card_header_html(upload: Upload) -> str:
    tags = []
    if upload.example is not None:
        tags.append(
            '<span class="gc-tag gc-tag-synthetic">synthetic example</span>'
            if upload.example.synthetic
            else '<span class="gc-tag">example cutout</span>'
        )
    return (
        f'<div class="gc-card-head"><span class="gc-filename" title="{esc(upload.name)}">'
        f"{esc(upload.name)}</span>{''.join(tags)}"
        f'<span class="gc-size">{format_bytes(upload.size)}</span></div>'
    )


def error_html(message: str, filename: str | None = None, hint: str | None = None) -> str:
    name = f' data-filename="{esc(filename)}"' if filename is not None else ""
    more = f'<div class="gc-error-hint">{esc(hint)}</div>' if hint else ""
    return (
        f'<div class="gc-error"{name} role="alert"><span class="gc-error-icon">!</span>'
        f'<div><div class="gc-error-text">{esc(message)}</div>{more}</div></div>'
    )


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
    warn = (
        (
            '<div class="gc-model-warn">Trained on synthetic galaxies: a plumbing demo, '
            "not a scientific classifier.</div>"
        )
        if meta.get("synthetic")
        else ""
    )
    return (
        f'<div class="gc-model">version <code>{esc(artifact.model_version)}</code></div>'
        f'<div class="gc-model gc-muted">{details}</div>{warn}'
    )


def _when(iso: str | None, today: dt.date | None = None) -> tuple[str, str]:
    """(short, full) UTC times: the clock for today's rows, the date for older ones."""
    if not iso:
        return "", ""
    try:
        t = dt.datetime.fromisoformat(iso).astimezone(dt.UTC)
    except ValueError:
        return iso, iso
    today = today or dt.datetime.now(dt.UTC).date()
    short = t.strftime("%H:%M UTC") if t.date() == today else t.strftime("%Y-%m-%d")
    return short, t.strftime("%Y-%m-%d %H:%M:%S UTC")


def history_html(
    rows: Sequence[dict[str, Any]],
    total: int,
    counts: dict[str, int],
    where: str,
    class_names: Sequence[str] = CLASS_NAMES,
) -> str:
    """Latest predictions and a per-class count chart (the current model's classes), from the predictions table."""
    if rows:
        items = []
        for r in rows:
            short, full = _when(r.get("created_at"))
            source = (r.get("metadata") or {}).get("source") or ""
            flagged = (
                ' · <span class="gc-h-ood" title="flagged by the out-of-distribution check">not like '
                "the training cutouts</span>"
                if r.get("in_distribution") is False
                else ""
            )
            items.append(
                f'<div class="gc-h-item"><div class="gc-h-line"><span class="gc-h-file" title="{esc(r["filename"])}">'
                f'{esc(r["filename"])}</span><span class="gc-h-time" title="{esc(full)}">{esc(short)}</span></div>'
                f'<div class="gc-h-line gc-muted"><span>{esc(r["predicted_class"])} · '
                f"{format_probability(r['confidence'])}{flagged}</span><span>{esc(str(source))}</span></div></div>"
            )
        listing = f'<div class="gc-history-list">{"".join(items)}</div>'
    else:
        listing = '<div class="gc-empty">No predictions logged yet. Tick the logging box and classify a cutout.</div>'
    top = max(counts.values(), default=0) or 1
    bars = "".join(
        f'<div class="gc-count-row" data-class="{esc(name)}" data-count="{counts.get(name, 0)}">'
        f'<span class="gc-prob-name">{esc(name)}</span>'
        f'<span class="gc-prob-track"><span class="gc-count-bar" style="width:{100.0 * counts.get(name, 0) / top:.1f}%">'
        f'</span></span><span class="gc-prob-pct">{counts.get(name, 0)}</span></div>'
        for name in class_names
    )
    return (
        f'<div class="gc-history" data-total="{total}">'
        f'<div class="gc-section-title">Latest predictions <span class="gc-muted">({total} logged)</span></div>'
        f'{listing}<div class="gc-section-title">Predictions per class</div>'
        f'<div class="gc-counts">{bars}</div><div class="gc-db">database: <code>{esc(where)}</code></div></div>'
    )
