"""Build (once) an untrained artifact with the production preprocessing, for timing.

Untrained weights run exactly the same operations as trained ones, so they time the
same. Image size and crop come from configs/production.yaml, so the benches time
what production serves; the artifact is cached under models/bench-224 (git-ignored)
and rebuilt when the production preprocessing changes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from galaxylib.config import MODELS_DIR, PROJECT_ROOT

BENCH_DIR = MODELS_DIR / "bench-224"
PRODUCTION_CONFIG = PROJECT_ROOT / "configs" / "production.yaml"


def production_preprocessing() -> tuple[int, float]:
    """(image_size, crop) of configs/production.yaml."""
    from galaxylib.pipeline.run_config import load_config

    config = load_config(PRODUCTION_CONFIG)
    return int(config["image_size"]), float(config["crop"])


def ensure_bench_artifact(run_dir: Path = BENCH_DIR) -> Path:
    """Return a valid artifact folder, building it (TensorFlow, ~1 min) only when absent or stale."""
    from galaxylib.artifact import ArtifactError, read_artifact

    image_size, crop = production_preprocessing()
    try:
        artifact = read_artifact(run_dir)
        if (artifact.image_size, artifact.crop) == (image_size, crop):
            if (artifact.sidecar.get("ood") or {}).get("method") != "mahalanobis+pixels":
                add_ood_check(run_dir)  # an older bench artifact (Mahalanobis alone): only the check is refitted
            return run_dir
    except ArtifactError:
        pass
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from galaxylib.modeling.export import save_artifact
    from galaxylib.modeling.model import ModelParams, build_model

    keras.utils.set_random_seed(0)
    model = build_model(
        ModelParams(image_size=image_size, weights="none", trainable_layers="all", freeze_batchnorm=False)
    )
    save_artifact(
        model,
        run_dir,
        run_name=run_dir.name,
        dataset={"name": "none", "sha256": "0" * 64},
        split={},
        params={"image_size": image_size},
        synthetic=True,
        crop=crop,
    )
    add_ood_check(run_dir)
    return run_dir


def add_ood_check(run_dir: Path) -> None:
    """Calibration and the union of the Mahalanobis and pixel checks, fitted on a small synthetic
    set, so that the benches time the most a trained artifact's check costs: a (1280 x 256)
    product and the pixel statistics per image whatever the training set (kNN's grows with its bank)."""
    import tempfile

    from galaxylib.data.galaxy10 import open_galaxy10
    from galaxylib.data.split import make_split
    from galaxylib.data.synthetic import write_synthetic_h5
    from galaxylib.inference.ood import UNION
    from galaxylib.pipeline.trust import fit_trust

    with tempfile.TemporaryDirectory(prefix="bench-ood-") as tmp:
        data = open_galaxy10(write_synthetic_h5(Path(tmp) / "synthetic.h5", n_per_class=8, seed=0, show_progress=False))
        split = make_split(data.labels(), data.fingerprint(), 0, (0.5, 0.25, 0.25))
        fit_trust(data, split, run_dir, Path(tmp) / "cache", n_cases=8, methods=(UNION,), show_progress=False)


def without_trust_check(run_dir: Path, out_dir: Path) -> Path:
    """A copy of an artifact as served before calibration and the OOD check existed: the same
    model.tflite (hard-linked where the filesystem allows), a sidecar without ``calibration`` and
    ``ood``. The benches serve it beside the original to time what the check adds."""
    import json
    import shutil

    from galaxylib.artifact import SIDECAR, read_artifact
    from galaxylib.files import atomic_write_json
    from galaxylib.inference.ood import OOD_FILE

    read_artifact(run_dir)  # refuse a broken original before copying it
    sidecar = json.loads((run_dir / SIDECAR).read_text())
    sidecar.pop("calibration", None)
    sidecar.pop("ood", None)
    sidecar["files"].pop(OOD_FILE, None)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for name in sidecar["files"]:
        try:
            os.link(run_dir / name, out_dir / name)
        except OSError:
            shutil.copy2(run_dir / name, out_dir / name)
    atomic_write_json(out_dir / SIDECAR, sidecar)
    read_artifact(out_dir)
    return out_dir


def ensure_bench_artifact_in_child(run_dir: Path = BENCH_DIR) -> Path:
    """``ensure_bench_artifact`` in a child process, so that a bench which builds the artifact
    first still times LiteRT in a process that never loaded TensorFlow, as a worker never does."""
    child([str(Path(__file__).resolve()), str(run_dir)])
    return run_dir


def child(args: list[str]) -> None:
    """Run this interpreter on ``args``; its output is shown only when it fails."""
    import subprocess

    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    )
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")


if __name__ == "__main__":
    print(ensure_bench_artifact(Path(sys.argv[1]) if len(sys.argv) > 1 else BENCH_DIR))
