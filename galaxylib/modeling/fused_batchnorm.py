"""Fused BatchNormalization for training steps.

Keras 3 computes BatchNormalization in training mode from separate ops (moments, then
normalise), forward and backward. TensorFlow's fused kernel does the same arithmetic in one
op each way: forward + backward runs 1.1x to 1.35x faster with it at 32 to 64 px
(bench/bench_train_step.py). The layers, their weights and the saved model stay standard
Keras; only the graph traced for training differs, and a test checks it computes the same
outputs, gradients and moving statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def fused_batchnorm(enabled: bool = True) -> Iterator[None]:
    """While active, BatchNormalization layers traced in training mode use the fused kernel.

    Inference mode, masks, renorm, synchronized BN and anything but 4-D float32 channels-last
    input keep Keras' own path.
    """
    if not enabled:
        yield
        return
    import keras
    import tensorflow as tf

    layer_class = keras.layers.BatchNormalization
    keras_call = layer_class.call

    def call(self, inputs, training=None, mask=None):
        if (
            not (training and self.trainable)
            or mask is not None
            or self.renorm
            or self.synchronized
            or len(inputs.shape) != 4
            or self.axis not in (-1, 3)
            or inputs.dtype != tf.float32
        ):
            return keras_call(self, inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        gamma = self.gamma if self.scale else tf.ones([channels])
        beta = self.beta if self.center else tf.zeros([channels])
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, gamma, beta, epsilon=self.epsilon, is_training=True
        )
        shape = tf.shape(inputs)
        n = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
        variance = variance * (n - 1.0) / n  # the kernel returns Bessel's correction; Keras keeps the biased variance
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return outputs

    layer_class.call = call
    try:
        yield
    finally:
        layer_class.call = keras_call
