"""A small CNN learned from the user's galaxies, alone or beside the morphology measurements.

The fused start trains its CNN first, then a head on both feature sources; the result must be
one model that saves, exports to one TFLite file, serves through the Predictor with the OOD
check reading both sources, answers the same in all 8 orientations, and explains itself with
its CNN's Grad-CAM map.
"""

from __future__ import annotations

import numpy as np
import pytest

from galaxylib.config import PROJECT_ROOT

FUSED = "morphology+scratch-small"
SMALL_CNN = {"size": 16, "filters": [4, 8], "epochs": 2, "batch_size": 16}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from galaxylib.pipeline import steps
    from galaxylib.pipeline.run_config import load_config

    root = tmp_path_factory.mktemp("scratch")
    config = load_config(PROJECT_ROOT / "configs" / "tiny.yaml", {"model.average_orientations": False})
    data, split = steps.prepare_data(config, root / "data", root / "data" / "cache", show_progress=False)
    return root, data, split


def fused_config(**overrides):
    from galaxylib.pipeline.run_config import load_config

    return load_config(
        PROJECT_ROOT / "configs" / "tiny.yaml",
        {
            "model.weights": FUSED,
            "model.scratch": SMALL_CNN,
            "train.mode": "head",
            "train.head_epochs": 5,
            "model.feature_norm": True,
            "model.dense_units": [16],
            "model.average_orientations": False,
            **overrides,
        },
    )


def train(config, tiny_data, name: str):
    from galaxylib.pipeline import steps

    root, data, split = tiny_data
    return steps.train(
        config,
        data,
        split,
        run_name=name,
        model_dir=root / "models" / name,
        cache_dir=root / "data" / "cache",
        show_progress=False,
    )


@pytest.mark.slow
def test_the_fused_start_trains_its_cnn_then_a_head_on_both_and_serves_as_one_model(tiny_data):
    from galaxylib.catalog.shards import orientation_views
    from galaxylib.inference.predictor import Predictor
    from galaxylib.modeling import loading
    from galaxylib.modeling.morphology import MEASUREMENTS
    from galaxylib.modeling.orientation import VIEWS, orient
    from galaxylib.modeling.saliency import GradCam

    root, data, split = tiny_data
    result = train(fused_config(), tiny_data, "fused")

    artifact = result["artifact"]
    assert artifact.sidecar["params"]["start"] == FUSED
    assert orientation_views(artifact) == 8  # what a catalogue run records: its CNN reads 8 views
    assert "morphology measurements + small CNN from scratch (16 px, 4-8 filters)" in artifact.sidecar["architecture"]
    history = result["history"]
    assert len(history["cnn_loss"]) == 2 and "loss" in history  # the CNN's epochs, then the head's
    width = len(MEASUREMENTS) + SMALL_CNN["filters"][-1]
    cached = list(
        (root / "data" / "cache" / "features").glob("*morphology-scratch-small-*_32px*.npy")
    )  # keyed on the weights
    assert len(cached) == 1 and np.load(cached[0]).shape == (1, data.n_images, width)  # one view: invariant

    predictor = Predictor(artifact.path)
    images = data.read_images(split.test[:3])
    batch = np.stack([predictor.preprocess(img) for img in images])
    raw, features = predictor.forward(batch)
    np.testing.assert_allclose(raw, np.asarray(result["model"].predict(batch, verbose=0)), atol=1e-4)
    assert predictor.has_ood and features.shape == (3, width)  # the OOD check reads both sources
    for view in VIEWS[1:]:  # the same answer in every orientation, through LiteRT
        turned, _ = predictor.forward(orient(batch, view))
        np.testing.assert_allclose(turned, raw, atol=1e-4)

    cam = GradCam(loading.load_keras_model(artifact))
    assert cam.layer_name == "cnn_activation"
    maps = cam.heatmaps(batch, [0, 1, 2])
    assert maps.shape == (3, 8, 8) and np.isfinite(maps).all()
    turned = cam.heatmaps(orient(batch, VIEWS[3]), [0, 1, 2])
    np.testing.assert_allclose(turned, orient(maps[..., None], VIEWS[3])[..., 0], atol=1e-4)


