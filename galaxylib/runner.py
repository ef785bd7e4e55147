"""``./train.sh``: run the four notebooks with papermill and collect the report.

Usage: python -m galaxylib.runner [--config FILE] [--dataset D] [--run-name N] [-p KEY VALUE ...]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

from galaxylib import pipeline
from galaxylib.config import NOTEBOOKS_DIR, PROJECT_ROOT

NOTEBOOKS = ("01_prepare_data", "02_train", "03_evaluate", "04_inference_tests")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="train.sh", description="Run prepare -> train -> evaluate -> inference tests as executed notebooks.")
    parser.add_argument("--config", type=Path, default=None, help="YAML config (configs/quick.yaml, configs/production.yaml)")
    parser.add_argument("--dataset", default=None,
                        help="synthetic | real (download Galaxy10 DECaLS) | PATH.h5 | IMAGE_DIR with labels.csv")
    parser.add_argument("--run-name", default=None, help="names reports/<run>/ and models/<run>/")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="override a config value, e.g. -p train.epochs 3 or -p learning_rate 1e-4")
    parser.add_argument("--reports-root", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--models-root", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def export_html(notebook: Path) -> Path:
    from nbconvert import HTMLExporter
    import nbformat

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    out = notebook.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {key: pipeline.parse_value(value) for key, value in args.param}
    if args.dataset:
        overrides["dataset"] = args.dataset
    try:
        config = pipeline.load_config(args.config, overrides)
    except pipeline.ConfigError as exc:
        print(f"train.sh: {exc}", file=sys.stderr)
        return 2
    run_name = args.run_name or dt.datetime.now().strftime("run-%Y%m%d-%H%M%S")
    if not run_name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        print(f"train.sh: run name {run_name!r} may only use letters, digits, '-', '_' and '.'", file=sys.stderr)
        return 2
    paths = pipeline.run_paths(run_name, args.reports_root, args.models_root)
    paths.reports.mkdir(parents=True, exist_ok=True)
    for stale in ("state.json", "metrics.json"):
        (paths.reports / stale).unlink(missing_ok=True)
    config_path = pipeline.write_config(config, paths.config)

    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    params = {"run_name": run_name, "config_path": str(config_path.resolve()),
              "reports_root": str(paths.reports.parent.resolve()), "models_root": str(paths.model.parent.resolve()),
              "show_progress": True}
    print(f"Run {run_name}: dataset={config['dataset']} image_size={config['image_size']}  (config: {config_path})")
    started = time.monotonic()
    for i, name in enumerate(NOTEBOOKS, start=1):
        out = paths.reports / f"{name}.ipynb"
        print(f"\n[{i}/{len(NOTEBOOKS)}] {name} ...", flush=True)
        t0 = time.monotonic()
        try:
            pm.execute_notebook(NOTEBOOKS_DIR / f"{name}.ipynb", out, parameters=params,
                                cwd=str(NOTEBOOKS_DIR), progress_bar=True, log_output=False,
                                stdout_file=sys.stdout, stderr_file=sys.stderr)
        except PapermillExecutionError as exc:
            export_html(out)
            print(f"\nFAILED in notebook {name} (cell {exc.exec_count}): {exc.ename}: {exc.evalue}\n"
                  f"The executed notebook with the traceback: {out}", file=sys.stderr)
            return 1
        except Exception as exc:  # kernel died, notebook missing...
            print(f"\nFAILED in notebook {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        export_html(out)
        print(f"[{i}/{len(NOTEBOOKS)}] {name} done in {time.monotonic() - t0:.0f} s", flush=True)

    metrics = json.loads(paths.metrics.read_text()) if paths.metrics.is_file() else {}
    minutes = (time.monotonic() - started) / 60
    label = " (SYNTHETIC data)" if metrics.get("synthetic") else ""
    print(f"\nDone in {minutes:.1f} min{label}.")
    for key in ("test_accuracy", "test_macro_f1", "test_ece", "val_accuracy", "gz1_coarse_balanced_accuracy"):
        if key in metrics:
            print(f"  {key:30s} {metrics[key]:.4f}")
    rel = lambda p: os.path.relpath(p, PROJECT_ROOT) if str(p).startswith(str(PROJECT_ROOT)) else str(p)
    print(f"  reports:  {rel(paths.reports)}/ (executed notebooks, HTML, metrics.json, figures/)")
    print(f"  model:    {rel(paths.model)}/ (model.keras, model.tflite, model.json)")
    print(f"  classify: ./predict.sh --model {rel(paths.model)} IMAGE_OR_DIR --out predictions.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
