"""The EfficientNetB0 model, the artifact round trip, and TFLite agreeing with Keras."""

import json
import shutil

import numpy as np
import pytest

from galaxylib.artifact import ArtifactError, read_artifact
from galaxylib.classes import CLASS_NAMES
from galaxylib.inference.predictor import Predictor
from galaxylib.modeling.loading import load_keras_model
from galaxylib.modeling.model import ModelParams, WeightsError, build_model


@pytest.fixture(scope="module")
def design_model():
    return build_model(ModelParams(image_size=64, weights="none"))


def test_the_head_is_dense_256_128_64_then_softmax_10(design_model):
    dense = [layer for layer in design_model.layers if layer.name.startswith(("head_dense", "probabilities"))]
    assert [layer.units for layer in dense] == [256, 128, 64, 10]
    assert design_model.get_layer("head_dropout").rate == 0.3
    assert design_model.output_shape == (None, 10)


def test_only_the_last_100_base_layers_train_and_batchnorm_stays_frozen(design_model):
    import keras

    base = [layer for layer in design_model.layers if not layer.name.startswith(("head_", "probabilities"))]
    assert not any(layer.trainable for layer in base[:-100])
    tail = base[-100:]
    assert all(layer.trainable for layer in tail if not isinstance(layer, keras.layers.BatchNormalization))
    assert not any(layer.trainable for layer in tail if isinstance(layer, keras.layers.BatchNormalization))


def test_the_design_optimiser_is_adam_at_1e_5_with_sparse_crossentropy(design_model):
    assert type(design_model.optimizer).__name__ == "Adam"
    assert float(design_model.optimizer.learning_rate.numpy()) == pytest.approx(1e-5)
    assert design_model.loss == "sparse_categorical_crossentropy"


def test_a_local_weights_file_is_loaded(tmp_path):
    import keras

    donor = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    path = tmp_path / "efficientnetb0_notop.weights.h5"
    donor.save_weights(path)
    model = build_model(ModelParams(image_size=32, weights=str(path)))
    np.testing.assert_array_equal(
        model.get_layer("stem_conv").get_weights()[0], donor.get_layer("stem_conv").get_weights()[0]
    )


def test_a_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        build_model(ModelParams(image_size=32, weights=str(tmp_path / "nope.h5")))


def test_zero_init_residual_starts_every_residual_block_as_the_identity():
    """From scratch, each block that adds its input back starts with its branch switched off."""
    import keras

    model = build_model(
        ModelParams(
            image_size=32, weights="none", trainable_layers="all", freeze_batchnorm=False, zero_init_residual=True
        )
    )
    adds = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Add)]
    last_bn_of_branch = [model.get_layer(name.replace("_add", "_project_bn")) for name in adds]

    assert len(adds) == 9  # EfficientNetB0's blocks with an identity shortcut
    assert all(not np.any(bn.gamma.numpy()) for bn in last_bn_of_branch)
    assert np.all(model.get_layer("block1a_project_bn").gamma.numpy() == 1.0)  # no shortcut: untouched


def test_zero_init_residual_leaves_pretrained_weights_as_they_are(tmp_path):
    import keras

    donor = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    trained_gamma = np.random.default_rng(0).uniform(0.5, 1.5, donor.get_layer("block2b_project_bn").gamma.shape)
    donor.get_layer("block2b_project_bn").gamma.assign(trained_gamma.astype(np.float32))
    path = tmp_path / "efficientnetb0_notop.weights.h5"
    donor.save_weights(path)

    model = build_model(ModelParams(image_size=32, weights=str(path), zero_init_residual=True))

    np.testing.assert_allclose(model.get_layer("block2b_project_bn").gamma.numpy(), trained_gamma, rtol=1e-6)


def test_zero_init_residual_with_frozen_batchnorm_is_a_clear_error():
    """A zero gamma that cannot train would switch its block off for good."""
    with pytest.raises(ValueError, match="needs trainable BatchNormalization"):
        build_model(ModelParams(image_size=32, weights="none", freeze_batchnorm=True, zero_init_residual=True))


