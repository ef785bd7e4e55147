"""The dashboard's logic without a browser: model discovery, classification, limits, Grad-CAM.

The browser test (test_dashboard.py) shows the same behaviour through voila and Chromium;
these tests pin down the rules quickly and say why they are what they are.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from traitlets.utils.importstring import import_item

from galaxylib.apps.dashboard import app as dash_app
from galaxylib.apps.dashboard import render, sources
from galaxylib.apps.dashboard import uploads as dash_uploads
from galaxylib.apps.dashboard.server import DashboardKernelManager
from galaxylib.artifact import SIDECAR, list_runs
from galaxylib.classes import CLASS_NAMES
from galaxylib.config import PROJECT_ROOT

# ------------------------------------------------------------------ fixtures


def fake_run(models_dir: Path, name: str, mtime: float, **sidecar) -> Path:
    """A run folder that discovery can list (it reads only the sidecar)."""
    run = models_dir / name
    run.mkdir(parents=True)
    (run / SIDECAR).write_text(json.dumps({"run_name": name, "created_at": "2025-01-02T03:04:05+00:00", **sidecar}))
    os.utime(run / SIDECAR, (mtime, mtime))
    return run


@pytest.fixture(scope="module")
def predictor(tiny_artifact):
    from galaxylib.inference.predictor import Predictor

    return Predictor(tiny_artifact)


@pytest.fixture(scope="module")
def gradcam64():
    """Grad-CAM on an untrained 64 px EfficientNetB0: its last conv map is 2x2."""
    import keras

    from galaxylib.modeling.model import ModelParams, build_model
    from galaxylib.modeling.saliency import GradCam

    keras.utils.set_random_seed(1)
    model = build_model(ModelParams(image_size=64, weights="none", trainable_layers="all", freeze_batchnorm=False))
    return GradCam(model)


def upload(name: str, content: bytes, size: int | None = None) -> dash_uploads.Upload:
    return dash_uploads.Upload(name, content, len(content) if size is None else size)


# ------------------------------------------------------------------ which model


def test_the_newest_run_is_the_default_model(tmp_path):
    fake_run(tmp_path, "old", 1_000)
    newest = fake_run(tmp_path, "new", 3_000)
    fake_run(tmp_path, "middle", 2_000)
    (tmp_path / "half-saved.tmp").mkdir()  # an interrupted save_artifact
    (tmp_path / "half-saved.tmp" / SIDECAR).write_text("{}")
    (tmp_path / "not-a-run").mkdir()

    choices = sources.discover_models(tmp_path, model_path="")

    assert [c.path.name for c in choices] == ["new", "middle", "old"]
    assert choices[0].path == newest == list_runs(tmp_path)[0]  # the same rule as predict.sh


def test_model_path_comes_first_and_is_not_listed_twice(tmp_path):
    models = tmp_path / "models"
    fake_run(models, "a", 1_000)
    b = fake_run(models, "b", 2_000)
    elsewhere = fake_run(tmp_path / "elsewhere", "pinned", 500)

    assert [c.path for c in sources.discover_models(models, model_path=str(elsewhere))][:2] == [elsewhere, b]
    choices = sources.discover_models(models, model_path=str(models / "a"))
    assert [c.path.name for c in choices] == ["a", "b"] and choices[0].from_env
    assert "MODEL_PATH" in choices[0].label


def test_model_path_may_name_a_folder_of_runs(tmp_path):
    fake_run(tmp_path / "runs", "x", 1_000)
    fake_run(tmp_path / "runs", "y", 2_000)

    choices = sources.discover_models(tmp_path / "elsewhere", model_path=str(tmp_path / "runs"))

    assert [c.path.name for c in choices] == ["y", "x"]


def test_a_missing_model_path_is_offered_so_the_page_can_say_what_is_wrong(tmp_path):
    choices = sources.discover_models(tmp_path, model_path=str(tmp_path / "typo"))
    assert [c.path for c in choices] == [tmp_path / "typo"]


# ------------------------------------------------------------------ examples


def test_examples_are_one_real_cutout_per_class(samples_dir):
    examples = sources.list_examples(samples_dir)
    assert [e.true_class for e in examples] == list(CLASS_NAMES)
    assert not any(e.synthetic for e in examples)
    assert all(e.read_bytes()[:2] == b"\xff\xd8" for e in examples)  # the real JPEG files


def test_without_samples_the_examples_are_synthetic_and_say_so(tmp_path):
    examples = sources.list_examples(tmp_path)
    assert len(examples) == len(CLASS_NAMES) and all(e.synthetic for e in examples)
    assert all("Synthetic" in e.label and "not a real galaxy" in e.label for e in examples)
    img = Image.open(io.BytesIO(examples[5].read_bytes()))
    assert (img.format, img.size) == ("PNG", (256, 256))


# ------------------------------------------------------------------ classification


def test_the_dashboard_gives_the_predictors_answer(predictor, sample_files):
    """Same bytes, same Predictor and preprocessing: the same class and probabilities as the API."""
    files = sample_files[:4]
    outcomes = dash_uploads.classify_uploads(predictor, [upload(f.name, f.read_bytes()) for f in files])
    expected = predictor.predict_batch(files)

    for out, want in zip(outcomes, expected):
        assert out.error is None
        assert out.prediction == want
        assert out.image.shape == (256, 256, 3) and (out.result.width, out.result.height) == (256, 256)


def test_broken_files_get_messages_and_the_good_ones_still_get_answers(predictor, sample_files):
    good = sample_files[0].read_bytes()
    gif = io.BytesIO()
    Image.new("RGB", (64, 64)).save(gif, format="GIF")
    uploads = [
        upload("notes.jpg", b"dear diary, this is not a galaxy"),
        upload("empty.png", b""),
        upload("cut.jpg", good[: len(good) // 2]),
        upload("anim.gif", gif.getvalue()),
        upload(sample_files[0].name, good),
    ]

    outcomes = dash_uploads.classify_uploads(predictor, uploads)

    errors = {o.upload.name: o.error for o in outcomes if not o.ok}
    assert errors == {
        "notes.jpg": "notes.jpg: not a JPEG or PNG image",
        "empty.png": "empty.png: the file is empty",
        "cut.jpg": errors["cut.jpg"],  # Pillow's wording, after galaxylib's prefix
        "anim.gif": "anim.gif: GIF images are not accepted; send JPEG or PNG",
    }
    assert errors["cut.jpg"].startswith("cut.jpg: the image data is truncated or corrupt")
    assert all(o.hint for o in outcomes if not o.ok)
    assert outcomes[-1].ok


def test_the_upload_limit_counts_files_in_order_while_they_fit(predictor, sample_files):
    cutout = sample_files[0].read_bytes()
    limit = 3 * len(cutout)
    uploads = [
        upload("huge.png", b"", size=10 * limit),  # over the limit alone: the page sent no bytes
        upload("a.jpg", cutout),
        upload("b.jpg", cutout),
        upload("c.jpg", cutout + cutout),  # does not fit beside a and b
        upload("d.jpg", cutout),
    ]  # still fits

    outcomes = dash_uploads.classify_uploads(predictor, uploads, limit=limit)

    assert [o.ok for o in outcomes] == [False, True, True, False, True]
    assert "is over the upload limit of 20 MB" in outcomes[0].error
    assert "with the files before it" in outcomes[3].error


def test_one_upload_takes_a_bounded_number_of_files(predictor, sample_files):
    cutout = sample_files[0].read_bytes()
    outcomes = dash_uploads.classify_uploads(predictor, [upload(f"{i}.jpg", cutout) for i in range(4)], max_files=3)
    assert [o.ok for o in outcomes] == [True, True, True, False]
    assert "at most 3 files" in outcomes[3].error


def test_voila_config_makes_the_documented_limit_the_real_one():
    """tornado closes a websocket on a message over websocket_max_message_size (default 10 MiB),
    and one upload is one message: the setting must be the limit plus room for the JSON part."""
    config = json.loads((PROJECT_ROOT / "voila.json").read_text())
    assert (
        config["Voila"]["tornado_settings"]["websocket_max_message_size"] == dash_uploads.websocket_max_message_size()
    )
    assert dash_uploads.websocket_max_message_size() > dash_uploads.UPLOAD_LIMIT_BYTES > 10 * 2**20
    assert f"var LIMIT = {dash_uploads.UPLOAD_LIMIT_BYTES};" in render.upload_guard_js()
    assert config["Voila"]["port_retries"] == 0  # dashboard.sh prints the URL voila really serves
    assert config["VoilaConfiguration"]["show_tracebacks"] is False
    assert dash_uploads.UPLOAD_LIMIT_LABEL in (PROJECT_ROOT / "docs" / "dashboard.md").read_text()


def test_voila_config_frees_the_kernels_of_closed_pages_and_caps_visitors():
    """Each page load starts a kernel of about a gigabyte. voila.json must serve through the capped
    kernel manager, and jupyter_server's culler must free a kernel whose page went away without
    a word within two minutes (its timeout plus one interval), never one whose page is open."""
    config = json.loads((PROJECT_ROOT / "voila.json").read_text())
    assert import_item(config["VoilaConfiguration"]["multi_kernel_manager_class"]) is DashboardKernelManager
    assert config["DashboardKernelManager"]["max_kernels"] >= 1
    culler = config["MappingKernelManager"]
    assert culler["cull_idle_timeout"] > 0
    assert culler["cull_idle_timeout"] + culler["cull_interval"] <= 120
    assert culler["cull_connected"] is False  # an open page keeps its kernel, however quiet its visitor
    docs = (PROJECT_ROOT / "docs" / "dashboard.md").read_text()
    for section, settings in (("DashboardKernelManager", ["max_kernels"]), ("MappingKernelManager", culler)):
        for setting in settings:
            assert f"{section}.{setting}" in docs, setting  # spelled as voila.json and the command line spell it
    for override in ("--max-kernels", "DASHBOARD_MAX_KERNELS", "--MappingKernelManager.cull_idle_timeout="):
        assert override in docs, override


def test_a_taken_port_is_a_one_line_error_that_says_how_to_choose_another(tmp_path):
    """voila.json's port_retries is 0 (the URL the script prints must be the one served), so voila
    itself would log "trying another port" and then stop: the script says what is wrong instead."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(PROJECT_ROOT / "dashboard.sh"), "--port", str(port)],
            cwd=tmp_path,
            env={**os.environ, "PYTHON": sys.executable},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 2  # as for the script's other wrong arguments
    assert result.stderr.splitlines() == [
        f"error: port {port} is already in use on localhost; choose another with --port N"
    ]
    assert "trying another port" not in result.stdout + result.stderr
    assert result.stdout == ""  # no URL for a server that never starts


