"""Does a CNN learned from the galaxies add to the morphology measurements? Repeated stratified
5-fold cross-validation on the train + validation rows of ../shared/gz1_coarse (the test rows
are never touched), every feature set scored in the same folds.

Usage: .venv/bin/python bench/cv_fused.py [--repeats 3] [--folds 5] [-p model.scratch.epochs 25 ...]

In each fold, as ``./train.sh --config configs/fused-cpu.yaml`` does on its split: the
scratch-small CNN trains on the fold's training rows (its epoch chosen on a stratified 15 % of
them, never on the held-out fold: ``fit_scratch_cnn``), then heads are fitted with the recipe's
head settings (``fit_head``, no early stopping; configs/fused-cpu.yaml by default) on
- ``morphology``: the 94 measurements alone;
- ``scratch-small``: the CNN's pooled features alone (averaged over the 8 orientations);
- ``morphology+scratch-small``: both side by side, the recipe's model;
and ``cnn-softmax`` is the CNN's own softmax, averaged over the 8 orientations.
With 51 mergers in the pool one merger moves balanced accuracy by ~0.005; the spread of the
per-repeat figures, and the per-repeat difference fused - measurements, show the noise.
Prints one JSON line per repeat, then a summary line per feature set.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    parser.add_argument("--config", default=str(REPO / "configs" / "fused-cpu.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--head-taus",
        default="",
        help="comma-separated logit_adjust_tau values for the heads, each scored in the same folds "
        "(default: the recipe's); the CNN always trains with the recipe's",
    )
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="config override")
    args = parser.parse_args()

    from sklearn.metrics import balanced_accuracy_score, recall_score
    from sklearn.model_selection import StratifiedKFold, train_test_split

    from galaxylib.config import CACHE_DIR, DATA_DIR
    from galaxylib.data.galaxy10 import resized_cache
    from galaxylib.modeling.head import fit_head
    from galaxylib.modeling.model import ModelParams, build_head
    from galaxylib.modeling.morphology import MEASUREMENTS
    from galaxylib.modeling.orientation import with_orientation_average
    from galaxylib.modeling.scratch_cnn import ScratchParams, downsampled, fit_scratch_cnn, fused_backbone
    from galaxylib.modeling.training import TrainParams
    from galaxylib.pipeline import steps
    from galaxylib.pipeline.run_config import load_config, parse_value

    overrides = {
        "dataset": args.dataset,
        "data.label_column": args.label_column,
        **{k: parse_value(v) for k, v in args.p},
    }
    recipe = load_config(Path(args.config), overrides)
    if recipe["model"]["weights"] != "morphology+scratch-small":
        parser.error(f"{args.config} trains {recipe['model']['weights']!r}, not morphology+scratch-small")
    data, split = steps.prepare_data(recipe, DATA_DIR, CACHE_DIR, show_progress=False)
    labels = data.labels()
    size = int(recipe["image_size"])
    images = resized_cache(data, size, CACHE_DIR, crop=float(recipe["crop"]))
    model_params = ModelParams.from_dict(recipe["model"])
    scratch = ScratchParams.from_dict(model_params.scratch)
    train_params = TrainParams.from_dict({**recipe["train"], "seed": recipe["seed"]})
    n_classes = len(data.class_names)
    pool = np.concatenate([split.train, split.val])
    n_morph = len(MEASUREMENTS)
    columns = {
        "morphology": slice(0, n_morph),
        "scratch-small": slice(n_morph, None),
        "morphology+scratch-small": slice(None),
    }
    print(
        json.dumps(
            {
                "pool": len(pool),
                "classes": dict(zip(data.class_names, np.bincount(labels[pool], minlength=n_classes).tolist())),
                "scratch": vars(scratch),
                "head": {k: recipe["model"][k] for k in ("dense_units", "dropout", "feature_norm")},
            }
        ),
        flush=True,
    )

    def predict(model, rows: np.ndarray) -> np.ndarray:
        out = [
            model.predict_on_batch(np.asarray(images[rows[i : i + 256]], np.float32)) for i in range(0, len(rows), 256)
        ]
        return np.concatenate(out)

    taus = [float(t) for t in args.head_taus.split(",") if t.strip()] or [float(train_params.logit_adjust_tau)]

    def set_name(name: str, tau: float) -> str:
        return name if len(taus) == 1 else f"{name} tau={tau:g}"

    names = [set_name(n, t) for t in taus for n in columns] + ["cnn-softmax"]
    results: dict[str, list] = {name: [] for name in names}
    started = time.monotonic()
    for repeat in range(args.repeats):
        probs = {name: np.zeros((len(labels), n_classes)) for name in names}
        folds = StratifiedKFold(args.folds, shuffle=True, random_state=repeat).split(pool, labels[pool])
        for fold, (fold_train, fold_test) in enumerate(folds):
            fold_started = time.monotonic()
            train_rows, test_rows = pool[fold_train], pool[fold_test]
            inner_train, inner_val = train_test_split(
                train_rows, test_size=0.15, stratify=labels[train_rows], random_state=repeat * 100 + fold
            )
            inner = dataclasses.replace(split, train=np.sort(inner_train), val=np.sort(inner_val), test=test_rows)
            fold_params = TrainParams.from_dict({**vars(train_params), "seed": train_params.seed + 100 * repeat + fold})
            cnn = fit_scratch_cnn(size, scratch, fold_params, images, labels, inner, n_classes)
            backbone = fused_backbone(size, ["morphology", "scratch-small"], cnn)
            rows = np.concatenate([train_rows, test_rows])
            features = np.zeros((1, len(labels), backbone.output_shape[-1]), np.float32)
            features[0, rows] = predict(backbone, rows)
            for tau in taus:
                head_params = dataclasses.replace(fold_params, logit_adjust_tau=tau)
                for name, cols in columns.items():
                    x = np.ascontiguousarray(features[..., cols])
                    head = build_head(model_params, x.shape[-1], n_classes)
                    fit_head(head, x, labels, train_rows, None, head_params, n_classes)
                    probs[set_name(name, tau)][test_rows] = head.predict(x[0, test_rows], verbose=0, batch_size=1024)
            averaged = with_orientation_average(cnn.classifier)
            small = downsampled(
                images[test_rows], size // cnn.size, np.zeros((len(test_rows), cnn.size, cnn.size, 3), np.uint8)
            )
            probs["cnn-softmax"][test_rows] = averaged.predict(small.astype(np.float32), verbose=0, batch_size=256)
            print(f"repeat {repeat} fold {fold}: {(time.monotonic() - fold_started) / 60:.1f} min", flush=True)
        y = labels[pool]
        line = {"repeat": repeat}
        for name in names:
            guess = probs[name][pool].argmax(axis=1)
            score = balanced_accuracy_score(y, guess)
            recall = recall_score(y, guess, average=None, labels=range(n_classes))
            results[name].append((score, recall))
            line[name] = round(float(score), 4)
        for tau in taus:
            fused, alone = set_name("morphology+scratch-small", tau), set_name("morphology", tau)
            line[set_name("fused_minus_morphology", tau)] = round(line[fused] - line[alone], 4)
        print(json.dumps(line), flush=True)
    minutes = (time.monotonic() - started) / 60
    for name in names:
        scores = [s for s, _ in results[name]]
        print(
            json.dumps(
                {
                    "features": name,
                    "cv_balanced_accuracy": round(float(np.mean(scores)), 4),
                    "per_repeat": [round(float(s), 4) for s in scores],
                    "cv_recall": dict(
                        zip(data.class_names, np.round(np.mean([r for _, r in results[name]], axis=0), 3).tolist())
                    ),
                    "repeats": args.repeats,
                    "folds": args.folds,
                    "minutes_all_sets": round(minutes, 1),
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
