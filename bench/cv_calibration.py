"""How well calibrated is the real-galaxy recipe, on more galaxies than a test split holds?

Usage: .venv/bin/python bench/cv_calibration.py [--repeats 2]

The GZ1 test split has 503 galaxies: on that many, even a perfectly calibrated model measures an
ECE of ~0.04 (``ece_noise_floor``), so the test split cannot show an ECE of 0.03. This bench pools
out-of-fold predictions over the 2,845 train + validation galaxies of ../shared/gz1_coarse (the
test rows are never touched): 5 folds; in each, the rest is split as ``./train.sh`` splits
(stratified, validation 502 / 2,845 of it), the configs/finetune-cpu.yaml head is fitted on the
inner train part with its best epoch chosen on the inner validation part, and the calibration is
fitted there as ``fit_trust`` fits it (``fit_calibration``); then the held-out fold is predicted.
It prints, over all pooled galaxies, the ECE and NLL of the model's own answer, of temperature
alone, and of the calibration ``fit_calibration`` chose, each with its noise floor; and per
reported class, the mean confidence beside the precision. One JSON line per repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=str(REPO.parent / "shared" / "gz1_coarse"))
    parser.add_argument("--label-column", default="coarse")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from sklearn.model_selection import StratifiedKFold, train_test_split

    from galaxylib.config import CACHE_DIR, DATA_DIR
    from galaxylib.data.galaxy10 import resized_cache
    from galaxylib.evaluation.metrics import ece_noise_floor, expected_calibration_error
    from galaxylib.fitting.calibration_fit import fit_calibration, fit_temperature, negative_log_likelihood
    from galaxylib.inference.calibration import apply_calibration
    from galaxylib.modeling.head import feature_views, fit_head, view_features
    from galaxylib.modeling.model import ModelParams, build_head, build_model
    from galaxylib.modeling.train_modes import features_cache_file
    from galaxylib.modeling.training import TrainParams
    from galaxylib.pipeline import steps
    from galaxylib.pipeline.run_config import load_config

    config = load_config(
        REPO / "configs" / "finetune-cpu.yaml", {"dataset": args.dataset, "data.label_column": args.label_column}
    )
    data, split = steps.prepare_data(config, DATA_DIR, CACHE_DIR, show_progress=False)
    labels = data.labels()
    names = data.class_names
    model_params = ModelParams.from_dict(config["model"])
    train_params = TrainParams.from_dict({**config["train"], "seed": config["seed"]})
    start, size, crop = model_params.weights, model_params.image_size, float(config["crop"])
    images = resized_cache(data, size, CACHE_DIR, crop=crop)
    x = view_features(
        build_model(model_params, len(names), CACHE_DIR / "weights"),
        images,
        cache_file=features_cache_file(CACHE_DIR, data.fingerprint(), start, size, crop),
        views=feature_views(start),
    )
    pool = np.concatenate([split.train, split.val])
    val_share = len(split.val) / len(pool)

    def predict(head, rows: np.ndarray) -> np.ndarray:
        return np.mean([np.asarray(head(x[v, rows], training=False)) for v in range(x.shape[0])], axis=0)

    def summary(y: np.ndarray, probs: np.ndarray, decisions: np.ndarray) -> dict:
        floor = ece_noise_floor(probs, decisions=decisions, draws=200)
        return {
            "ece": round(expected_calibration_error(y, probs, decisions=decisions)[0], 4),
            "ece_noise_floor": round(floor["median"], 4),
            "nll": round(negative_log_likelihood(probs, y), 4),
        }

    for repeat in range(args.repeats):
        started = time.monotonic()
        raw = np.zeros((len(labels), len(names)))
        alone = np.zeros_like(raw)
        chosen = np.zeros_like(raw)
        methods = []
        for fold_train, fold_test in StratifiedKFold(5, shuffle=True, random_state=repeat).split(pool, labels[pool]):
            outer = pool[fold_train]
            inner_train, inner_val = train_test_split(
                outer, test_size=val_share, stratify=labels[outer], random_state=repeat
            )
            head = build_head(model_params, x.shape[-1], len(names))
            fit_head(head, x, labels, inner_train, inner_val, train_params, len(names))
            val_raw, held = predict(head, inner_val), pool[fold_test]
            held_raw = predict(head, held)
            fitted = fit_calibration(val_raw, labels[inner_val], seed=repeat)
            methods.append(fitted["method"])
            raw[held] = held_raw
            alone[held] = apply_calibration(held_raw, fit_temperature(val_raw, labels[inner_val]))
            chosen[held] = apply_calibration(held_raw, fitted["temperature"], fitted["bias"])
        y, decisions = labels[pool], raw[pool].argmax(axis=1)  # calibration never changes the reported class
        per_class = {}
        for c, name in enumerate(names):
            called = decisions == c
            per_class[name] = {
                "called": int(called.sum()),
                "precision": round(float((y[called] == c).mean()), 3) if called.any() else None,
                "confidence_temperature": round(float(alone[pool][called, c].mean()), 3) if called.any() else None,
                "confidence_chosen": round(float(chosen[pool][called, c].mean()), 3) if called.any() else None,
            }
        print(
            json.dumps(
                {
                    "repeat": repeat,
                    "galaxies": int(len(pool)),
                    "methods": methods,
                    "model_answer": summary(y, raw[pool], decisions),
                    "temperature": summary(y, alone[pool], decisions),  # at the validation-NLL optimum
                    "chosen": summary(y, chosen[pool], decisions),
                    "per_reported_class": per_class,
                    "minutes": round((time.monotonic() - started) / 60, 2),
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