def test_the_artifact_round_trips_with_its_sidecar(tiny_artifact):
    artifact = read_artifact(tiny_artifact, need_keras=True)
    assert artifact.sidecar["class_names"] == list(CLASS_NAMES)
    assert artifact.image_size == 32 and artifact.model_version.startswith("tiny-")
    assert load_keras_model(artifact).input_shape == (None, 32, 32, 3)


def test_an_artifact_readers_would_refuse_is_never_moved_into_place(tmp_path):
    import keras

    from galaxylib.modeling.export import save_artifact

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(
        inputs, keras.layers.Dense(1, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))
    )
    run_dir = tmp_path / "models" / "one-class"
    run_dir.mkdir(parents=True)
    (run_dir / "earlier.txt").write_text("what was here before")
    with pytest.raises(ArtifactError, match="two or more distinct names"):
        save_artifact(
            model,
            run_dir,
            run_name="one-class",
            class_names=("smooth",),
            dataset={"sha256": "0" * 64},
            split={},
            params={},
            synthetic=True,
        )
    assert [p.name for p in run_dir.iterdir()] == ["earlier.txt"]  # untouched
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["one-class"]  # no temporary folder left


def test_tflite_agrees_with_keras_on_the_same_inputs(tiny_artifact, sample_files):
    predictor = Predictor(tiny_artifact)
    batch = np.stack([predictor.preprocess(p) for p in sample_files[:8]])
    keras_probs = load_keras_model(read_artifact(tiny_artifact)).predict(batch, verbose=0)
    tflite_probs = predictor.predict_arrays(batch)
    np.testing.assert_allclose(tflite_probs, keras_probs, atol=1e-4)
    assert np.allclose(tflite_probs.sum(axis=1), 1, atol=1e-5)


def test_one_image_and_a_batch_give_the_same_answer(tiny_artifact, sample_files):
    predictor = Predictor(tiny_artifact)
    batch = predictor.predict_batch(sample_files[:5])
    single = predictor.predict(sample_files[2])
    assert single.probabilities == pytest.approx(batch[2].probabilities, abs=1e-6)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("delete_sidecar", "no model.json"),
        ("delete_tflite", "missing model.tflite"),
        ("corrupt_tflite", "checksum"),
        ("drop_key", "incomplete"),
        ("duplicate_classes", "distinct names"),
        ("other_contract", "preprocessing contract"),
    ],
)
def test_a_broken_artifact_is_refused_with_a_clear_error(tiny_artifact, tmp_path, damage, message):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_artifact, broken)
    sidecar = json.loads((broken / "model.json").read_text())
    if damage == "delete_sidecar":
        (broken / "model.json").unlink()
    elif damage == "delete_tflite":
        (broken / "model.tflite").unlink()
    elif damage == "corrupt_tflite":
        with open(broken / "model.tflite", "r+b") as fh:
            fh.seek(100)
            fh.write(b"\x00" * 16)
    else:
        if damage == "drop_key":
            del sidecar["image_size"]
        elif damage == "duplicate_classes":
            sidecar["class_names"][3] = sidecar["class_names"][2]  # two outputs would share a name
        else:
            sidecar["preprocessing"]["version"] = 99
        (broken / "model.json").write_text(json.dumps(sidecar))
    with pytest.raises(ArtifactError, match=message):
        Predictor(broken)


def test_the_predictor_applies_the_crop_its_artifact_was_trained_with(tiny_artifact, tmp_path, sample_files):
    from galaxylib.preprocessing import load_image

    cropped = tmp_path / "cropped"
    shutil.copytree(tiny_artifact, cropped)
    sidecar = json.loads((cropped / "model.json").read_text())
    sidecar["preprocessing"]["crop"] = 0.6
    (cropped / "model.json").write_text(json.dumps(sidecar))
    predictor = Predictor(cropped)
    np.testing.assert_array_equal(predictor.preprocess(sample_files[1]), load_image(sample_files[1], 32, crop=0.6))
