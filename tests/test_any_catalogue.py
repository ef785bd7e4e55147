"""Any labelled catalogue: the class table comes from the data, travels in the artifact and
names the classes at every entry point; pretrained starts and the head/finetune modes train."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from galaxylib.config import PROJECT_ROOT
from galaxylib.data.labels import LabelsError, read_labelled_folder

GZ1_NAMES = ("edge_on", "merger", "smooth", "spiral")


def labelled_folder(root, sample_files, rows, classes_txt=None, column="coarse"):
    """A gz1_coarse-like folder: images/ with real cutouts, labels.csv naming them bare."""
    (root / "images").mkdir(parents=True)
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "gz1_class", column])
        for i, label in enumerate(rows):
            src = sample_files[i % len(sample_files)]
            shutil.copy(src, root / "images" / f"g{i}.jpg")
            writer.writerow([f"g{i}.jpg", 0, label])
    if classes_txt:
        (root / "classes.txt").write_text("\n".join(classes_txt) + "\n")
    return root


def test_a_column_of_names_builds_a_sorted_class_table_and_finds_bare_names_in_images(tmp_path, sample_files):
    folder = labelled_folder(tmp_path / "gz", sample_files, ["smooth", "spiral", "merger", "edge_on", "smooth"])

    listing = read_labelled_folder(folder, "coarse")

    assert listing.class_names == GZ1_NAMES
    assert [listing.class_names[i] for i in listing.labels] == ["smooth", "spiral", "merger", "edge_on", "smooth"]
    assert all(p.parent.name == "images" and p.is_file() for p in listing.paths)


def test_classes_txt_sets_the_order_and_unknown_names_are_refused(tmp_path, sample_files):
    order = ("spiral", "smooth", "edge_on", "merger")
    folder = labelled_folder(tmp_path / "gz", sample_files, ["smooth", "spiral"], classes_txt=order)
    assert read_labelled_folder(folder, "coarse").class_names == order

    (folder / "classes.txt").write_text("smooth\nspiral\n")
    with open(folder / "labels.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["g0.jpg", 0, "lenticular"])
    with pytest.raises(LabelsError, match="'lenticular' is not one of the classes"):
        read_labelled_folder(folder, "coarse")


def test_a_missing_label_column_says_how_to_choose_one(tmp_path, sample_files):
    folder = labelled_folder(tmp_path / "gz", sample_files, ["smooth"])
    with pytest.raises(LabelsError, match="-p data.label_column"):
        read_labelled_folder(folder)  # the default column is "label"


def test_a_folder_becomes_an_h5_that_carries_its_class_table(tmp_path, sample_files):
    from galaxylib.data.resolve import resolve_dataset

    folder = labelled_folder(tmp_path / "gz", sample_files, ["smooth", "spiral", "merger", "edge_on"] * 2)

    data = resolve_dataset(str(folder), workdir=tmp_path / "data", label_column="coarse", show_progress=False)

    assert data.class_names == GZ1_NAMES and data.n_images == 8
    assert [GZ1_NAMES[i] for i in data.labels()[:4]] == ["smooth", "spiral", "merger", "edge_on"]


def test_a_folder_of_one_class_is_refused_before_training(tmp_path, sample_files):
    from galaxylib.data.galaxy10 import DatasetError
    from galaxylib.data.resolve import resolve_dataset

    folder = labelled_folder(
        tmp_path / "gz", sample_files, ["smooth"] * 6, classes_txt=("smooth", "spiral")
    )  # two classes named, one used
    with pytest.raises(DatasetError, match="every image is labelled 'smooth'.*at least two classes"):
        resolve_dataset(str(folder), workdir=tmp_path / "data", label_column="coarse", show_progress=False)
    assert not list((tmp_path / "data").rglob("*.h5"))


def test_a_missing_image_names_both_places_it_was_looked_for(tmp_path, sample_files):
    folder = labelled_folder(tmp_path / "gz", sample_files, ["smooth", "spiral"])
    (folder / "images" / "g1.jpg").unlink()
    with pytest.raises(LabelsError, match=r"g1.jpg is not in .*gz \(nor in .*gz/images\)"):
        read_labelled_folder(folder, "coarse")


def test_labels_csv_saved_by_excel_with_a_byte_order_mark_reads_as_any_other(tmp_path, sample_files):
    """Excel's "CSV UTF-8" starts the file with a byte-order mark (and ends lines with CRLF): it
    was refused with "needs the columns filename and 'label'; it has ['\\ufefffilename', ...]"."""
    plain = labelled_folder(tmp_path / "plain", sample_files, ["smooth", "spiral", "merger"], column="label")
    excel = labelled_folder(tmp_path / "excel", sample_files, ["smooth", "spiral", "merger"], column="label")
    text = (plain / "labels.csv").read_text().replace("\r\n", "\n").replace("\n", "\r\n")
    (excel / "labels.csv").write_bytes(text.encode("utf-8-sig"))
    for folder in (plain, excel):  # classes.txt with a mark too: its first name is 'spiral', not '\\ufeffspiral'
        (folder / "classes.txt").write_bytes("spiral\r\nsmooth\r\nmerger\r\n".encode("utf-8-sig"))

    read = read_labelled_folder(excel)

    assert read.class_names == ("spiral", "smooth", "merger")
    assert [read.class_names[i] for i in read.labels] == ["smooth", "spiral", "merger"]
    assert (read.filenames, read.labels) == (read_labelled_folder(plain).filenames, read_labelled_folder(plain).labels)


def test_a_labels_csv_that_is_not_utf8_is_a_labels_error_that_says_so(tmp_path, sample_files):
    folder = labelled_folder(tmp_path / "gz", sample_files, ["smooth", "spiral"], column="label")
    (folder / "labels.csv").write_bytes("filename,label\ng0.jpg,sph\xe9rique\n".encode("latin-1"))
    with pytest.raises(LabelsError, match="labels.csv: 'utf-8' codec can't decode .*save it as CSV in UTF-8"):
        read_labelled_folder(folder)


def test_a_labelled_catalogue_csv_reads_its_paths_labels_and_ids_as_written(tmp_path, sample_files):
    """The same rules as predict.sh --catalog: a byte-order mark is skipped, a quoted label may hold
    a comma, and id_str stays text (0012 keeps its zeros)."""
    from galaxylib.data.labelled_images import read_labelled_catalogue

    catalogue = tmp_path / "labels.csv"
    rows = [["id_str", "file_loc", "label"]] + [
        [f"{i:04d}", str(sample_files[i]), "disk, barred" if i % 2 else "round"] for i in range(6)
    ]
    with open(catalogue, "w", newline="", encoding="utf-8-sig") as fh:
        csv.writer(fh, lineterminator="\r\n").writerows(rows)

    listing = read_labelled_catalogue(catalogue)

    assert listing.class_names == ("disk, barred", "round")
    assert listing.filenames == ("0000", "0001", "0002", "0003", "0004", "0005")
    assert listing.labels == (1, 0, 1, 0, 1, 0) and listing.paths == tuple(sample_files[:6])


def test_a_class_too_small_for_train_validation_and_test_is_refused_before_training(tmp_path, sample_files):
    """One merger among a dozen cutouts trained without a word: it could be in at most one of the
    three parts. Refused, with its name and count, when the split is made (01_prepare_data)."""
    from galaxylib.data.resolve import resolve_dataset
    from galaxylib.data.split import SplitError, make_split

    folder = labelled_folder(
        tmp_path / "gz", sample_files, ["smooth"] * 6 + ["spiral"] * 6 + ["merger"], column="label"
    )
    data = resolve_dataset(str(folder), workdir=tmp_path / "data", image_size=32, show_progress=False)

    with pytest.raises(SplitError, match=r"class 0 has 1 image\. Each class needs at least 3"):
        make_split(data.labels(), data.fingerprint())  # what 01_prepare_data calls (steps.prepare_data)
    with pytest.raises(SplitError, match=r"class 'merger' has 1 image\. Each class needs at least 3"):
        make_split(data.labels(), data.fingerprint(), class_names=data.class_names)
    with pytest.raises(SplitError, match=r"class 0 has 1 image, class 2 has 2 images"):
        make_split(np.array([0, 1, 1, 1, 2, 2]), "0" * 64)


def test_every_class_is_in_train_validation_and_test_even_when_rounding_leaves_it_out():
    """Three images of a class among forty of two others: stratified rounding put two in train and
    left the third to validation or test (seed 0: no test image of it), so the class was never
    tested, or never seen when the model was selected."""
    from galaxylib.data.split import make_split

    labels = np.array([0] * 20 + [1] * 20 + [2] * 3)
    for seed in range(20):
        split = make_split(labels, "0" * 64, seed=seed)
        for part in (split.train, split.val, split.test):
            assert set(labels[part].tolist()) == {0, 1, 2}, seed
        assert sorted(np.concatenate([split.train, split.val, split.test]).tolist()) == list(range(43))
    # Ten classes of three: fewer validation and test images than classes, which scikit-learn's
    # stratified split refused with a ValueError; each part now holds one of each.
    labels = np.repeat(np.arange(10), 3)
    split = make_split(labels, "0" * 64)
    assert [sorted(labels[part].tolist()) for part in (split.train, split.val, split.test)] == [list(range(10))] * 3


@pytest.fixture(scope="module")
def four_class_artifact(tmp_path_factory):
    """An untrained 32 px model with GZ1's four classes; a large random last layer makes its
    answer move with the pixels (an untrained softmax is otherwise flat)."""
    import keras

    from galaxylib.modeling.export import save_artifact
    from galaxylib.modeling.model import ModelParams, build_model

    keras.utils.set_random_seed(3)
    model = build_model(
        ModelParams(image_size=32, weights="none", trainable_layers="all", freeze_batchnorm=False), n_classes=4
    )
    layer = model.get_layer("probabilities")
    kernel, bias = layer.get_weights()
    layer.set_weights([np.random.default_rng(0).normal(0, 3e5, kernel.shape).astype("float32"), bias])
    path = tmp_path_factory.mktemp("gz1model") / "gz1"
    save_artifact(
        model,
        path,
        run_name="gz1",
        class_names=GZ1_NAMES,
        dataset={"sha256": "0" * 64},
        split={},
        params={},
        synthetic=False,
    )
    return path


def test_a_four_class_model_names_its_own_classes_at_every_entry_point(
    four_class_artifact, sample_files, make_app, sqlite_url, tmp_path
):
    from galaxylib.apps.dashboard.app import Dashboard
    from galaxylib.apps.dashboard.sources import ModelChoice
    from galaxylib.apps.dashboard.uploads import Upload
    from galaxylib.inference.predictor import Predictor

    files = sample_files[:4]
    predictor = Predictor(four_class_artifact)
    assert predictor.class_names == GZ1_NAMES
    expected = [predictor.predict(f) for f in files]
    assert set(expected[0].probabilities) == set(GZ1_NAMES)

    out = tmp_path / "out.csv"
    env = {**os.environ, "PYTHON": sys.executable, "DATABASE_URL": sqlite_url}
    run = subprocess.run(
        [str(PROJECT_ROOT / "predict.sh"), "--model", str(four_class_artifact), *map(str, files), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    lines = list(csv.DictReader(open(out, newline="")))
    assert [line["predicted_class"] for line in lines] == [p.predicted_class for p in expected]
    assert {line["top2"] for line in lines} <= set(GZ1_NAMES)

    client = make_app(sqlite_url, model_path=str(four_class_artifact)).test_client()
    response = client.post(
        "/predict",
        data={"file": [(io.BytesIO(f.read_bytes()), f.name) for f in files]},
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.get_json()
    api = response.get_json()["predictions"]
    assert [a["predicted_class"] for a in api] == [p.predicted_class for p in expected]
    assert all(list(a["probabilities"]) == list(GZ1_NAMES) for a in api)
    name = expected[0].predicted_class
    listed = client.get(f"/predictions?predicted_class={name}").get_json()
    assert listed["total"] >= 1 and all(r["predicted_class"] == name for r in listed["predictions"])
    refused = client.get("/predictions?predicted_class=Round Smooth")
    assert refused.status_code == 400 and "edge_on" in refused.get_json()["error"]["message"]
    spec = client.get("/openapi.json").get_json()
    assert spec["components"]["schemas"]["Prediction"]["properties"]["predicted_class"]["enum"] == list(GZ1_NAMES)

    page = Dashboard(
        models=[ModelChoice(four_class_artifact, "gz1")],
        examples=[],
        db_url=sqlite_url,
        log_predictions=True,
        warm_saliency=False,
    )
    outcomes = page.classify([Upload(f.name, f.read_bytes(), f.stat().st_size) for f in files])
    assert [o.prediction.predicted_class for o in outcomes] == [p.predicted_class for p in expected]
    assert [
        row.split('data-class="')[1].split('"')[0] for row in page.history.value.split('class="gc-count-row" ')[1:]
    ] == list(GZ1_NAMES)  # the history's per-class chart uses the model's classes


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from galaxylib.pipeline import steps
    from galaxylib.pipeline.run_config import load_config

    root = tmp_path_factory.mktemp("anycat")
    config = load_config(PROJECT_ROOT / "configs" / "tiny.yaml", {"model.average_orientations": False})
    data, split = steps.prepare_data(config, root / "data", root / "data" / "cache", show_progress=False)
    return root, config, data, split


@pytest.mark.slow
def test_head_mode_on_a_lite0_start_caches_features_and_saves_a_servable_artifact(tiny_data, monkeypatch):
    from galaxylib.inference.predictor import Predictor
    from galaxylib.modeling import loading
    from galaxylib.modeling.saliency import GradCam
    from galaxylib.pipeline import steps
    from galaxylib.pipeline.run_config import load_config

    root, base, data, split = tiny_data
    config = load_config(
        PROJECT_ROOT / "configs" / "tiny.yaml",
        {
            "model.weights": "lite0",
            "train.mode": "head",
            "train.head_epochs": 5,
            "model.dense_units": [],
            "model.average_orientations": True,
        },
    )
    result = steps.train(
        config,
        data,
        split,
        run_name="head",
        model_dir=root / "models" / "head",
        cache_dir=root / "data" / "cache",
        show_progress=False,
    )

    artifact = result["artifact"]
    assert artifact.sidecar["params"]["start"] == "lite0" and "Lite0" in artifact.sidecar["architecture"]
    assert len(result["history"]["loss"]) >= 1
    features_file = list((root / "data" / "cache" / "features").glob("*lite0_32px*.npy"))
    assert len(features_file) == 1 and np.load(features_file[0]).shape == (8, data.n_images, 1280)
    predictor = Predictor(artifact.path)
    assert predictor.class_names == data.class_names
    batch = np.stack([predictor.preprocess(img) for img in data.read_images(split.test[:3])])
    keras_probs = np.asarray(result["model"].predict(batch, verbose=0))
    raw, features = predictor.forward(batch)  # the export's own answer, before the fitted temperature
    np.testing.assert_allclose(raw, keras_probs, atol=1e-4)
    # the features output is what head mode cached (mean of the 8 views), so the OOD statistics fit on it
    assert predictor.has_ood and features.shape == (3, 1280)
    np.testing.assert_allclose(features, np.load(features_file[0]).mean(axis=0)[split.test[:3]], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(
        predictor.predict_arrays(batch), predictor.trust.calibrate(raw), atol=1e-6
    )  # what every entry point reports
    cam = GradCam(loading.load_keras_model(artifact))
    assert cam.layer_name == "head_activation" and cam.heatmaps(batch, [0, 1, 2]).shape == (3, 1, 1)

    # A second run reuses the cached features: the backbone is not run again.
    from galaxylib.modeling import head

    monkeypatch.setattr(head, "backbone_of", lambda *a, **k: pytest.fail("features were computed again"))
    config["train"]["mode"] = "head"
    steps.train(
        config,
        data,
        split,
        run_name="head2",
        model_dir=root / "models" / "head2",
        cache_dir=root / "data" / "cache",
        show_progress=False,
    )


@pytest.mark.slow
def test_the_morphology_start_trains_a_head_on_one_view_and_serves_it_through_litert(tiny_data):
    from galaxylib.inference.predictor import Predictor
    from galaxylib.modeling import loading
    from galaxylib.modeling.morphology import MEASUREMENTS
    from galaxylib.modeling.saliency import GradCam
    from galaxylib.pipeline import steps
    from galaxylib.pipeline.run_config import load_config

    root, _, data, split = tiny_data
    config = load_config(
        PROJECT_ROOT / "configs" / "tiny.yaml",
        {
            "model.weights": "morphology",
            "train.mode": "head",
            "train.head_epochs": 5,
            "model.feature_norm": True,
            "model.dense_units": [16],
            "model.average_orientations": False,
        },
    )
    result = steps.train(
        config,
        data,
        split,
        run_name="morph",
        model_dir=root / "models" / "morph",
        cache_dir=root / "data" / "cache",
        show_progress=False,
    )

    artifact = result["artifact"]
    assert artifact.sidecar["params"]["start"] == "morphology" and "morphology" in artifact.sidecar["architecture"]
    cached = list((root / "data" / "cache" / "features").glob("*morphology-v*_32px*.npy"))
    assert len(cached) == 1 and np.load(cached[0]).shape == (1, data.n_images, len(MEASUREMENTS))  # one view
    predictor = Predictor(artifact.path)
    batch = np.stack([predictor.preprocess(img) for img in data.read_images(split.test[:3])])
    raw, features = predictor.forward(batch)
    np.testing.assert_allclose(raw, np.asarray(result["model"].predict(batch, verbose=0)), atol=1e-4)
    assert predictor.has_ood and features.shape == (3, len(MEASUREMENTS))  # the OOD check scores the measurements
    cam = GradCam(loading.load_keras_model(artifact))
    assert cam.layer_name == "sky_subtracted" and cam.heatmaps(batch, [0, 1, 2]).shape == (3, 32, 32)

    config["train"]["mode"] = "finetune"
    with pytest.raises(ValueError, match="morphology start has no weights to train: use train.mode head"):
        steps.train(
            config,
            data,
            split,
            run_name="x",
            model_dir=root / "models" / "x",
            cache_dir=root / "data" / "cache",
            show_progress=False,
        )


@pytest.mark.slow
def test_finetune_starts_from_a_previous_run_with_a_new_head(tiny_data):
    import keras

    from galaxylib.modeling.loading import load_keras_model
    from galaxylib.pipeline import steps
    from galaxylib.pipeline.run_config import load_config

    root, _, data, split = tiny_data
    first = load_config(PROJECT_ROOT / "configs" / "tiny.yaml", {"model.average_orientations": False})
    pre = steps.train(
        first,
        data,
        split,
        run_name="pre",
        model_dir=root / "models" / "pre",
        cache_dir=root / "data" / "cache",
        show_progress=False,
    )["artifact"]
    config = load_config(
        PROJECT_ROOT / "configs" / "tiny.yaml",
        {
            "model.weights": str(pre.path),
            "train.mode": "finetune",
            "train.head_epochs": 3,
            "train.epochs": 1,
            "model.trainable_layers": 20,
            "model.freeze_batchnorm": True,
            "model.average_orientations": False,
        },
    )
    result = steps.train(
        config,
        data,
        split,
        run_name="ft",
        model_dir=root / "models" / "ft",
        cache_dir=root / "data" / "cache",
        show_progress=False,
    )

    assert result["artifact"].sidecar["params"]["start"] == f"run:{pre.model_version}"
    assert "head_loss" in result["history"] and "loss" in result["history"]  # the head first, then fine-tuning
    before = load_keras_model(pre)
    after = result["model"]
    frozen = before.get_layer("stem_conv").get_weights()[0]
    np.testing.assert_array_equal(after.get_layer("stem_conv").get_weights()[0], frozen)  # not in the last 20
    assert isinstance(after.get_layer("probabilities"), keras.layers.Dense)


def test_an_unknown_start_or_mode_is_a_clear_error(tiny_data):
    from galaxylib.modeling.model import ModelParams, WeightsError, build_model
    from galaxylib.pipeline import steps
    from galaxylib.pipeline.run_config import load_config

    root, _, data, split = tiny_data
    with pytest.raises(WeightsError, match="lite0/lite1/lite2"):
        build_model(ModelParams(image_size=32, weights="lite9"))
    config = load_config(PROJECT_ROOT / "configs" / "tiny.yaml", {"train.mode": "linear-probe"})
    with pytest.raises(ValueError, match="train.mode must be one of full, head, finetune"):
        steps.train(
            config,
            data,
            split,
            run_name="x",
            model_dir=root / "models" / "x",
            cache_dir=root / "data" / "cache",
            show_progress=False,
        )


def test_the_logit_adjusted_loss_shifts_the_logits_by_the_log_prior():
    """With 90 % of class 0, a 50/50 answer is charged as if it said 90/10: the network must raise
    the rare class to be right, so the plain softmax it is saved with favours the rare class."""
    from galaxylib.modeling.training import TrainParams, training_loss

    labels = np.array([0] * 90 + [1] * 10)
    assert training_loss(TrainParams(balance="class_weight"), labels, 2) == "sparse_categorical_crossentropy"
    adjusted = training_loss(TrainParams(balance="logit_adjust", logit_adjust_tau=1.0), labels, 2)
    plain = training_loss(TrainParams(balance="logit_adjust", logit_adjust_tau=0.0), labels, 2)
    half = np.array([[0.5, 0.5]], np.float32)

    assert float(np.asarray(plain(np.array([1]), half))[0]) == pytest.approx(-np.log(0.5), rel=1e-5)
    assert float(np.asarray(adjusted(np.array([0]), half))[0]) == pytest.approx(-np.log(0.9), rel=1e-4)
    assert float(np.asarray(adjusted(np.array([1]), half))[0]) == pytest.approx(-np.log(0.1), rel=1e-4)
    with pytest.raises(ValueError, match="balance must be one of"):
        training_loss(TrainParams(balance="focal"), labels, 2)
