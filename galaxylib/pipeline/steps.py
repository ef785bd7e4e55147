"""The pipeline's steps as functions: data and folders in, results out. Notebooks call these.

No step writes to a global folder: the data folder, the cache and the model folder are
arguments (``galaxylib.pipeline.run_folder`` supplies them for a train.sh run).
"""

from __future__ import annotations

import io
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from galaxylib.data.galaxy10 import Galaxy10File, resized_cache
from galaxylib.data.resolve import resolve_dataset
from galaxylib.data.split import Split, make_split


def prepare_data(
    config: dict, data_dir: Path, cache_dir: Path, show_progress: bool = True
) -> tuple[Galaxy10File, Split]:
    """Resolve the dataset into ``data_dir`` and make its seeded, stratified split. A labelled
    folder or catalogue is decoded straight into its model-size cache in ``cache_dir``."""
    data = resolve_dataset(
        config["dataset"],
        workdir=data_dir,
        cache_dir=cache_dir,
        image_size=int(config["image_size"]),
        crop=float(config["crop"]),
        seed=int(config["seed"]),
        synthetic_per_class=int(config["synthetic_per_class"]),
        show_progress=show_progress,
        label_column=config["data"]["label_column"],
        max_unreadable=int(config["data"].get("max_unreadable", 0)),
    )
    fractions = tuple(float(f) for f in config["split_fractions"])
    split = make_split(data.labels(), data.fingerprint(), int(config["seed"]), fractions, class_names=data.class_names)
    return data, split


def train(
    config: dict,
    data: Galaxy10File,
    split: Split,
    *,
    run_name: str,
    model_dir: Path,
    cache_dir: Path,
    show_progress: bool = True,
    on_epoch=None,
) -> dict[str, Any]:
    """Fit the classifier (``train.mode``), save the artifact, then fit its calibration and OOD
    check on the served model (``trust.fit_trust``)."""
    from galaxylib.artifact import publish_artifact, staging_dir, update_metrics
    from galaxylib.evaluation.metrics import evaluate
    from galaxylib.modeling.export import save_artifact
    from galaxylib.pipeline.trust import fit_trust

    fitted = _fit(config, data, split, cache_dir, show_progress, on_epoch)
    model_params, train_params = training_params(config)
    model, history, labels, crop = fitted.model, fitted.history, data.labels(), float(config["crop"])
    # Built whole in models/<run>.partial, then renamed into place: a run that stops anywhere
    # before the end leaves no models/<run> for predict.sh, the API or the dashboard to serve.
    staging = staging_dir(model_dir)
    shutil.rmtree(staging, ignore_errors=True)
    save_artifact(
        model,
        staging,
        run_name=run_name,
        class_names=data.class_names,
        dataset={
            "spec": str(config["dataset"]),
            "path": str(data.path),
            "sha256": data.fingerprint(),
            "n_images": data.n_images,
        },
        split={"seed": split.seed, **split.sizes(), "fractions": list(split.fractions)},
        params={"model": asdict(model_params), "train": asdict(train_params), "start": fitted.start},
        metrics={"epochs_run": len(history.get("loss", [])), "strategy": fitted.strategy, "replicas": fitted.replicas},
        synthetic=data.synthetic,
        crop=crop,
        architecture=fitted.architecture,
    )
    trust = fit_trust(
        data,
        split,
        staging,
        cache_dir,
        seed=int(config["seed"]),
        train_features=fitted.train_features,
        feature_rows=fitted.feature_rows,
        n_cases=int(config["evaluate"].get("ood_cases", 40)),
        show_progress=show_progress,
    )
    val = evaluate(
        labels[split.val],
        trust.pop("val_probs"),
        data.class_names,  # the served model, calibrated
        decisions=trust.pop("val_decisions"),
    )
    update_metrics(
        staging,
        {
            "val_accuracy": val["accuracy"],
            "val_macro_f1": val["macro_f1"],
            "val_balanced_accuracy": val["balanced_accuracy"],
            "val_ece": val["ece"],
        },
    )
    artifact = publish_artifact(staging, model_dir)
    return {
        "history": history,
        "val": val,
        "artifact": artifact,
        "model": model,
        "trust": trust,
        "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "total_params": int(model.count_params()),
        "placement": {"strategy": fitted.strategy, "replicas": fitted.replicas},
    }


def training_params(config: dict):
    """The run config's model and train sections as ``ModelParams`` and ``TrainParams``."""
    from galaxylib.modeling.model import ModelParams
    from galaxylib.modeling.training import TrainParams

    model_params = ModelParams.from_dict({**config["model"], "image_size": config["image_size"]})
    return model_params, TrainParams.from_dict({**config["train"], "seed": config["seed"]})