# ------------------------------------------------------------------ what the page shows


def test_the_page_shows_every_probability_in_one_format(predictor, sample_files):
    out = dash_uploads.classify_uploads(predictor, [upload("x.jpg", sample_files[0].read_bytes())])[0]
    page = render.prediction_html(out)
    for name, p in out.prediction.probabilities.items():
        assert f'data-class="{name}" data-probability="{p!r}"' in page
        assert render.format_probability(p) in page
    assert out.prediction.model_version in page


def test_user_text_is_escaped():
    name = '<img src=x onerror="alert(1)">.png'
    for html in (render.error_html(f"{name}: the file is empty", name), render.card_header_html(upload(name, b""))):
        assert "<img" not in html and "&lt;img" in html


def test_a_failing_callback_shows_a_message_not_a_traceback():
    class Page:
        status = None

        def set_status(self, message, kind):
            self.status = (message, kind)

        @dash_app.guarded("drawing the chart")
        def explode(self):
            raise KeyError("probabilities")

    page = Page()
    assert page.explode() is None
    message, kind = page.status
    assert kind == "error" and "drawing the chart" in message and "KeyError" in message
    assert "Traceback" not in message and "File " not in message


# ------------------------------------------------------------------ Grad-CAM


def test_gradcam_maps_are_one_per_image_and_scaled_to_0_1(gradcam64):
    rng = np.random.default_rng(0)
    batch = rng.uniform(0, 255, (3, 64, 64, 3)).astype(np.float32)

    maps = gradcam64.heatmaps(batch, [0, 4, 9])

    assert gradcam64.map_size == (2, 2)  # 64 px / 32
    assert maps.shape == (3, 2, 2) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert all(m.max() in (0.0, 1.0) for m in maps)  # each map is scaled on its own
    alone = gradcam64.heatmaps(batch[1:2], [4])
    np.testing.assert_allclose(alone[0], maps[1], atol=1e-5)  # batching does not mix images


