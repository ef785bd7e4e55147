"""Train the quick config with overrides and print its test accuracy: for comparing settings.

Runs the same steps as ./train.sh (galaxylib.pipeline.steps.prepare_data and steps.train) without the
notebooks, evaluates the Keras model on the test split, and prints one JSON line with the
test accuracy, macro-F1, epochs run and the accuracy curves; for an orientation-averaged
model also what the same network scores on one orientation. Keys as in ``train.sh -p``:

    python bench/train_ablation.py base                                    # configs/quick.yaml as is
    python bench/train_ablation.py zero-init-off model.zero_init_residual=false
    python bench/train_ablation.py px48 image_size=48 --dataset synthetic

The model goes to /tmp/galaxy-ablation/<name>; nothing is written under models/ or reports/.
With a wall-clock budget (cosine_budget), run one at a time on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--config", default=str(REPO / "configs" / "quick.yaml"))
    parser.add_argument("--dataset", default="synthetic")
    args = parser.parse_args()

    from galaxylib.config import CACHE_DIR, DATA_DIR
    from galaxylib.data.galaxy10 import resized_cache
    from galaxylib.evaluation.metrics import evaluate
    from galaxylib.modeling.orientation import inner_network
    from galaxylib.modeling.training import predict_probabilities
    from galaxylib.pipeline import steps
    from galaxylib.pipeline.run_config import load_config, parse_value

    overrides = {"dataset": args.dataset}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"{item!r} is not KEY=VALUE")
        overrides[key] = parse_value(value)
    config = load_config(args.config, overrides)
    data, split = steps.prepare_data(config, DATA_DIR, CACHE_DIR, show_progress=False)
    started = time.monotonic()
    result = steps.train(
        config,
        data,
        split,
        run_name=args.name,
        model_dir=Path("/tmp/galaxy-ablation") / args.name,
        cache_dir=CACHE_DIR,
        show_progress=False,
    )
    train_seconds = time.monotonic() - started
    images = resized_cache(data, int(config["image_size"]), CACHE_DIR, crop=float(config["crop"]), show_progress=False)
    labels = data.labels()
    names = data.class_names
    test = evaluate(labels[split.test], predict_probabilities(result["model"], images, split.test), names)
    history = result["history"]
    extra = {}
    network = inner_network(result["model"])
    if network is not None:  # what the same weights score without averaging the 8 orientations
        for part in ("val", "test"):
            rows = getattr(split, part)
            extra[f"{part}_accuracy_one_orientation"] = round(
                evaluate(labels[rows], predict_probabilities(network, images, rows), names)["accuracy"], 4
            )
    print(
        json.dumps(
            {
                "name": args.name,
                "overrides": overrides,
                "test_accuracy": round(test["accuracy"], 4),
                "test_macro_f1": round(test["macro_f1"], 4),
                "val_accuracy": round(result["val"]["accuracy"], 4),
                **extra,
                "epochs": len(history["loss"]),
                "train_seconds": round(train_seconds),
                "accuracy": [round(x, 3) for x in history["accuracy"]],
                "val_accuracy_curve": [round(x, 3) for x in history["val_accuracy"]],
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
