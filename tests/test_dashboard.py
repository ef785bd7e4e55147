"""The dashboard in a real browser: ./dashboard.sh serves it, headless Chromium uses it.

One voila page is opened the way a person would open it, with a tiny model this module trains
on synthetic galaxies (named by a relative MODEL_PATH, as a user types it) and a fresh SQLite
database: a real cutout gets exactly galaxylib's Predictor answer and a Grad-CAM overlay; broken
files get friendly messages; the documented upload limit is the real one; logged predictions
appear in the History card; the layout fits 1400x900 and a laptop screen. The tests share the
page but not their outcomes: each asserts only what it did itself, so any order passes.
Screenshots land in a temporary folder (their path is printed).

Needs Debian's Chromium at /usr/bin/chromium (``apt-get install -y chromium``) and fails,
never skips, without it: CI must run this test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from galaxylib.apps.dashboard.render import format_probability
from galaxylib.apps.dashboard.uploads import UPLOAD_LIMIT_BYTES
from galaxylib.classes import CLASS_NAMES
from galaxylib.config import PROJECT_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1400, "height": 900}
LAPTOP = {"width": 1280, "height": 720}

SERVER_START_S = 120  # voila imports jupyter_server and friends on two busy cores
PAGE_LOAD_MS = 180_000  # voila starts a kernel per page, and the kernel imports galaxylib
ANSWER_MS = 60_000
SALIENCY_MS = 180_000  # the kernel loads TensorFlow and model.keras for Grad-CAM


# ------------------------------------------------------------------ the model and the server


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory) -> Path:
    """A 64 px EfficientNetB0 trained for two epochs on synthetic galaxies (a 2x2 Grad-CAM map)."""
    import keras

    from galaxylib.data.synthetic import make_synthetic_arrays
    from galaxylib.modeling.export import save_artifact
    from galaxylib.modeling.model import ModelParams, build_model

    keras.utils.set_random_seed(0)
    images, labels = make_synthetic_arrays(2, seed=0, size=64)
    model = build_model(
        ModelParams(image_size=64, weights="none", trainable_layers="all", freeze_batchnorm=False, learning_rate=1e-3)
    )
    model.run_eagerly = True  # for four steps, tracing the train step costs more than it saves
    model.fit(images.astype(np.float32), labels, epochs=2, batch_size=10, verbose=0)
    run_dir = tmp_path_factory.mktemp("models") / "dashboard-tiny"
    save_artifact(
        model,
        run_dir,
        run_name="dashboard-tiny",
        dataset={"name": "synthetic", "n": len(labels)},
        split={},
        params={"image_size": 64},
        synthetic=True,
    )
    return run_dir


@pytest.fixture(scope="module")
def db_url(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'predictions.db'}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"./dashboard.sh exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    pytest.fail(f"the dashboard did not listen on port {port} within {seconds:.0f}s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def running_dashboard(
    log: Path, cwd: Path, env: dict[str, str], *options: str
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``./dashboard.sh --port N [options]`` on a free port, run from ``cwd`` with ``env``: yields
    the URL it printed and the process (voila itself: the script execs it), stopped afterwards."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(PROJECT_ROOT / "dashboard.sh"), "--port", str(port), *options],
            cwd=cwd,
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port(port, proc, log, SERVER_START_S)
        url = f"http://localhost:{port}/"
        assert log.read_text().splitlines()[0] == f"Galaxy10 dashboard: {url}"  # the script prints the URL
        yield url, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # voila shuts its kernels down on SIGTERM
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def dashboard_url(trained_model, db_url, tmp_path_factory):
    """``MODEL_PATH=<run> ./dashboard.sh --port N`` as a user runs it from the folder that holds the
    run (a relative MODEL_PATH, though the script changes directory), with DATABASE_URL set."""
    env = {**os.environ, "PYTHON": sys.executable, "MODEL_PATH": trained_model.name, "DATABASE_URL": db_url}
    env.pop("GALAXY_USER_CWD", None)
    log = tmp_path_factory.mktemp("voila") / "dashboard.log"
    with running_dashboard(log, trained_model.parent, env) as (url, _):
        yield url


# ------------------------------------------------------------------ the browser


@pytest.fixture(scope="module")
def chromium():
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the dashboard's browser test needs Debian's Chromium "
            "(apt-get update && apt-get install -y chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(chromium, dashboard_url):
    """One page for the whole module: a person using the dashboard for a while."""
    page = chromium.new_page(viewport=DESKTOP)
    page.set_default_timeout(ANSWER_MS)
    page.goto(dashboard_url, wait_until="domcontentloaded", timeout=PAGE_LOAD_MS)
    page.locator(".gc-upload").wait_for(timeout=PAGE_LOAD_MS)
    yield page
    page.close()


def upload(page, files: list) -> None:
    """Click the upload button and pick files: paths, or Playwright payload dicts."""
    with page.expect_file_chooser() as chooser:
        page.locator(".gc-upload").click()
    chooser.value.set_files(files)


def card_for(page, filename: str):
    """The newest result card for ``filename``."""
    return page.locator(".gc-result").filter(has=page.locator(f'[data-filename="{filename}"]')).first


def assert_no_traceback(page) -> None:
    text = page.locator("body").inner_text()
    for sign in ("Traceback", "most recent call last", 'File "/'):
        assert sign not in text, f"the page shows Python internals ({sign!r})"
    assert page.locator('[data-mime-type="application/vnd.jupyter.stderr"]').count() == 0
    assert page.locator('[data-mime-type="application/vnd.jupyter.error"]').count() == 0


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("screenshots")
    print(f"dashboard screenshots: {folder}")
    return folder


def screenshot(page, folder: Path, name: str) -> Path:
    path = folder / name
    page.screenshot(path=str(path))
    return path


def scroll_to_top(page) -> None:
    page.locator(".gc-header").scroll_into_view_if_needed()


# ------------------------------------------------------------------ the tests


def test_a_real_cutout_gets_the_predictors_answer_and_a_saliency_map(page, trained_model, sample_files, screenshots):
    from galaxylib.inference.predictor import Predictor

    cutout = sample_files[0]
    expected = Predictor(trained_model).predict(cutout)  # what the API and predict.sh answer

    upload(page, [str(cutout)])

    answer = page.locator(f'.gc-prediction[data-filename="{cutout.name}"]').first
    answer.wait_for(timeout=ANSWER_MS)
    assert answer.get_attribute("data-class") == expected.predicted_class
    assert answer.locator(".gc-class").inner_text() == expected.predicted_class
    assert format_probability(expected.confidence) in answer.locator(".gc-confidence").inner_text()
    rows = answer.locator(".gc-prob-row")
    assert rows.count() == len(CLASS_NAMES)
    shown = {
        row.get_attribute("data-class"): (
            float(row.get_attribute("data-probability")),
            row.locator(".gc-prob-pct").inner_text(),
        )
        for row in rows.all()
    }
    for name, p in expected.probabilities.items():
        assert shown[name][0] == pytest.approx(p, abs=1e-6), name
        assert shown[name][1] == format_probability(p), name
    assert expected.model_version in answer.inner_text()

    card = card_for(page, cutout.name)
    overlay = card.locator("img.gc-saliency")
    overlay.wait_for(state="visible", timeout=SALIENCY_MS)
    assert overlay.evaluate("img => img.complete && img.naturalWidth") == 256
    assert f"Grad-CAM for {expected.predicted_class}" in card.locator(".gc-saliency-caption").inner_text()
    assert "Classified 1 of 1 file" in page.locator(".gc-status").inner_text()
    assert_no_traceback(page)
    scroll_to_top(page)
    screenshot(page, screenshots, "dashboard-result-1400x900.png")
    card.screenshot(path=str(screenshots / "dashboard-result-card.png"))


def test_broken_files_get_a_friendly_message_and_no_traceback(page, sample_files, screenshots):
    real = sample_files[1].read_bytes()
    upload(
        page,
        [
            {"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"observing log, not a galaxy\n"},
            {"name": "empty.jpg", "mimeType": "image/jpeg", "buffer": b""},
            {"name": "half.jpg", "mimeType": "image/jpeg", "buffer": real[: len(real) // 2]},
        ],
    )

    expected = {
        "notes.jpg": "notes.jpg: not a JPEG or PNG image",
        "empty.jpg": "empty.jpg: the file is empty",
        "half.jpg": "half.jpg: the image data is truncated or corrupt",
    }
    for name, message in expected.items():
        error = page.locator(f'.gc-error[data-filename="{name}"]').first
        error.wait_for(timeout=ANSWER_MS)
        assert message in error.inner_text()
        assert error.locator(".gc-error-hint").inner_text()  # and what to do about it
    assert "Classified 0 of 3 files" in page.locator(".gc-status").inner_text()
    assert_no_traceback(page)
    scroll_to_top(page)
    screenshot(page, screenshots, "dashboard-errors-1400x900.png")


def test_the_documented_upload_limit_is_the_real_one(page, tmp_path):
    # Just under the limit: tornado's default 10 MiB websocket limit would drop this upload.
    side = int(((UPLOAD_LIMIT_BYTES - 400_000) / 3) ** 0.5)
    near = tmp_path / "near-limit.png"
    noise = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(noise).save(near, compress_level=0)
    assert 10 * 2**20 < near.stat().st_size < UPLOAD_LIMIT_BYTES

    upload(page, [str(near)])
    page.locator('.gc-prediction[data-filename="near-limit.png"]').first.wait_for(timeout=ANSWER_MS)

    # Twice the limit: over the websocket's maximum too, so only the page's guard saves the connection.
    over = tmp_path / "mosaic.png"
    over.write_bytes(os.urandom(2 * UPLOAD_LIMIT_BYTES))
    upload(page, [str(over)])
    error = page.locator('.gc-error[data-filename="mosaic.png"]').first
    error.wait_for(timeout=ANSWER_MS)
    assert "mosaic.png: 40.0 MB is over the upload limit of 20 MB" in error.inner_text()

    # ... and the page still answers afterwards.
    page.locator(".gc-example-button").click()
    page.locator(".gc-status", has_text="Classified 1 of 1 file").wait_for(timeout=ANSWER_MS)
    assert_no_traceback(page)


def test_logged_predictions_appear_in_the_history(page, db_url, samples_dir, screenshots):
    from galaxylib.apps.dashboard.sources import list_examples
    from galaxylib.store.database import PredictionStore

    store = PredictionStore(db_url)
    before, counts_before = store.count(), store.class_counts()
    example = list_examples(samples_dir)[2].filename  # the picker lists the same examples
    toggle = page.locator(".gc-log-toggle input[type=checkbox]")
    toggle.check()
    try:
        page.locator(".gc-example-picker select").select_option(index=2)
        page.locator(".gc-example-button").click()
        page.locator(".gc-status", has_text="Logged 1 prediction").wait_for(timeout=ANSWER_MS)
    finally:
        toggle.uncheck()  # the other tests' uploads stay out of the database
    shown_class = page.locator(f'.gc-prediction[data-filename="{example}"]').first.get_attribute("data-class")
    rows, total = store.list(limit=1)
    assert total == before + 1  # exactly this example, nothing classified while the toggle was off
    assert (rows[0].filename, rows[0].predicted_class) == (example, shown_class)
    assert rows[0].meta["source"] == "dashboard" and rows[0].meta["example"] is True
    history = page.locator(".gc-history")
    assert history.get_attribute("data-total") == str(before + 1)
    assert example in history.locator(".gc-history-list").inner_text()
    count = page.locator(f'.gc-count-row[data-class="{shown_class}"]').get_attribute("data-count")
    assert count == str(counts_before.get(shown_class, 0) + 1)
    card_for(page, example).locator("img.gc-saliency").wait_for(timeout=SALIENCY_MS)
    scroll_to_top(page)
    screenshot(page, screenshots, "dashboard-history-1400x900.png")


@pytest.mark.parametrize("viewport", [DESKTOP, LAPTOP], ids=["1400x900", "laptop-1280x720"])
def test_the_layout_fits_the_screen(page, viewport, screenshots):
    page.set_viewport_size(viewport)
    page.locator(".gc-status-busy").wait_for(state="detached", timeout=SALIENCY_MS)
    scroll_to_top(page)
    overflow = page.evaluate("""() => [...document.querySelectorAll('.gc-card, .gc-header')]
        .filter(el => el.getBoundingClientRect().right > window.innerWidth + 1).length""")
    assert overflow == 0, "a card is wider than the window"
    main, side = page.locator(".gc-main").bounding_box(), page.locator(".gc-side").bounding_box()
    assert side["x"] >= main["x"] + main["width"], "the model and history cards sit beside the results"
    name = f"dashboard-{viewport['width']}x{viewport['height']}.png"
    screenshot(page, screenshots, name)
    page.set_viewport_size(DESKTOP)  # the next test finds the page as it was