@pytest.mark.slow
def test_the_scratch_cnn_alone_trains_every_layer_end_to_end(tiny_data):
    from galaxylib.pipeline.run_config import load_config

    config = load_config(
        PROJECT_ROOT / "configs" / "tiny.yaml",
        {"model.weights": "scratch-small", "model.scratch": SMALL_CNN, "model.dense_units": [], "train.epochs": 1},
    )
    result = train(config, tiny_data, "scratch")
    model = result["model"]
    frozen = [w.path for w in model.non_trainable_weights if "moving" not in w.path]
    assert frozen == [] and "small CNN from scratch" in result["artifact"].sidecar["architecture"]


def test_each_start_is_refused_with_a_mode_it_cannot_train_in():
    from galaxylib.modeling.model import ModelParams
    from galaxylib.modeling.train_modes import check_mode
    from galaxylib.modeling.training import TrainParams

    def check(weights, mode, **model):
        return check_mode(ModelParams(weights=weights, **model), TrainParams(mode=mode))

    assert check(FUSED, "head") == FUSED
    with pytest.raises(
        ValueError, match="trains its CNN first, then a head on both feature sources: use train.mode head"
    ):
        check(FUSED, "full")
    with pytest.raises(ValueError, match="orientation-invariant already"):
        check(FUSED, "head", average_orientations=True)
    with pytest.raises(ValueError, match="scratch-small start is a CNN with fresh weights: use train.mode full"):
        check("scratch-small", "head")
    with pytest.raises(ValueError, match=r"a fused start is morphology\+scratch-small"):
        check("morphology+lite0", "head")
    with pytest.raises(ValueError, match="model.scratch: unknown setting"):
        check(FUSED, "head", scratch={"filter": [8]})


def test_a_config_with_a_bad_cnn_setting_or_size_is_refused_before_any_work():
    from galaxylib.modeling.scratch_cnn import ScratchParams, downsample_layer
    from galaxylib.pipeline.run_config import ConfigError, load_config

    with pytest.raises(ConfigError, match="unknown setting.*epoch"):
        load_config(PROJECT_ROOT / "configs" / "finetune-cpu.yaml", {"model.scratch.epoch": 3})
    with pytest.raises(ValueError, match="must be at least 16 and divide image_size 128"):
        downsample_layer(128, ScratchParams(size=48))


def test_the_fused_recipe_is_a_valid_config_of_the_fused_start():
    from galaxylib.modeling.model import ModelParams
    from galaxylib.modeling.train_modes import check_mode
    from galaxylib.modeling.training import TrainParams
    from galaxylib.pipeline.run_config import load_config

    config = load_config(PROJECT_ROOT / "configs" / "fused-cpu.yaml")
    params = ModelParams.from_dict(config["model"])
    assert check_mode(params, TrainParams.from_dict(config["train"])) == FUSED


def test_the_cnn_sees_each_galaxy_standardised_so_a_brighter_sky_changes_nothing(sample_files):
    import keras

    from galaxylib.modeling.scratch_cnn import ScratchParams, chain, cnn_layers
    from galaxylib.preprocessing import load_image

    keras.utils.set_random_seed(0)
    params = ScratchParams(size=32, filters=[4, 8])
    inputs = keras.Input((32, 32, 3))
    cnn = keras.Model(inputs, chain(cnn_layers(params), inputs))
    cutouts = np.stack([load_image(p, 32) for p in sample_files[:4]]).astype(np.float32)
    features = cnn.predict(cutouts, verbose=0)
    np.testing.assert_allclose(cnn.predict(cutouts + 30.0, verbose=0), features, rtol=1e-4, atol=1e-5)
    assert not np.allclose(features[0], features[1])  # it still tells galaxies apart
