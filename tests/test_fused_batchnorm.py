"""The fused BatchNormalization used in training steps computes what Keras' own layer computes."""

import numpy as np
import pytest

from galaxylib.modeling.fused_batchnorm import fused_batchnorm


def _network_with_batchnorm():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.Activation("swish")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def _training_step(model, images, labels, fused: bool):
    """Loss, gradients and the moving statistics after one training-mode call, from the same start."""
    import keras
    import tensorflow as tf

    start = [w.numpy() for w in model.weights]
    loss = keras.losses.SparseCategoricalCrossentropy()

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            value = loss(labels, model(images, training=True))
        return value, tape.gradient(value, model.trainable_variables)

    with fused_batchnorm(fused):
        value, grads = step()
    bn = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    moving = (bn.moving_mean.numpy(), bn.moving_variance.numpy())
    for w, v in zip(model.weights, start):
        w.assign(v)
    return float(value), [g.numpy() for g in grads], moving


@pytest.fixture
def batch():
    rng = np.random.default_rng(1)
    return (rng.uniform(0, 255, (6, 12, 12, 3)).astype(np.float32), rng.integers(0, 10, 6))


def test_a_fused_training_step_gives_the_same_loss_gradients_and_moving_statistics(batch):
    model = _network_with_batchnorm()
    keras_loss, keras_grads, keras_moving = _training_step(model, *batch, fused=False)
    fused_loss, fused_grads, fused_moving = _training_step(model, *batch, fused=True)

    assert fused_loss == pytest.approx(keras_loss, rel=1e-5)
    for k, f in zip(keras_grads, fused_grads):
        np.testing.assert_allclose(f, k, rtol=1e-3, atol=1e-6)
    for k, f in zip(keras_moving, fused_moving):
        np.testing.assert_allclose(f, k, rtol=1e-5)
    assert not np.allclose(keras_moving[1], 1.0)  # the statistics did move


def test_inference_mode_and_the_layer_class_are_left_as_keras_has_them(batch):
    import keras

    model = _network_with_batchnorm()
    keras_call = keras.layers.BatchNormalization.call
    plain = model(batch[0], training=False).numpy()
    with fused_batchnorm():
        assert keras.layers.BatchNormalization.call is not keras_call
        inside = model(batch[0], training=False).numpy()
    assert keras.layers.BatchNormalization.call is keras_call
    np.testing.assert_array_equal(inside, plain)
