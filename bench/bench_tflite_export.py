"""Benchmark: the artifact's TFLite export against Keras' ``from_keras_model``.

Builds the quick config's network (untrained; export time does not depend on the weights),
exports it both ways, times each, and runs both flatbuffers through LiteRT on the same
inputs, which must agree.

    python bench/bench_tflite_export.py            # 56 px, as configs/quick.yaml
    python bench/bench_tflite_export.py --size 224
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from pathlib import Path


def litert_probabilities(path: Path, images):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, images)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=56)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    from galaxylib.modeling.export import export_tflite
    from galaxylib.modeling.model import ModelParams, build_model

    model = build_model(
        ModelParams(image_size=args.size, weights="none", trainable_layers="all", freeze_batchnorm=False)
    )
    out = Path(tempfile.mkdtemp())
    started = time.perf_counter()
    export_tflite(model, out / "frozen.tflite")
    frozen_s = time.perf_counter() - started

    started = time.perf_counter()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints its export signature
        (out / "keras.tflite").write_bytes(converter.convert())
    keras_s = time.perf_counter() - started

    images = np.random.default_rng(0).uniform(0, 255, (8, args.size, args.size, 3)).astype(np.float32)
    diff = np.abs(
        litert_probabilities(out / "frozen.tflite", images) - litert_probabilities(out / "keras.tflite", images)
    ).max()
    print(
        f"EfficientNetB0 at {args.size} px: export_tflite {frozen_s:.1f} s, "
        f"from_keras_model {keras_s:.1f} s ({keras_s / frozen_s:.1f}x); "
        f"max |p_frozen - p_keras| on 8 images = {diff:.2e}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
