"""``./predict.sh``: classify files, folders or a Galaxy10 h5; write a CSV; log to the DB.

Usage: python -m galaxylib.predict_cli --model models/<run> INPUT ... [--out predictions.csv]

A broken file gets a CSV line with an ``error`` and no database row; it never
stops the batch. Rows go to the database one transaction per batch.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from galaxylib.artifact import ArtifactError
from galaxylib.preprocessing import ImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
H5_SUFFIXES = {".h5", ".hdf5"}
CSV_FIELDS = ["filename", "predicted_class", "class_index", "confidence", "top1", "top1_p", "top2",
              "top2_p", "top3", "top3_p", "model_version", "prediction_id", "error"]


@dataclass
class Item:
    name: str  # what the CSV and the database call it
    path: Path | None = None
    array: np.ndarray | None = None  # an h5 row


def iter_inputs(inputs: list[Path]) -> Iterator[Item]:
    for src in inputs:
        if src.is_dir():
            for p in sorted(src.rglob("*")):
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                    yield Item(str(p), path=p)
        elif src.suffix.lower() in H5_SUFFIXES and src.is_file():
            from galaxylib.dataset import open_galaxy10

            data = open_galaxy10(src)
            for start, chunk in data.iter_chunks(64):
                for j, img in enumerate(chunk):
                    yield Item(f"{src}[{start + j}]", array=img)
        else:
            yield Item(str(src), path=src)  # a missing or odd file gets its error line


def count_inputs(inputs: list[Path]) -> int | None:
    total = 0
    for src in inputs:
        if src.is_dir():
            total += sum(1 for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif src.suffix.lower() in H5_SUFFIXES and src.is_file():
            import h5py

            try:
                with h5py.File(src, "r") as f:
                    total += int(f["images"].shape[0])
            except (OSError, KeyError):
                total += 1
        else:
            total += 1
    return total


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="predict.sh", description="Classify galaxy cutouts with a trained model.")
    parser.add_argument("--model", required=True, type=Path, help="a models/<run> folder from train.sh")
    parser.add_argument("inputs", nargs="+", type=Path, help="jpg/png files, folders of them, or a Galaxy10 .h5")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"), help="CSV to write (default predictions.csv)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--database-url", default=None, help="overrides DATABASE_URL (default: an SQLite file in data/)")
    parser.add_argument("--no-db", action="store_true", help="do not log predictions to the database")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from galaxylib.predictor import Predictor

    try:
        predictor = Predictor(args.model)
    except (ArtifactError, OSError, ValueError) as exc:
        print(f"predict.sh: cannot load the model: {exc}", file=sys.stderr)
        return 2
    store = None
    if not args.no_db:
        from galaxylib.db import PredictionStore

        try:
            store = PredictionStore(args.database_url)
        except Exception as exc:
            print(f"predict.sh: cannot open the predictions database: {exc}\n"
                  "  (set DATABASE_URL, pass --database-url, or use --no-db)", file=sys.stderr)
            return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(args.out.name + ".tmp")
    n_ok = n_err = 0
    errors: list[str] = []
    with open(tmp_out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        pending: list[tuple[Item, np.ndarray, bytes | None]] = []

        def flush() -> None:
            nonlocal n_ok
            if not pending:
                return
            started = time.perf_counter()
            probs = predictor.predict_arrays(np.stack([x for _, x, _ in pending]))
            per_image_ms = (time.perf_counter() - started) * 1000 / len(pending)
            preds = [predictor.to_prediction(p) for p in probs]
            rows = []
            for (item, _, raw), pred in zip(pending, preds):
                meta = {"model_version": pred.model_version, "source": "predict.sh",
                        "probabilities": pred.probabilities, "latency_ms": round(per_image_ms, 3)}
                if raw is not None:
                    meta.update(sha256=hashlib.sha256(raw).hexdigest(), size_bytes=len(raw))
                rows.append({"filename": item.name, "predicted_class": pred.predicted_class,
                             "confidence": pred.confidence, "metadata": meta})
            records = store.add_many(rows) if store is not None else [None] * len(rows)
            for (item, _, _), pred, rec in zip(pending, preds, records):
                line = {"filename": item.name, "predicted_class": pred.predicted_class,
                        "class_index": pred.class_index, "confidence": f"{pred.confidence:.6f}",
                        "model_version": pred.model_version, "prediction_id": rec.id if rec else "", "error": ""}
                for k, (name, p) in enumerate(pred.top3, start=1):
                    line[f"top{k}"], line[f"top{k}_p"] = name, f"{p:.6f}"
                writer.writerow(line)
            n_ok += len(pending)
            pending.clear()

        for item in tqdm(iter_inputs(args.inputs), total=count_inputs(args.inputs), desc="Classifying",
                         unit="img", file=sys.stderr):
            try:
                if item.array is not None:
                    pending.append((item, predictor.preprocess(item.array), None))
                else:
                    if not item.path.is_file():
                        raise ImageError(f"{item.path}: no such file")
                    raw = item.path.read_bytes()
                    pending.append((item, predictor.preprocess(raw), raw))
            except (ImageError, OSError) as exc:
                message = str(exc)
                writer.writerow({"filename": item.name, "error": message, "model_version": predictor.model_version})
                errors.append(f"{item.name}: {message}")
                n_err += 1
            if len(pending) >= args.batch_size:
                flush()
        flush()
    tmp_out.replace(args.out)
    for line in errors:
        print(f"  skipped {line}", file=sys.stderr)
    where = f"; {n_ok} rows logged to {store.url}" if store is not None else ""
    print(f"Classified {n_ok} image(s), {n_err} could not be read{where}. CSV: {args.out}")
    return 0 if n_ok or not n_err else 1


if __name__ == "__main__":
    sys.exit(main())
