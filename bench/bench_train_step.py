"""Benchmark: where a training step's time goes for the quick config's network.

Times, on random inputs of the given size and batch (images/s, after two warm-up calls):
the forward pass in inference mode, the forward pass in training mode, forward plus
backward (gradients of every trainable weight) with Keras' own BatchNormalization and with
the fused kernel the training steps use (galaxylib/fused_batchnorm.py), and one depthwise
convolution of the network's shape, forward against forward plus backward. The two
forward + backward variants run in alternating rounds in one process, so their ratio is
measured under the same load.

    python bench/bench_train_step.py            # 64 px, batch 32 (the docs' first figures)
    python bench/bench_train_step.py --size 56 --batch 64   # as configs/quick.yaml
"""

from __future__ import annotations

import argparse
import os
import time


def seconds(fn, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        out = fn()
    _ = [t.numpy() for t in out][:1]
    return time.perf_counter() - started


def images_per_second(fn, batch: int, calls: int = 8) -> float:
    fn(), fn()
    return calls * batch / seconds(fn, calls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds of the A/B")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    from galaxylib.modeling.fused_batchnorm import fused_batchnorm
    from galaxylib.modeling.model import ModelParams, build_model

    model = build_model(
        ModelParams(
            image_size=args.size,
            weights="none",
            trainable_layers="all",
            freeze_batchnorm=False,
            bn_momentum=0.9,
            drop_connect_rate=0.0,
            zero_init_residual=True,
        )
    )
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, 10, args.batch))
    loss = keras.losses.SparseCategoricalCrossentropy()
    infer = tf.function(lambda: [model(x, training=False)])
    forward = tf.function(lambda: [model(x, training=True)])

    def gradients():
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        return tape.gradient(value, model.trainable_variables)

    keras_bn = tf.function(gradients)
    fused_bn = tf.function(gradients)
    keras_bn(), keras_bn()
    with fused_batchnorm():  # BatchNormalization is chosen when the function is traced
        fused_bn(), fused_bn()

    print(f"EfficientNetB0 at {args.size} px, batch {args.batch}, load average {os.getloadavg()[0]:.2f}")
    for name, fn in (("forward, inference mode", infer), ("forward, training mode", forward)):
        print(f"  {name:40s} {images_per_second(fn, args.batch):7.1f} images/s")
    spent = {"keras": 0.0, "fused": 0.0}
    for _ in range(args.rounds):
        spent["keras"] += seconds(keras_bn, 4)
        spent["fused"] += seconds(fused_bn, 4)
    images = args.rounds * 4 * args.batch
    print(f"  {'forward + backward, Keras BatchNorm':40s} {images / spent['keras']:7.1f} images/s")
    print(f"  {'forward + backward, fused BatchNorm':40s} {images / spent['fused']:7.1f} images/s")
    print(f"  fused BatchNorm speed-up: {spent['keras'] / spent['fused']:.2f}x")

    # block3a's depthwise convolution: 5x5, stride 2, 144 channels at a quarter of the input size.
    side = max(2, args.size // 4)
    feature = tf.Variable(rng.normal(size=(args.batch, side, side, 144)).astype(np.float32))
    kernel = tf.Variable(rng.normal(size=(5, 5, 144, 1)).astype(np.float32))
    depthwise = tf.function(lambda: [tf.nn.depthwise_conv2d(feature, kernel, [1, 2, 2, 1], "SAME")])

    @tf.function
    def depthwise_backward():
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(tf.nn.depthwise_conv2d(feature, kernel, [1, 2, 2, 1], "SAME") ** 2)
        return tape.gradient(value, [feature, kernel])

    fwd, both = images_per_second(depthwise, args.batch, 20), images_per_second(depthwise_backward, args.batch, 20)
    print(f"  one depthwise conv (block3a): forward + backward takes {fwd / both:.1f}x the forward time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
