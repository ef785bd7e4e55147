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


def synchronised_call(layer, inputs, context):
    """Training-mode BatchNormalization over the global batch of every replica, with one
    all-reduce of (sum, sum of squares, count) per layer, where Keras's own synchronized path does
    three: under MirroredStrategy each all-reduce is a cross-replica merge while the step is
    traced, and that tracing dominates the first epoch on CPU devices."""
    import tensorflow as tf

    rank = len(inputs.shape)
    axis = layer.axis % rank
    axes = [i for i in range(rank) if i != axis]
    local_sum = tf.reduce_sum(inputs, axis=axes)
    local_squares = tf.reduce_sum(tf.square(inputs), axis=axes)
    count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(inputs), axes)), tf.float32)
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.concat([local_sum, local_squares, count[None]], 0))
    channels = inputs.shape[axis]
    n = total[-1]
    mean = total[:channels] / n
    variance = tf.maximum(total[channels : 2 * channels] / n - tf.square(mean), 0.0)
    layer.moving_mean.assign(layer.moving_mean * layer.momentum + mean * (1.0 - layer.momentum))
    layer.moving_variance.assign(layer.moving_variance * layer.momentum + variance * (1.0 - layer.momentum))
    shape = [1] * rank
    shape[axis] = channels
    gamma = tf.reshape(layer.gamma, shape) if layer.scale else None
    beta = tf.reshape(layer.beta, shape) if layer.center else None
    return tf.nn.batch_normalization(
        inputs, tf.reshape(mean, shape), tf.reshape(variance, shape), beta, gamma, layer.epsilon
    )


@contextlib.contextmanager
def fused_batchnorm(enabled: bool = True) -> Iterator[None]:
    """While active, BatchNormalization layers traced in training mode use the fused kernel, and
    synchronized ones under several replicas compute their statistics with one all-reduce.

    Inference mode, masks, renorm and anything but 4-D float32 channels-last input keep Keras'
    own path.
    """
    if not enabled:
        yield
        return
    import keras
    import tensorflow as tf

    layer_class = keras.layers.BatchNormalization
    keras_call = layer_class.call

    def call(self, inputs, training=None, mask=None):
        if self.synchronized and training and self.trainable and mask is None and not self.renorm:
            context = tf.distribute.get_replica_context()
            if context is not None and context.num_replicas_in_sync > 1 and inputs.dtype == tf.float32:
                return synchronised_call(self, inputs, context)
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
