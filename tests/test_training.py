"""Training's sample order, class balance and time-budgeted schedule, on tiny data."""

import numpy as np
import pytest

from galaxylib.data.split import make_split
from galaxylib.modeling.input_pipeline import epoch_orders
from galaxylib.modeling.training import TrainParams, train_model

pytestmark = pytest.mark.slow  # trains small models


def test_each_epoch_visits_every_training_image_once_in_a_new_order():
    indices = np.arange(10, 40)
    orders = np.stack(
        list(epoch_orders(indices, np.zeros(50, np.int64), epochs=3, seed=0, balance="class_weight", n_classes=10))
    )
    assert orders.shape == (3, 30)
    assert all(sorted(order) == list(indices) for order in orders)
    assert not np.array_equal(orders[0], orders[1])


def test_oversampling_draws_a_rare_class_as_often_as_a_common_one():
    labels = np.array([0] * 95 + [4] * 5)  # class 4 is under 2 % of the real data
    orders = np.stack(list(epoch_orders(np.arange(100), labels, epochs=40, seed=1, balance="oversample", n_classes=10)))
    drawn = np.bincount(labels[orders.ravel()], minlength=5)
    assert drawn[4] / drawn[0] == pytest.approx(1.0, abs=0.1)


def _tiny_model(size: int):
    import keras

    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_the_budget_schedule_decays_the_learning_rate_to_zero_and_stops():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (200, 16, 16, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(10), 20)
    split = make_split(labels, "0" * 64, seed=0)
    model = _tiny_model(16)
    params = TrainParams(
        epochs=100_000,
        batch_size=8,
        patience=100_000,
        lr_schedule="cosine_budget",
        max_train_minutes=0.2,
        augment_zoom=0,
        augment_brightness=0,
    )

    history = train_model(model, images, labels, split, params, 10)

    assert "val_loss" in history  # the cut-short last epoch is still validated
    assert float(model.optimizer.learning_rate.numpy()) < 1e-2 * 0.01  # decayed, not just stopped


def test_the_budget_schedule_needs_a_budget():
    labels = np.repeat(np.arange(10), 20)
    split = make_split(labels, "0" * 64, seed=0)
    with pytest.raises(ValueError, match="max_train_minutes"):
        train_model(
            _tiny_model(16),
            np.zeros((200, 16, 16, 3), np.uint8),
            labels,
            split,
            TrainParams(lr_schedule="cosine_budget", max_train_minutes=0),
            10,
        )


def test_mixed_precision_trains_in_float16_and_hands_back_a_float32_model_with_the_same_answers(tmp_path):
    """What a GPU run does (train.mixed_precision auto), forced here on the CPU on a small head."""
    import keras

    from galaxylib.modeling.head import fit_head
    from galaxylib.modeling.model import ModelParams, build_head
    from galaxylib.modeling.precision import as_float32, precision_policy, use_mixed_precision

    assert use_mixed_precision("auto") is False  # no GPU here
    with pytest.raises(ValueError, match="auto, true or false"):
        use_mixed_precision("half")
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    features = (rng.normal(size=(1, 60, 8)) + labels[None, :, None]).astype(np.float32)
    split = make_split(labels, "0" * 64, seed=0)
    with precision_policy(True):
        head = build_head(ModelParams(dense_units=[16], dropout=0.0), 8, 3)
        assert head.get_layer("probabilities").dtype_policy.name == "float32"  # the softmax stays in float32
        assert head.get_layer("head_dense_0").dtype_policy.name == "mixed_float16"
        fit_head(head, features, labels, split.train, split.val, TrainParams(head_epochs=3, head_batch_size=16), 3)
        assert type(head.optimizer).__name__ == "LossScaleOptimizer"
        mixed = head.predict(features[0, :8], verbose=0)
    served = as_float32(head)
    assert {layer.dtype_policy.name for layer in served.layers} == {"float32"}
    np.testing.assert_allclose(served.predict(features[0, :8], verbose=0), mixed, atol=2e-3)
    served.save(tmp_path / "head.keras")  # saved as the plain float32 kind
    reloaded = keras.models.load_model(tmp_path / "head.keras", compile=False)
    assert {layer.dtype_policy.name for layer in reloaded.layers} == {"float32"}


def test_dihedral_augmentation_turns_each_image_of_a_batch_its_own_way(sample_files):
    import keras

    from galaxylib.modeling.orientation import VIEWS, orient
    from galaxylib.modeling.training import _augmenter
    from galaxylib.preprocessing import load_image

    keras.utils.set_random_seed(0)
    cutout = load_image(sample_files[0], 32).astype(np.float32)
    batch = np.repeat(cutout[None], 64, axis=0)  # one real galaxy, 64 times
    (dihedral,) = _augmenter(TrainParams(augment_dihedral=True, augment_brightness=0.0, augment_zoom=0.0))
    turned = np.asarray(dihedral(batch, training=True))
    views = np.stack([orient(cutout[None], view)[0] for view in VIEWS])
    matches = [[np.array_equal(image, view) for view in views] for image in turned]
    assert all(any(m) for m in matches)  # every output is one of the 8 views of its input
    drawn = {m.index(True) for m in matches}
    assert len(drawn) == 8  # all 8 appear (a seeded draw; unseeded, 64 draws miss one view 0.2 % of the time)
    np.testing.assert_array_equal(np.asarray(dihedral(batch, training=False)), batch)