def test_the_overlay_keeps_the_image_where_the_map_is_zero():
    from galaxylib.modeling.saliency import overlay

    image = np.full((256, 256, 3), 40, np.uint8)
    cam = np.zeros((2, 2), np.float32)
    assert np.array_equal(overlay(image, cam), image)
    hot = overlay(image, np.ones((2, 2), np.float32))
    assert hot.shape == image.shape and hot.dtype == np.uint8 and not np.array_equal(hot, image)


def test_gradcam_needs_a_convolutional_layer(gradcam64):
    from galaxylib.modeling.saliency import GradCam, SaliencyError

    with pytest.raises(SaliencyError, match="no layer named 'nope'"):
        GradCam(gradcam64.model, layer_name="nope")
    with pytest.raises(SaliencyError, match="not a convolutional feature map"):
        GradCam(gradcam64.model, layer_name="probabilities")


# ------------------------------------------------------------------ the widgets, headless


def test_the_widgets_classify_log_and_count(tiny_artifact, sample_files, sqlite_url, tmp_path):
    """The whole flow of the page without a browser, logging into a fresh SQLite file."""
    from galaxylib.store.database import PredictionStore

    app = dash_app.Dashboard(
        models=[sources.ModelChoice(tiny_artifact, "tiny")],
        examples=sources.list_examples(tmp_path),
        db_url=sqlite_url,
        log_predictions=True,
        warm_saliency=False,
    )
    cutout = sample_files[0]

    outcomes = app.classify([upload(cutout.name, cutout.read_bytes()), upload("bad.png", b"nope")])

    assert [o.ok for o in outcomes] == [True, False]
    assert len(app.results.children) == 2
    assert "Classified 1 of 2 files" in app.status.value and "Logged 1 prediction" in app.status.value
    rows, total = PredictionStore(sqlite_url).list()
    assert total == 1 and rows[0].filename == cutout.name
    assert rows[0].meta["source"] == "dashboard"
    assert rows[0].meta["probabilities"] == outcomes[0].prediction.probabilities
    assert 'data-total="1"' in app.history.value
    assert f'data-class="{outcomes[0].prediction.predicted_class}" data-count="1"' in app.history.value
    saliency = app.results.children[0].children[1].children[1]  # card -> body -> saliency figure
    assert 'data-state="ready"' in saliency.children[1].value


