"""Fit and judge the artifact's calibration and out-of-distribution check, on the served model.

``fit_trust`` runs after training, on the served model itself (its TFLite export through the
Predictor): the calibration on the validation split (a temperature, and a class bias where
cross-validation there says it helps), each OOD scorer on train features, the
choice between scorers on validation cutouts against the ``selection`` half of the far-OOD
cases, and the threshold that keeps at least 95 % of in-distribution cutouts in, with 99 %
confidence (``galaxylib.fitting.ood_fit.threshold_for``). The result
joins the artifact (``model.json`` and ``ood.npz``). ``judge_trust`` scores the test split and
the ``evaluation`` cases for the report. Nothing here reads the test split while fitting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from galaxylib.artifact import add_to_artifact
from galaxylib.data.galaxy10 import Galaxy10File, resized_cache
from galaxylib.data.split import Split
from galaxylib.evaluation.metrics import ece_noise_floor, expected_calibration_error
from galaxylib.evaluation.ood_cases import FAR_OOD, far_ood_cases, shifted_cases
from galaxylib.files import atomic_path
from galaxylib.fitting.calibration_fit import fit_calibration, negative_log_likelihood
from galaxylib.fitting.ood_fit import CONFIDENCE, KEEP_FRACTION, auroc, choose_method, fit_scorer, threshold_for
from galaxylib.inference.calibration import apply_calibration, decide
from galaxylib.inference.ood import METHODS, OOD_FILE, UNION, UnionScorer, pixel_statistics
from galaxylib.inference.predictor import Predictor
from galaxylib.preprocessing import preprocess_image


def served_outputs(
    predictor: Predictor,
    inputs: np.ndarray,
    batch_size: int = 64,
    progress: str | None = None,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The served model's raw probabilities and features for model inputs (or for ``rows`` of
    them, read a batch at a time from a cache), in batches."""
    from tqdm import tqdm

    rows = np.arange(len(inputs)) if rows is None else np.asarray(rows)
    probs, features = [], []
    for start in tqdm(range(0, len(rows), batch_size), desc=progress, disable=progress is None):
        p, f = predictor.forward(np.asarray(inputs[rows[start : start + batch_size]], dtype=np.float32))
        probs.append(p)
        features.append(f)
    if not probs:
        return np.zeros((0, len(predictor.class_names))), None
    return np.concatenate(probs), (None if features[0] is None else np.concatenate(features))


def pixels_of(images: np.ndarray, rows: np.ndarray | None = None, batch_size: int = 256) -> np.ndarray:
    """``pixel_statistics`` of cached model-size cutouts (or of model inputs), a batch at a time."""
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    parts = [
        pixel_statistics(np.asarray(images[rows[i : i + batch_size]], dtype=np.float32))
        for i in range(0, len(rows), batch_size)
    ]
    return np.concatenate(parts) if parts else pixel_statistics(np.zeros((0, *images.shape[1:]), np.float32))


def model_inputs(predictor: Predictor, images: np.ndarray) -> np.ndarray:
    """uint8 cutouts through the artifact's own preprocessing contract."""
    return np.stack([preprocess_image(image, predictor.image_size, predictor.crop) for image in images])


def _sample(indices: np.ndarray, most: int, seed: int) -> np.ndarray:
    if most and len(indices) > most:
        return np.sort(np.random.default_rng(seed).choice(indices, most, replace=False))
    return indices


