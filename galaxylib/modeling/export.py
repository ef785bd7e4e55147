"""The one artifact format, write side: save a Keras model as model.keras + model.tflite + model.json.

TensorFlow lives here; ``galaxylib.artifact`` reads the result without it.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from galaxylib.artifact import FORMAT_VERSION, KERAS_FILE, SIDECAR, TFLITE_FILE, Artifact, ArtifactError, read_artifact
from galaxylib.classes import CLASS_NAMES
from galaxylib.config import git_commit
from galaxylib.files import atomic_write_json, sha256_file
from galaxylib.modeling.layer_names import features_layer
from galaxylib.preprocessing import preprocessing_contract


def with_features_output(model):
    """The classifier with a second output: its pooled backbone features (orientation-averaged
    like the answer), which the out-of-distribution check scores. Same layers, same weights;
    the features are computed anyway, so the second output costs nothing at inference.

    None for a model with no features layer (``avg_pool`` or ``morphology``), or a bare
    backbone that ends there.
    """
    import keras

    from galaxylib.modeling.orientation import inner_network, with_orientation_average

    network = inner_network(model) or model
    try:
        name = features_layer(network)
    except ValueError:
        return None
    if network.layers[-1].name == name:
        return None  # a bare backbone: its one output is the features
    pooled = network.get_layer(name).output
    both = keras.Model(network.input, [network.output, pooled], name="classifier_with_features")
    if network is model:
        return both
    return with_orientation_average(both, output_names=("orientation_mean", "features_mean"))


def export_tflite(model, path: Path, features: bool = True) -> Path:
    """TFLite with a dynamic batch dimension, so the server can run a batch in one call.

    With ``features`` (and a classifier), a second output holds the pooled features for the
    out-of-distribution check (``with_features_output``). The inference function is traced
    once and its variables frozen into constants before conversion: about a third of the time
    ``from_keras_model`` takes, with the same outputs (bench/bench_tflite_export.py). A
    concrete function converted unfrozen keeps READ_VARIABLE ops that LiteRT runs as NaN.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    size = int(model.input_shape[1])
    scoring = with_features_output(model) if features else None
    inference = tf.function(lambda images: (scoring or model)(images, training=False))
    concrete = inference.get_concrete_function(tf.TensorSpec([None, size, size, 3], tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([convert_variables_to_constants_v2(concrete)])
    path.write_bytes(converter.convert())
    return path


def save_artifact(
    model,
    run_dir: str | os.PathLike,
    *,
    run_name: str,
    class_names: Sequence[str] = CLASS_NAMES,
    dataset: dict[str, Any],
    split: dict[str, Any],
    params: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    synthetic: bool = False,
    crop: float = 1.0,
    architecture: str = "EfficientNetB0 transfer learning",
) -> Artifact:
    """Write the three files into a temp folder, then move it into place whole."""
    n_outputs = int(model.output_shape[-1])
    if n_outputs != len(class_names):
        raise ArtifactError(f"the model has {n_outputs} outputs but {len(class_names)} class names were given")
    run_dir = Path(run_dir)
    tmp = run_dir.with_name(run_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save(tmp / KERAS_FILE)
    export_tflite(model, tmp / TFLITE_FILE)
    image_size = int(model.input_shape[1])
    files = {name: sha256_file(tmp / name) for name in (KERAS_FILE, TFLITE_FILE)}
    sidecar = {
        "format_version": FORMAT_VERSION,
        "model_version": f"{run_name}-{files[TFLITE_FILE][:8]}",
        "run_name": run_name,
        "architecture": architecture,
        "class_names": list(class_names),
        "image_size": image_size,
        "preprocessing": preprocessing_contract(image_size, crop),
        "synthetic": bool(synthetic),
        "dataset": dataset,
        "split": split,
        "params": params,
        "metrics": metrics or {},
        "git_commit": git_commit(),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "files": files,
    }
    atomic_write_json(tmp / SIDECAR, sidecar)
    try:  # what every reader will check, checked before it replaces anything in models/
        read_artifact(tmp, verify_hashes=False)
    except ArtifactError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if run_dir.exists():
        shutil.rmtree(run_dir)
    os.replace(tmp, run_dir)
    return Artifact(run_dir, sidecar)
