"""GPU check: the production config's training step on a Galaxy10-size synthetic set.

For a machine with a GPU: builds configs/production.yaml's network (EfficientNetB0 at 224 px,
ImageNet weights when they can be fetched, else from scratch: the same operations), makes a
17,736-image uint8 cache of synthetic galaxies (repeated renders) as a memory map, and trains a
fixed number of steps under ``train.strategy mirrored`` (every local GPU) with mixed precision,
through the streamed input that training uses. Prints the training images/s, the input
pipeline's own images/s (the same batches read without training: it must be well above the
training figure, or the GPU waits for data), the replicas, and the peak GPU memory.

On a machine without a GPU it says so and exits 0.

    python bench/gpu_check.py                 # 60 steps of the global batch 64 per GPU
    python bench/gpu_check.py --steps 120 --batch-per-gpu 128
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GALAXY10_IMAGES = 17_736


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-per-gpu", type=int, default=64)
    parser.add_argument("--images", type=int, default=GALAXY10_IMAGES)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        print("No GPU: TensorFlow sees none on this machine, so there is nothing to check. (exit 0)")
        return 0
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)  # the peak below is what training needed
    import keras

    from galaxylib.config import PROJECT_ROOT
    from galaxylib.modeling.distribute import make_placement
    from galaxylib.modeling.input_pipeline import batches_of, epoch_orders, image_reader, rows_dataset
    from galaxylib.modeling.model import ModelParams, WeightsError, build_model
    from galaxylib.modeling.precision import precision_policy
    from galaxylib.pipeline.run_config import load_config

    config = load_config(PROJECT_ROOT / "configs" / "production.yaml")
    size = int(config["image_size"])
    placement = make_placement("mirrored", batch_size=args.batch_per_gpu * len(gpus))
    batch = args.batch_per_gpu * placement.replicas
    print(f"{len(gpus)} GPU(s): {[tf.config.experimental.get_device_details(g).get('device_name') for g in gpus]}")

    folder = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    cache = np.lib.format.open_memmap(
        folder / "cache.npy", mode="w+", dtype=np.uint8, shape=(args.images, size, size, 3)
    )
    from galaxylib.data.synthetic import render_galaxy

    rng = np.random.default_rng(0)
    renders = np.stack([render_galaxy(c % 10, rng, size=size) for c in range(200)]).astype(np.uint8)
    for start in range(0, args.images, len(renders)):
        cache[start : start + len(renders)] = renders[: args.images - start]
    cache.flush()
    images, labels = np.load(folder / "cache.npy", mmap_mode="r"), np.arange(args.images) % 10
    rows = np.arange(args.images)

    def dataset():
        orders = epoch_orders(rows, labels, 1 + args.steps * batch // args.images, 0, "none", 10)
        return rows_dataset(
            lambda: batches_of(orders, batch, True), image_reader(images, labels), (size, size, 3), np.uint8, tf.float32
        )

    started, seen = time.perf_counter(), 0
    for x, _ in dataset().take(args.steps):
        seen += int(x.shape[0])
    input_rate = seen / (time.perf_counter() - started)

    params = {**config["model"], "image_size": size}
    with precision_policy(True), placement.strategy.scope():
        try:
            model = build_model(ModelParams.from_dict(params), 10)
        except WeightsError:  # no network: the same operations from scratch
            model = build_model(ModelParams.from_dict({**params, "weights": "none"}), 10)
    distributed = placement.strategy.experimental_distribute_dataset(dataset())
    warm = 5
    timings = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, step, logs=None):
            timings.append(time.perf_counter())

    model.fit(distributed, epochs=1, steps_per_epoch=args.steps, verbose=0, callbacks=[Clock()])
    train_rate = (len(timings) - warm) * batch / (timings[-1] - timings[warm - 1])
    peak = max(tf.config.experimental.get_memory_info(f"GPU:{i}")["peak"] for i in range(len(gpus))) / 2**30
    print(
        f"production config ({size} px, {config['model'].get('weights')}), mixed precision, {placement.replicas} "
        f"replica(s), global batch {batch}:"
    )
    print(f"  training:       {train_rate:8.1f} images/s (steps {warm + 1}-{args.steps})")
    print(f"  input pipeline: {input_rate:8.1f} images/s ({input_rate / train_rate:.1f}x the training rate)")
    print(f"  peak GPU memory: {peak:.2f} GiB (the largest over the GPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
