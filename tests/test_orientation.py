"""Orientation averaging: the saved model answers for the 8 rotations and flips of a cutout."""

import numpy as np
import pytest

from galaxylib.artifact import read_artifact
from galaxylib.inference.predictor import Predictor
from galaxylib.modeling.export import save_artifact
from galaxylib.modeling.loading import load_keras_model
from galaxylib.modeling.orientation import (
    N_VIEWS,
    VIEWS,
    inner_network,
    orient,
    view_maps_back,
    with_orientation_average,
)
from galaxylib.preprocessing import load_image


def numpy_views(x: np.ndarray) -> list[np.ndarray]:
    """The 8 orientations of (N, s, s, C) images, written out independently of the layer."""
    t = x.transpose(0, 2, 1, 3)
    return [
        np.ascontiguousarray(v)
        for v in (x, x[:, :, ::-1], x[:, ::-1], x[:, ::-1, ::-1], t, t[:, :, ::-1], t[:, ::-1], t[:, ::-1, ::-1])
    ]


@pytest.fixture(scope="module")
def network():
    """A small random CNN whose answers depend on orientation (it flattens its map; an untrained EfficientNetB0
    answers 0.1 for every class whatever it sees), with a conv map named as Grad-CAM expects."""
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 25)(inputs)
    x = keras.layers.Conv2D(8, 5, strides=2, padding="same")(x)
    x = keras.layers.Flatten()(keras.layers.Activation("relu", name="top_activation")(x))
    return keras.Model(
        inputs, keras.layers.Dense(10, activation="softmax", name="probabilities")(x), name="galaxy10_small_cnn"
    )


@pytest.fixture(scope="module")
def averaged(network):
    return with_orientation_average(network)


@pytest.fixture(scope="module")
def cutouts(sample_files) -> np.ndarray:
    """Four real cutouts through the one preprocessing path, at 32 px."""
    return np.stack([load_image(p, 32, crop=0.6) for p in sample_files[::10]]).astype(np.float32)


def test_the_answer_is_the_mean_of_the_networks_answers_for_the_8_orientations(network, averaged, cutouts):
    expected = np.mean([network.predict(v, verbose=0) for v in numpy_views(cutouts)], axis=0)
    np.testing.assert_allclose(averaged.predict(cutouts, verbose=0), expected, atol=1e-6)


def test_a_rotated_or_flipped_cutout_gets_the_same_answer(averaged, cutouts):
    answer = averaged.predict(cutouts, verbose=0)
    for view in numpy_views(cutouts)[1:]:
        np.testing.assert_allclose(averaged.predict(view, verbose=0), answer, atol=1e-6)


def test_the_network_alone_is_not_orientation_invariant(network, cutouts):
    """Without averaging the answers differ, so the test above can fail."""
    plain = network.predict(cutouts, verbose=0)
    assert np.abs(network.predict(numpy_views(cutouts)[4], verbose=0) - plain).max() > 1e-3


def test_an_averaged_artifact_loads_and_its_tflite_agrees_with_keras(averaged, cutouts, tmp_path):
    save_artifact(
        averaged,
        tmp_path / "avg",
        run_name="avg",
        dataset={"sha256": "0" * 64},
        split={},
        params={},
        synthetic=True,
        crop=0.6,
    )
    model = load_keras_model(read_artifact(tmp_path / "avg"))
    assert inner_network(model) is not None
    keras_probs = model.predict(cutouts, verbose=0)
    np.testing.assert_allclose(keras_probs, averaged.predict(cutouts, verbose=0), atol=1e-6)
    np.testing.assert_allclose(Predictor(tmp_path / "avg").predict_arrays(cutouts), keras_probs, atol=1e-4)


def test_the_numpy_views_match_the_layers_order(averaged, cutouts):
    for view, expected in zip(VIEWS, numpy_views(cutouts)):
        np.testing.assert_array_equal(orient(cutouts, view), expected)
    layer_views = np.asarray(averaged.get_layer("orientation_views")(cutouts)).reshape(N_VIEWS, *cutouts.shape)
    np.testing.assert_array_equal(layer_views, np.stack(numpy_views(cutouts)))


def test_maps_of_the_8_views_turn_back_to_the_inputs_orientation():
    maps = np.random.default_rng(0).random((3, 5, 5)).astype(np.float32)
    per_view = np.stack([v[..., 0] for v in numpy_views(maps[..., None])])
    assert per_view.shape == (N_VIEWS, 3, 5, 5)
    np.testing.assert_array_equal(view_maps_back(per_view), np.broadcast_to(maps, per_view.shape))


def test_grad_cam_of_an_averaged_model_turns_with_the_image(averaged, cutouts):
    from galaxylib.modeling.saliency import GradCam

    cam = GradCam(averaged)
    predicted = averaged.predict(cutouts, verbose=0).argmax(axis=1)
    maps = cam.heatmaps(cutouts, predicted)
    assert maps.shape == (4, *cam.map_size) and np.allclose(maps.max(axis=(1, 2)), 1.0)
    transposed = cam.heatmaps(np.ascontiguousarray(cutouts.transpose(0, 2, 1, 3)), predicted)
    np.testing.assert_allclose(transposed, maps.transpose(0, 2, 1), atol=1e-5)


def test_a_plain_model_has_no_inner_network(network):
    assert inner_network(network) is None