def test_without_a_model_the_page_says_how_to_get_one(tmp_path, sqlite_url):
    app = dash_app.Dashboard(
        models=[], examples=sources.list_examples(tmp_path), db_url=sqlite_url, warm_saliency=False
    )
    assert app.upload.disabled and app.example_button.disabled
    assert "No trained model found" in app.status.value and "MODEL_PATH" in app.status.value


def test_a_broken_artifact_is_a_message(tmp_path, sqlite_url):
    broken = fake_run(tmp_path / "models", "broken", 1_000)
    app = dash_app.Dashboard(
        models=sources.discover_models(tmp_path / "models", model_path=""),
        examples=sources.list_examples(tmp_path),
        db_url=sqlite_url,
        warm_saliency=False,
    )
    assert app.upload.disabled
    assert f"Cannot use the model at {broken}" in app.status.value


def test_the_picker_switches_models_and_a_broken_one_is_a_message(tiny_artifact, tmp_path, sqlite_url):
    broken = fake_run(tmp_path / "models", "broken", 1_000)
    app = dash_app.Dashboard(
        models=[sources.ModelChoice(tiny_artifact, "tiny"), sources.ModelChoice(broken, "broken")],
        examples=sources.list_examples(tmp_path),
        db_url=sqlite_url,
        warm_saliency=False,
    )
    assert app.model_picker.layout.display != "none"  # two models: the picker shows

    app.model_picker.value = str(broken)
    assert app.upload.disabled and "Cannot use the model" in app.status.value

    app.model_picker.value = str(tiny_artifact)
    assert not app.upload.disabled and app.current.predictor.path == tiny_artifact
    app._on_example(None)  # the first synthetic example
    head = app.results.children[0].children[0].value
    assert "synthetic-disturbed.png" in head and "synthetic example" in head


