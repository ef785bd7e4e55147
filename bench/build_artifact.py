"""Build (once) an untrained 224 px EfficientNetB0 artifact for timing.

Untrained weights run exactly the same operations as trained ones, so they time the
same; the artifact is cached under models/bench-224 (git-ignored).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from galaxylib.config import MODELS_DIR

BENCH_DIR = MODELS_DIR / "bench-224"


def ensure_bench_artifact(run_dir: Path = BENCH_DIR, image_size: int = 224) -> Path:
    """Return a valid artifact folder, building it (TensorFlow, ~1 min) only when absent."""
    from galaxylib.artifact import ArtifactError, read_artifact

    try:
        read_artifact(run_dir)
        return run_dir
    except ArtifactError:
        pass
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from galaxylib.artifact import save_artifact
    from galaxylib.model import ModelParams, build_model

    keras.utils.set_random_seed(0)
    model = build_model(ModelParams(image_size=image_size, weights="none", trainable_layers="all",
                                    freeze_batchnorm=False))
    save_artifact(model, run_dir, run_name=run_dir.name, dataset={"name": "none", "sha256": "0" * 64},
                  split={}, params={"image_size": image_size}, synthetic=True)
    return run_dir


if __name__ == "__main__":
    print(ensure_bench_artifact(Path(sys.argv[1]) if len(sys.argv) > 1 else BENCH_DIR))