def check_training(config: dict) -> None:
    """Refuse a mode, start or strategy that cannot train, before any work."""
    from galaxylib.modeling.train_modes import check_mode

    check_mode(*training_params(config))


def _fit(config: dict, data: Galaxy10File, split: Split, cache_dir: Path, show_progress: bool, on_epoch):
    from galaxylib.modeling.train_modes import check_mode, fit_classifier

    model_params, train_params = training_params(config)
    check_mode(model_params, train_params)  # before the resized cache is made
    crop = float(config["crop"])
    images = resized_cache(data, model_params.image_size, cache_dir, show_progress=show_progress, crop=crop)
    return fit_classifier(
        model_params,
        train_params,
        images,
        data.labels(),
        split,
        len(data.class_names),
        cache_dir=cache_dir,
        dataset_key=data.fingerprint(),
        crop=crop,
        show_progress=show_progress,
        on_epoch=on_epoch,
    )


def train_as_worker(config: dict, data: Galaxy10File, split: Split, *, cache_dir: Path) -> dict[str, Any]:
    """A non-chief worker of a multi-worker run: trains in step with the others and writes nothing
    (the chief writes the artifact, the reports and MLflow)."""
    fitted = _fit(config, data, split, cache_dir, show_progress=False, on_epoch=None)
    return {"history": fitted.history, "strategy": fitted.strategy, "replicas": fitted.replicas}


def test_headline(
    results: dict[str, Any], trust: dict[str, Any], gz1: dict[str, Any] | None, *, model_version: str, synthetic: bool
) -> dict[str, Any]:
    """The test split's headline figures (``evaluate`` on the calibrated answers, ``judge_trust``,
    and the GZ1 transfer check when it ran): what metrics.json, the artifact and MLflow record."""
    calibration = trust["calibration"]
    headline = {
        "test_accuracy": results["accuracy"],
        "test_macro_f1": results["macro_f1"],
        "test_balanced_accuracy": results["balanced_accuracy"],
        "test_ece": results["ece"],
        "test_n": results["n"],
        "model_version": model_version,
        "synthetic": synthetic,
        "temperature": trust["temperature"],
        "calibration_bias": trust["bias"],
        "test_ece_uncalibrated": calibration["ece_before"],
        "test_ece_noise_floor": calibration["ece_noise_floor"]["median"],
        "test_nll": calibration["nll_after"],
        "test_nll_uncalibrated": calibration["nll_before"],
    }
    if trust["ood"] is not None:
        ood = trust["ood"]
        headline.update(
            ood_method=ood["method"],
            ood_far_auroc=ood["far_ood_auroc"],
            ood_far_flagged_fraction=ood["far_ood_flagged_fraction"],
            ood_test_flagged_fraction=ood["test_flagged_fraction"],
        )
    if gz1 is not None:
        headline.update(gz1_coarse_balanced_accuracy=gz1["balanced_accuracy"], gz1_n=gz1["n"])
    return headline


def record_test_results(
    run, headline: dict[str, Any], results: dict[str, Any], trust: dict[str, Any], class_names
) -> None:
    """The headline and the per-class results into the run's metrics.json; the test, OOD and GZ1
    figures into the artifact's model.json; the headline and figures to the run's MLflow run."""
    from galaxylib.artifact import update_metrics
    from galaxylib.pipeline import tracking

    run.update_metrics(
        **headline,
        class_names=list(class_names),
        per_class=results["per_class"],
        confusion_matrix=results["confusion_matrix"],
        ood_cases=None if trust["ood"] is None else trust["ood"]["cases"],
    )
    update_metrics(run.model, {k: v for k, v in headline.items() if k.startswith(("test_", "gz1_", "ood_"))})
    if run.metrics().get("mlflow_run_id"):
        with tracking.mlflow_run(run.run_name, {}):
            tracking.log_metrics(headline)
            tracking.log_artifacts(run.figures, "figures")


def predict_split(
    predictor,
    data: Galaxy10File,
    indices: np.ndarray,
    cache_dir: Path,
    batch_size: int = 64,
    show_progress: bool = False,
) -> np.ndarray:
    """Served-model (TFLite) probabilities for dataset rows, through the one preprocessing path."""
    from tqdm import tqdm

    images = resized_cache(data, predictor.image_size, cache_dir, show_progress=show_progress, crop=predictor.crop)
    out = []
    for start in tqdm(range(0, len(indices), batch_size), desc="Classifying", disable=not show_progress):
        batch = indices[start : start + batch_size]
        out.append(predictor.predict_arrays(images[batch].astype(np.float32)))
    return np.concatenate(out) if out else np.zeros((0, len(predictor.class_names)), np.float32)


