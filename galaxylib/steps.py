"""The pipeline's steps as functions: data in, results out. Notebooks call these."""
from __future__ import annotations

import csv
import io
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from galaxylib.classes import CLASS_NAMES
from galaxylib.config import DATA_DIR, GZ1_DIR
from galaxylib.dataset import Galaxy10File, resized_cache, resolve_dataset
from galaxylib.split import Split, load_split, make_split, save_split


def prepare_data(config: dict, show_progress: bool = True) -> tuple[Galaxy10File, Split, Path]:
    """Resolve the dataset and load (or make and save) its split."""
    data = resolve_dataset(config["dataset"], workdir=DATA_DIR, seed=int(config["seed"]),
                           synthetic_per_class=int(config["synthetic_per_class"]),
                           show_progress=show_progress)
    sha = data.fingerprint()
    split_path = DATA_DIR / "splits" / f"{sha[:16]}_seed{config['seed']}.json"
    fractions = tuple(float(f) for f in config["split_fractions"])
    if split_path.is_file():
        split = load_split(split_path, sha)
        if split.fractions != fractions:
            split = make_split(data.labels(), sha, int(config["seed"]), fractions)
            save_split(split, split_path)
    else:
        split = make_split(data.labels(), sha, int(config["seed"]), fractions)
        save_split(split, split_path)
    return data, split, split_path


def split_table(labels: np.ndarray, split: Split) -> list[dict[str, Any]]:
    """Per-class counts in each part: shows the stratification."""
    rows = []
    for i, name in enumerate(CLASS_NAMES):
        row = {"class": f"{i} {name}"}
        for part in ("train", "val", "test"):
            row[part] = int((labels[getattr(split, part)] == i).sum())
        rows.append(row)
    return rows


def train(config: dict, data: Galaxy10File, split: Split, *, run_name: str, model_dir: Path,
          show_progress: bool = True, on_epoch=None) -> dict[str, Any]:
    """Build, fit and save the artifact; returns history and validation metrics."""
    import keras

    from galaxylib.artifact import save_artifact
    from galaxylib.metrics import evaluate
    from galaxylib.model import ModelParams, build_model
    from galaxylib.orientation import with_orientation_average
    from galaxylib.training import TrainParams, predict_probabilities, train_model

    keras.utils.set_random_seed(int(config["seed"]))
    model_params = ModelParams.from_dict({**config["model"], "image_size": config["image_size"]})
    train_params = TrainParams.from_dict({**config["train"], "seed": config["seed"]})
    crop = float(config["crop"])
    images = resized_cache(data, model_params.image_size, show_progress=show_progress, crop=crop)
    labels = data.labels()
    model = build_model(model_params)
    history = train_model(model, images, labels, split, train_params, on_epoch=on_epoch)
    if model_params.average_orientations:
        model = with_orientation_average(model)
    val_probs = predict_probabilities(model, images, split.val)
    val = evaluate(labels[split.val], val_probs)
    artifact = save_artifact(
        model, model_dir, run_name=run_name,
        dataset={"spec": str(config["dataset"]), "path": str(data.path), "sha256": data.fingerprint(),
                 "n_images": data.n_images},
        split={"seed": split.seed, **split.sizes(), "fractions": list(split.fractions)},
        params={"model": asdict(model_params), "train": asdict(train_params)},
        metrics={"val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"],
                 "epochs_run": len(history.get("loss", []))},
        synthetic=data.synthetic, crop=crop)
    return {"history": history, "val": val, "artifact": artifact, "model": model,
            "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
            "total_params": int(model.count_params())}


def predict_split(predictor, data: Galaxy10File, indices: np.ndarray, batch_size: int = 64,
                  show_progress: bool = False) -> np.ndarray:
    """Served-model (TFLite) probabilities for dataset rows, through the one preprocessing path."""
    from tqdm import tqdm

    images = resized_cache(data, predictor.image_size, show_progress=show_progress, crop=predictor.crop)
    out = []
    for start in tqdm(range(0, len(indices), batch_size), desc="Classifying", disable=not show_progress):
        batch = indices[start:start + batch_size]
        out.append(predictor.predict_arrays(images[batch].astype(np.float32)))
    return np.concatenate(out) if out else np.zeros((0, len(CLASS_NAMES)), np.float32)


def gz1_transfer(predictor, gz1_dir: Path = GZ1_DIR, max_images: int = 0, seed: int = 0,
                 show_progress: bool = True) -> dict[str, Any] | None:
    """Fold the ten classes to GZ1's four and score real SDSS galaxies (None if absent)."""
    from tqdm import tqdm

    from galaxylib.metrics import coarse_transfer

    labels_csv = gz1_dir / "labels.csv"
    if not labels_csv.is_file():
        return None
    with open(labels_csv, newline="") as fh:
        rows = [(r["filename"], r["coarse"]) for r in csv.DictReader(fh)]
    if max_images and len(rows) > max_images:
        pick = np.random.default_rng(seed).choice(len(rows), max_images, replace=False)
        rows = [rows[i] for i in sorted(pick)]
    probs = []
    for start in tqdm(range(0, len(rows), 64), desc="GZ1 galaxies", disable=not show_progress):
        chunk = rows[start:start + 64]
        batch = np.stack([predictor.preprocess(gz1_dir / "images" / name) for name, _ in chunk])
        probs.append(predictor.predict_arrays(batch))
    result = coarse_transfer([c for _, c in rows], np.concatenate(probs))
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
    return {"file": path.name, "shape": list(a.shape), "dtype": str(a.dtype),
            "min": float(a.min()), "max": float(a.max()), "identical": bool(same)}


def orientation_agreement(predictor, images: np.ndarray) -> dict[str, Any]:
    """How the served model's answers change over the 8 rotations and flips of the same inputs."""
    from galaxylib.orientation import VIEWS, orient

    probs = np.stack([predictor.predict_arrays(orient(images, view)) for view in VIEWS])
    classes = probs.argmax(axis=2)
    return {"n": int(len(images)), "views": len(VIEWS),
            "max_abs_diff": float(np.abs(probs - probs[0]).max()),
            "same_class_in_every_view": float((classes == classes[0]).all(axis=0).mean())}


def keras_tflite_agreement(model_dir: Path, images: np.ndarray) -> dict[str, Any]:
    """Max |p_keras - p_tflite| and argmax agreement on the same inputs."""
    from galaxylib.artifact import load_keras_model, read_artifact
    from galaxylib.predictor import Predictor

    artifact = read_artifact(model_dir, need_keras=True)
    model = load_keras_model(artifact)
    keras_probs = np.asarray(model.predict(images, verbose=0, batch_size=32))
    tflite_probs = Predictor(model_dir).predict_arrays(images)
    return {"n": int(len(images)),
            "max_abs_diff": float(np.abs(keras_probs - tflite_probs).max()),
            "argmax_agreement": float((keras_probs.argmax(1) == tflite_probs.argmax(1)).mean()),
            "keras": keras_probs, "tflite": tflite_probs}
