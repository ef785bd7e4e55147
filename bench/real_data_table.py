"""The real-data table of docs/training.md: each start x mode on ../shared/gz1_coarse, on validation only.

Usage: .venv/bin/python bench/real_data_table.py [ROW ...] [--synthetic-run models/<run>] [--set KEY=VALUE ...]

Rows (default: all that apply): morphology-head lite0-head lite0-finetune lite1-head lite1-finetune lite2-head
lite2-finetune synthetic-head synthetic-finetune scratch-head scratch-full. Every row starts from
configs/finetune-cpu.yaml on the same seeded 70/15/15 split; a row only changes the start and the
mode (and the image size a previous run was trained at). It prints one JSON line per row:
validation balanced accuracy, macro-F1, per-class recall and minutes. The test split is not scored.
Measure the host beside it: bench/bench_train_step.py.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The CNN starts keep the size and head recipe chosen for them (224 px, Dense 256, Dropout 0.5, 8 passes over the
# 8 views, tau 1.5, the answer averaged over the views); configs/finetune-cpu.yaml's own head
# (Dense 64, 110 epochs, tau 1.25) is the morphology start's.
CNN_HEAD = {
    "image_size": 224,
    "model.dense_units": [256],
    "model.dropout": 0.5,
    "train.head_epochs": 8,
    "train.head_patience": 25,
    "train.logit_adjust_tau": 1.5,
    "model.average_orientations": True,
}
ROWS = {
    "morphology-head": {"model.weights": "morphology", "train.mode": "head"},
    "lite0-head": {"model.weights": "lite0", "train.mode": "head"},
    "lite0-finetune": {"model.weights": "lite0", "train.mode": "finetune"},
    "lite1-head": {"model.weights": "lite1", "train.mode": "head"},
    "lite1-finetune": {"model.weights": "lite1", "train.mode": "finetune"},
    "lite2-head": {"model.weights": "lite2", "train.mode": "head"},
    "lite2-finetune": {"model.weights": "lite2", "train.mode": "finetune"},
    "scratch-head": {"model.weights": "none", "train.mode": "head"},
    "scratch-full": {
        "model.weights": "none",
        "train.mode": "full",
        "model.trainable_layers": "all",
        "model.freeze_batchnorm": False,
        "model.learning_rate": 2e-3,
        "model.bn_momentum": 0.9,
    },
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "rows", nargs="*", help=f"rows to run (default: all): {', '.join(ROWS)}, synthetic-head, synthetic-finetune"
    )
    parser.add_argument("--dataset", default=str(REPO.parent / "shared" / "gz1_coarse"))
    parser.add_argument("--label-column", default="coarse")
    parser.add_argument("--synthetic-run", default=None, help="a models/<run> trained on the synthetic set")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every row")
    args = parser.parse_args()

    from galaxylib.artifact import read_artifact
    from galaxylib.config import CACHE_DIR, DATA_DIR
    from galaxylib.pipeline import steps
    from galaxylib.pipeline.run_config import load_config, parse_value

    rows = {name: row if name.startswith("morphology") else {**CNN_HEAD, **row} for name, row in ROWS.items()}
    if args.synthetic_run:
        size = read_artifact(args.synthetic_run).image_size
        crop = read_artifact(args.synthetic_run).crop
        for mode in ("head", "finetune"):
            rows[f"synthetic-{mode}"] = {
                **CNN_HEAD,
                "model.weights": str(Path(args.synthetic_run).resolve()),
                "train.mode": mode,
                "image_size": size,
                "crop": crop,
            }
    chosen = args.rows or list(rows)
    unknown = [r for r in chosen if r not in rows]
    if unknown:
        parser.error(f"unknown rows {unknown} (synthetic-* rows need --synthetic-run)")
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"{item!r} is not KEY=VALUE")
        overrides[key] = parse_value(value)
    common = {"dataset": args.dataset, "data.label_column": args.label_column, **overrides}
    for name in chosen:
        config = load_config(REPO / "configs" / "finetune-cpu.yaml", {**common, **rows[name]})
        started = time.monotonic()
        data, split = steps.prepare_data(config, DATA_DIR, CACHE_DIR, show_progress=False)
        with tempfile.TemporaryDirectory() as tmp:
            result = steps.train(
                config,
                data,
                split,
                run_name=name,
                model_dir=Path(tmp) / name,
                cache_dir=CACHE_DIR,
                show_progress=False,
            )
        val = result["val"]
        print(
            json.dumps(
                {
                    "row": name,
                    "image_size": config["image_size"],
                    "n_train": len(split.train),
                    "n_val": len(split.val),
                    "val_balanced_accuracy": round(val["balanced_accuracy"], 4),
                    "val_macro_f1": round(val["macro_f1"], 4),
                    "val_recall": {c["class_name"]: round(c["recall"], 3) for c in val["per_class"]},
                    "epochs": len(result["history"].get("loss", [])),
                    "minutes": round((time.monotonic() - started) / 60, 2),
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