def classify_folder(
    predictor, folder: Path, label_column: str = "label", max_images: int = 0, seed: int = 0, show_progress: bool = True
):
    """A labelled folder through the served model: (its listing, the chosen indices, probabilities)."""
    from tqdm import tqdm

    from galaxylib.data.labels import read_labelled_folder
    from galaxylib.inference.classify import ImageInput, classify

    listing = read_labelled_folder(folder, label_column)
    chosen = np.arange(len(listing))
    if max_images and len(chosen) > max_images:
        chosen = np.sort(np.random.default_rng(seed).choice(len(chosen), max_images, replace=False))
    probs = []
    for start in tqdm(range(0, len(chosen), 64), desc=f"Classifying {folder.name}", disable=not show_progress):
        items = [ImageInput.from_path(listing.paths[i]) for i in chosen[start : start + 64]]
        for out in classify(predictor, items):
            if not out.ok:
                raise out.error
            probs.append([out.prediction.probabilities[n] for n in predictor.class_names])
    return listing, chosen, np.asarray(probs, dtype=np.float64).reshape(len(chosen), len(predictor.class_names))


def gz1_transfer(
    predictor, gz1_dir: Path, max_images: int = 0, seed: int = 0, show_progress: bool = True
) -> dict[str, Any] | None:
    """Fold a Galaxy10 model's ten classes to GZ1's four and score real SDSS galaxies (None if absent)."""
    from galaxylib.classes import CLASS_NAMES
    from galaxylib.evaluation.metrics import coarse_transfer

    if not (gz1_dir / "labels.csv").is_file() or tuple(predictor.class_names) != CLASS_NAMES:
        return None
    listing, chosen, probs = classify_folder(predictor, gz1_dir, "coarse", max_images, seed, show_progress)
    # folded before any class bias: the bias carries Galaxy10's class frequencies, not the decision's
    result = coarse_transfer(
        [listing.class_names[listing.labels[i]] for i in chosen], predictor.trust.without_bias(probs)
    )
    result["source"] = str(gz1_dir)
    return result


def preprocessing_entry_points_agree(path: Path, image_size: int, crop: float = 1.0) -> dict[str, Any]:
    """The same file through bytes, path and stream gives one tensor; so does its h5-style array."""
    from PIL import Image

    from galaxylib.preprocessing import decode_image, load_image, preprocess_image

    raw = path.read_bytes()
    a = load_image(path, image_size, crop)
    b = load_image(raw, image_size, crop)
    c = load_image(io.BytesIO(raw), image_size, crop)
    array = np.asarray(decode_image(raw))  # what a Galaxy10 h5 row holds: uint8 (H, W, 3)
    d = preprocess_image(array, image_size, crop)
    png = io.BytesIO()
    Image.fromarray(array).save(png, format="PNG")
    e = load_image(png.getvalue(), image_size, crop)
    same = all(np.array_equal(a, x) for x in (b, c, d, e))
    return {
        "file": path.name,
        "shape": list(a.shape),
        "dtype": str(a.dtype),
        "min": float(a.min()),
        "max": float(a.max()),
        "identical": bool(same),
    }


def orientation_agreement(predictor, images: np.ndarray) -> dict[str, Any]:
    """How the served model's answers change over the 8 rotations and flips of the same inputs."""
    from galaxylib.modeling.orientation import VIEWS, orient

    probs = np.stack([predictor.predict_arrays(orient(images, view)) for view in VIEWS])
    classes = np.stack([predictor.trust.decide(p) for p in probs])
    return {
        "n": int(len(images)),
        "views": len(VIEWS),
        "max_abs_diff": float(np.abs(probs - probs[0]).max()),
        "same_class_in_every_view": float((classes == classes[0]).all(axis=0).mean()),
    }


def keras_tflite_agreement(model_dir: Path, images: np.ndarray) -> dict[str, Any]:
    """Max |p_keras - p_tflite| and argmax agreement on the same inputs."""
    from galaxylib.artifact import read_artifact
    from galaxylib.inference.predictor import Predictor
    from galaxylib.modeling.loading import load_keras_model

    artifact = read_artifact(model_dir, need_keras=True)
    model = load_keras_model(artifact)
    keras_probs = np.asarray(model.predict(images, verbose=0, batch_size=32))
    tflite_probs = Predictor(model_dir).forward(images)[0]  # before calibration: the Keras model carries none
    return {
        "n": int(len(images)),
        "max_abs_diff": float(np.abs(keras_probs - tflite_probs).max()),
        "argmax_agreement": float((keras_probs.argmax(1) == tflite_probs.argmax(1)).mean()),
        "keras": keras_probs,
        "tflite": tflite_probs,
    }
