"""Which features should a real-galaxy head read? Repeated 5-fold cross-validation on the
train + validation rows of ../shared/gz1_coarse (the test rows are never touched).

Usage: .venv/bin/python bench/cv_real_heads.py [--repeats 3] [--sets morphology lite0 lite0+morphology]

Feature sets: ``morphology`` (the 94 measurements of galaxylib/modeling/morphology.py, one
view, at configs/finetune-cpu.yaml's size), ``lite0`` (ImageNet EfficientNet-Lite0's pooled
features of the 8 views at 224 px, as head mode
caches them; the first run computes them, ~5 minutes on 2 cores) and ``lite0+morphology`` (both,
side by side). Each set is fitted with its own head recipe, ``galaxylib.modeling.head.fit_head``,
as ``./train.sh`` fits it: the morphology recipe is configs/finetune-cpu.yaml's, the Lite0 one
bench/real_data_table.py's ``CNN_HEAD``. The held-out fold never chooses an epoch. With 51
mergers in the pool a merger moves balanced accuracy by ~0.005, and the spread across repeats
shows the noise. Prints one JSON line per set and head.
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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sets", nargs="*", default=["morphology", "lite0", "lite0+morphology"])
    parser.add_argument(
        "--cnn-size",
        type=int,
        default=224,
        help="image size for the Lite starts (the morphology start uses configs/finetune-cpu.yaml's)",
    )
    args = parser.parse_args()

    from real_data_table import CNN_HEAD
    from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score
    from sklearn.model_selection import StratifiedKFold

    from galaxylib.config import CACHE_DIR, DATA_DIR
    from galaxylib.data.galaxy10 import resized_cache
    from galaxylib.modeling.head import feature_views, fit_head, view_features
    from galaxylib.modeling.model import ModelParams, build_head, build_model
    from galaxylib.modeling.train_modes import features_cache_file
    from galaxylib.modeling.training import TrainParams
    from galaxylib.pipeline import steps
    from galaxylib.pipeline.run_config import load_config

    recipe = load_config(
        REPO / "configs" / "finetune-cpu.yaml", {"dataset": args.dataset, "data.label_column": args.label_column}
    )
    data, split = steps.prepare_data(recipe, DATA_DIR, CACHE_DIR, show_progress=False)
    labels = data.labels()

    def features(start: str) -> np.ndarray:
        size = int(recipe["image_size"]) if start == "morphology" else args.cnn_size
        images = resized_cache(data, size, CACHE_DIR, crop=float(recipe["crop"]))
        params = ModelParams.from_dict({**recipe["model"], "weights": start, "image_size": size})
        cache = features_cache_file(CACHE_DIR, data.fingerprint(), start, size, float(recipe["crop"]))
        return view_features(
            build_model(params, len(data.class_names), CACHE_DIR / "weights"),
            images,
            cache_file=cache,
            views=feature_views(start),
        )

    def head_config(cnn: bool) -> dict:
        overrides = {k: v for k, v in CNN_HEAD.items() if cnn}
        return load_config(REPO / "configs" / "finetune-cpu.yaml", overrides)

    cached: dict[str, np.ndarray] = {}
    pool = np.concatenate([split.train, split.val])
    n_classes = len(data.class_names)
    for name in args.sets:
        parts = []
        for start in name.split("+"):
            if start not in cached:
                cached[start] = features(start)
            parts.append(cached[start])
        views = max(p.shape[0] for p in parts)
        x = np.concatenate([np.repeat(p, views // p.shape[0], axis=0) for p in parts], axis=-1)
        for recipe_name, cnn in (("cnn", True), ("morphology", False)):
            if (name == "morphology" and cnn) or (name == "lite0" and not cnn):
                continue  # each single set with its own recipe; the pair with both
            config = head_config(cnn)
            model_params = ModelParams.from_dict(config["model"])
            train_params = TrainParams.from_dict({**config["train"], "seed": config["seed"]})
            started = time.monotonic()
            scores, recalls, f1s = [], [], []
            for repeat in range(args.repeats):
                probs = np.zeros((len(labels), n_classes))
                folds = StratifiedKFold(5, shuffle=True, random_state=repeat).split(pool, labels[pool])
                for fold_train, fold_test in folds:
                    head = build_head(model_params, x.shape[-1], n_classes)
                    fit_head(head, x, labels, pool[fold_train], None, train_params, n_classes)
                    rows = pool[fold_test]
                    probs[rows] = np.mean(
                        [head.predict(x[v, rows], verbose=0, batch_size=1024) for v in range(x.shape[0])], axis=0
                    )
                y, guess = labels[pool], probs[pool].argmax(axis=1)
                scores.append(balanced_accuracy_score(y, guess))
                f1s.append(f1_score(y, guess, average="macro"))
                recalls.append(recall_score(y, guess, average=None, labels=range(n_classes)))
            print(
                json.dumps(
                    {
                        "features": name,
                        "head": recipe_name,
                        "dims": int(x.shape[-1]),
                        "views": int(x.shape[0]),
                        "pool": int(len(pool)),
                        "repeats": args.repeats,
                        "cv_balanced_accuracy": round(float(np.mean(scores)), 4),
                        "per_repeat": [round(float(s), 4) for s in scores],
                        "cv_macro_f1": round(float(np.mean(f1s)), 4),
                        "cv_recall": dict(zip(data.class_names, np.round(np.mean(recalls, axis=0), 3).tolist())),
                        "minutes": round((time.monotonic() - started) / 60, 2),
                    }
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