def fit_trust(
    data: Galaxy10File,
    split: Split,
    model_dir: Path,
    cache_dir: Path,
    *,
    seed: int = 0,
    max_train: int = 2000,
    n_cases: int = 40,
    train_features: np.ndarray | None = None,
    feature_rows: np.ndarray | None = None,
    methods: tuple[str, ...] = METHODS,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Fit T, choose and fit the OOD scorer, set its threshold, and store all of it in the artifact.

    ``train_features``: the served model's features of the train rows ``feature_rows`` (all of
    ``split.train`` by default), when the caller has them (head mode's cache); otherwise up to
    ``max_train`` train rows go through the model. ``methods``:
    the scorers to choose between (a bench pins one; ``(UNION,)`` pins the union). Returns the
    report, with the calibrated validation probabilities under ``val_probs`` and the reported
    classes under ``val_decisions``."""
    predictor = Predictor(model_dir, trust=False)  # a refit starts from the model's own answers
    images = resized_cache(data, predictor.image_size, cache_dir, show_progress=show_progress, crop=predictor.crop)
    labels = data.labels()
    bar = "Served model on {}" if show_progress else None
    if train_features is not None:
        train_rows = split.train if feature_rows is None else np.asarray(feature_rows)
    else:
        train_rows = _sample(split.train, max_train, seed)
    val_raw, val_features = served_outputs(predictor, images, rows=split.val, progress=bar and bar.format("validation"))
    y_val = labels[split.val]
    fitted = fit_calibration(val_raw, y_val, seed=seed)
    temperature, bias = fitted["temperature"], fitted["bias"]
    val_probs = apply_calibration(val_raw, temperature, bias)
    val_decisions = decide(val_probs, bias)  # the model's own argmax, as the Predictor reports it
    calibration = {
        **fitted,
        "fitted_on": "validation",
        "n": int(len(y_val)),
        "val_nll_before": negative_log_likelihood(val_raw, y_val),
        "val_nll_after": negative_log_likelihood(val_probs, y_val),
        "val_ece_before": expected_calibration_error(y_val, val_raw)[0],
        "val_ece_after": expected_calibration_error(y_val, val_probs, decisions=val_decisions)[0],
    }
    only_union = tuple(methods) == (UNION,)  # pinned (a bench times what a served image pays for it)
    if UNION in methods:  # the union is built from its parts
        methods = tuple(dict.fromkeys([m for m in methods if m != UNION] + ["mahalanobis", "pixels"]))
    if only_union and val_features is None:
        raise ValueError("the union OOD check needs the model's features output, which this export lacks")
    methods = methods if val_features is not None else tuple(m for m in methods if m in ("max_softmax", "pixels"))
    methods = methods or ("max_softmax",)
    if val_features is None:
        train_features = None
    elif train_features is None:
        _, train_features = served_outputs(predictor, images, rows=train_rows, progress=bar and bar.format("train"))
    cases = far_ood_cases(n_cases, seed, "selection")
    case_inputs = model_inputs(predictor, np.concatenate(list(cases.values())))
    case_raw, case_features = served_outputs(predictor, case_inputs, progress=bar and bar.format("non-galaxy images"))
    train_pixels = val_pixels = case_pixels = None
    if "pixels" in methods:
        train_pixels, val_pixels, case_pixels = (
            pixels_of(images, train_rows),
            pixels_of(images, split.val),
            pixels_of(case_inputs),
        )
    case_probs = apply_calibration(case_raw, temperature, bias)
    selection: dict[str, dict[str, float]] = {}
    scorers = {}

    def judge(method: str, scorer) -> None:
        """Threshold ``scorer`` on validation, then score the selection cases against it."""
        s_in = scorer.score(val_features, val_probs, val_pixels)
        s_out = scorer.score(case_features, case_probs, case_pixels)
        threshold = threshold_for(s_in)
        selection[method] = {"auroc": auroc(s_in, s_out), "flagged_fraction": float((s_out > threshold).mean())}
        scorers[method] = (scorer, threshold, float((s_in <= threshold).mean()))

    for method in methods:
        judge(method, fit_scorer(method, train_features, labels[train_rows], seed=seed, pixels=train_pixels))
    if "mahalanobis" in scorers and "pixels" in scorers:
        # The union gets its own threshold: it keeps 95 % of validation, as each part does.
        judge(
            UNION,
            UnionScorer(
                scorers["mahalanobis"][0],
                scorers["pixels"][0],
                scales=np.array([scorers["mahalanobis"][1], scorers["pixels"][1]]),
            ),
        )
    method = UNION if only_union and UNION in scorers else choose_method(selection)
    scorer, threshold, val_kept = scorers[method]
    arrays = scorer.arrays()
    model_dir = Path(model_dir)
    if arrays:
        with atomic_path(model_dir / OOD_FILE) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    ood = {
        "method": method,
        "threshold": threshold,
        "keep_fraction": KEEP_FRACTION,
        "confidence": CONFIDENCE,
        "val_kept_fraction": val_kept,
        "file": OOD_FILE if arrays else None,
        "features": (
            "pixel_statistics of the model input"
            if method == "pixels"
            else "pooled backbone features, orientation-averaged (model.tflite's second output)"
            + (", and pixel_statistics of the model input" if method == UNION else "")
        ),
        "feature_dim": (
            int(train_pixels.shape[1])
            if method == "pixels"
            else None
            if method == "max_softmax" or train_features is None
            else int(train_features.shape[1])
        ),  # what the score reads
        **({"pixel_statistics_dim": int(train_pixels.shape[1])} if method == UNION else {}),
        "fitted_on": {
            "scorer": f"{len(train_rows)} train cutouts",
            "threshold": "validation",
            "selection": f"validation against {n_cases} each of {', '.join(FAR_OOD)} (selection half)",
        },
        "selection": selection,
    }
    add_to_artifact(
        model_dir,
        {"calibration": calibration, "ood": ood},
        new_files=(OOD_FILE,) if arrays else (),
        removed_files=() if arrays else (OOD_FILE,),
    )  # a refit may drop an older scorer's file
    return {"calibration": calibration, "ood": ood, "val_probs": val_probs, "val_decisions": val_decisions}


def judge_trust(
    predictor: Predictor,
    data: Galaxy10File,
    split: Split,
    cache_dir: Path,
    *,
    seed: int = 0,
    n_cases: int = 40,
    near_ood: dict[str, np.ndarray] | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Calibration before and after on test, and the OOD check on test against every case.

    ``probs`` are the calibrated test probabilities, ``raw_probs`` the model's own, and
    ``decisions`` the reported classes."""
    images = resized_cache(data, predictor.image_size, cache_dir, show_progress=show_progress, crop=predictor.crop)
    y_test = data.labels()[split.test]
    bar = "Served model on {}" if show_progress else None
    raw, features = served_outputs(predictor, images, rows=split.test, progress=bar and bar.format("test"))
    probs = predictor.trust.calibrate(raw)
    decisions = predictor.trust.decide(probs)
    ece_before, bins_before = expected_calibration_error(y_test, raw)
    ece_after, bins_after = expected_calibration_error(y_test, probs, decisions=decisions)
    bias = predictor.trust.bias
    report: dict[str, Any] = {
        "temperature": predictor.trust.temperature,
        "bias": None if bias is None else list(bias),
        "calibration": {
            "ece_before": ece_before,
            "ece_after": ece_after,
            "nll_before": negative_log_likelihood(raw, y_test),
            "nll_after": negative_log_likelihood(probs, y_test),
            "ece_noise_floor": ece_noise_floor(probs, seed=seed, decisions=decisions),
            "reliability_before": bins_before,
            "reliability_after": bins_after,
        },
        "probs": probs,
        "raw_probs": raw,
        "decisions": decisions,
    }
    if not predictor.has_ood:
        report["ood"] = None
        return report
    needs_pixels = predictor.trust.needs_pixels
    scores_in = predictor.trust.ood_scores(features, probs, pixels_of(images, split.test) if needs_pixels else None)
    threshold = predictor.trust.threshold
    rng_rows = _sample(split.test, n_cases, seed)
    cases = {**far_ood_cases(n_cases, seed, "evaluation"), **shifted_cases(data.read_images(rng_rows), seed)}
    cases.update(near_ood or {})
    scores: dict[str, np.ndarray] = {"test": scores_in}
    per_case: dict[str, dict[str, Any]] = {
        "test": {"n": int(len(scores_in)), "auroc": None, "flagged_fraction": float((scores_in > threshold).mean())}
    }
    for name, case in cases.items():
        inputs = model_inputs(predictor, case)
        case_raw, case_features = served_outputs(predictor, inputs, progress=bar and bar.format(name.replace("_", " ")))
        s = predictor.trust.ood_scores(
            case_features, predictor.trust.calibrate(case_raw), pixels_of(inputs) if needs_pixels else None
        )
        scores[name] = s
        per_case[name] = {
            "n": int(len(s)),
            "auroc": auroc(scores_in, s),
            "flagged_fraction": float((s > threshold).mean()),
            "kind": "far" if name in FAR_OOD else ("near" if name in (near_ood or {}) else "shifted"),
        }
    far = np.concatenate([scores[name] for name in FAR_OOD])
    report["ood"] = {
        "method": predictor.trust.scorer.method,
        "threshold": threshold,
        "far_ood_auroc": auroc(scores_in, far),
        "far_ood_flagged_fraction": float((far > threshold).mean()),
        "test_flagged_fraction": per_case["test"]["flagged_fraction"],
        "cases": per_case,
        "scores": scores,
    }
    return report


def near_ood_galaxies(predictor: Predictor, gz1_dir: Path, n: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """For a Galaxy10-class model: ``n`` real SDSS galaxies from ``../shared/gz1_coarse``, another
    survey's cutouts, reported as near-OOD (not required to be flagged). {} when absent."""
    from galaxylib.classes import CLASS_NAMES
    from galaxylib.data.labels import read_labelled_folder
    from galaxylib.preprocessing import decode_image

    if not (gz1_dir / "labels.csv").is_file() or tuple(predictor.class_names) != CLASS_NAMES:
        return {}
    paths = read_labelled_folder(gz1_dir, "coarse").paths
    chosen = _sample(np.arange(len(paths)), n, seed)
    return {"gz1_sdss": [np.asarray(decode_image(paths[i].read_bytes())) for i in chosen]}