def test_a_flagged_image_gets_a_warning_on_its_card_and_keeps_its_class():
    from galaxylib.apps.dashboard.render import history_html, prediction_html
    from galaxylib.apps.dashboard.uploads import Outcome, Upload
    from galaxylib.inference.classify import Classified
    from galaxylib.inference.predictor import Prediction

    def card(in_distribution):
        p = Prediction(
            class_index=0,
            predicted_class="smooth",
            confidence=0.8,
            probabilities={"smooth": 0.8, "merger": 0.2},
            model_version="m",
            top_classes=[("smooth", 0.8)],
            ood_score=None if in_distribution is None else (9.0 if not in_distribution else 0.1),
            in_distribution=in_distribution,
        )
        return prediction_html(
            Outcome(upload=Upload("cat.jpg", b"", 0), result=Classified(name="cat.jpg", prediction=p))
        )

    flagged, passed, unchecked = card(False), card(True), card(None)
    assert "does not look like the galaxy cutouts the model was trained on" in flagged
    assert 'data-in-distribution="false"' in flagged and ">smooth<" in flagged  # the class is still shown
    assert "does not look like" not in passed and 'data-in-distribution="true"' in passed
    assert "does not look like" not in unchecked and 'data-in-distribution=""' in unchecked
    rows = [
        {
            "filename": "cat.jpg",
            "predicted_class": "smooth",
            "confidence": 0.8,
            "created_at": None,
            "metadata": {"source": "api"},
            "in_distribution": False,
        }
    ]
    assert "not like the training cutouts" in history_html(rows, 1, {"smooth": 1}, "sqlite", ["smooth", "merger"])


def test_a_balanced_call_that_is_not_the_most_probable_class_says_so_on_its_card():
    from galaxylib.apps.dashboard.render import prediction_html
    from galaxylib.apps.dashboard.uploads import Outcome, Upload
    from galaxylib.inference.classify import Classified
    from galaxylib.inference.predictor import Prediction

    def card(probabilities, predicted):
        p = Prediction(
            class_index=0,
            predicted_class=predicted,
            confidence=probabilities[predicted],
            probabilities=probabilities,
            model_version="m",
            top_classes=[],
        )
        return prediction_html(Outcome(upload=Upload("g.jpg", b"", 0), result=Classified(name="g.jpg", prediction=p)))

    page = card({"smooth": 0.7, "merger": 0.17, "spiral": 0.13}, "merger")
    assert "Most probable: <b>smooth</b> (70.00%)" in page and ">merger<" in page
    assert "Most probable" not in card({"smooth": 0.7, "merger": 0.3}, "smooth")
    assert "Most probable" not in card({"smooth": 0.4, "merger": 0.4, "spiral": 0.2}, "merger")  # a tie
