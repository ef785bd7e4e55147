"""``./train.sh``: run the four notebooks with papermill and collect the report.

Usage: python -m galaxylib.pipeline.runner [--config FILE] [--dataset D] [--run-name N] [-p KEY VALUE ...]

The notebooks hand each other named files of the run folder (galaxylib.pipeline.run_folder).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

from galaxylib.config import NOTEBOOKS_DIR, PROJECT_ROOT, user_path
from galaxylib.pipeline import run_config
from galaxylib.pipeline.run_folder import run_folder
from galaxylib.pipeline.stderr_filter import native_noise_filtered

# Failures that describe the user's data, labels or split rather than a fault of the kit.
INPUT_ERRORS = frozenset({"DatasetError", "LabelsError", "SplitError"})
NOTEBOOKS = ("01_prepare_data", "02_train", "03_evaluate", "04_inference_tests")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="train.sh", description="Run prepare -> train -> evaluate -> inference tests as executed notebooks."
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="YAML config (configs/quick.yaml, configs/production.yaml)"
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="synthetic | real (download Galaxy10 DECaLS) | PATH.h5 | IMAGE_DIR with labels.csv | "
        "CATALOGUE.parquet or .csv with file_loc and a label column (docs/scaling.md)",
    )
    parser.add_argument("--run-name", default=None, help="names reports/<run>/ and models/<run>/")
    parser.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="override a config value, e.g. -p train.epochs 3 or -p learning_rate 1e-4",
    )
    parser.add_argument("--reports-root", type=Path, default=None, help="default: reports/ (or $GALAXY_REPORTS_ROOT)")
    parser.add_argument("--models-root", type=Path, default=None, help="default: models/ (or $GALAXY_MODELS_ROOT)")
    parser.add_argument("--data-root", type=Path, default=None, help="default: data/ (or $GALAXY_DATA_ROOT)")
    return parser.parse_args(argv)


def export_html(notebook: Path) -> Path:
    """The executed notebook as HTML. A progress bar's updates are saved as separate stream outputs,
    each redrawing the bar after a carriage return; JupyterLab merges them on display, the HTML
    would show every one, so they are merged here to each bar's last state."""
    import nbformat
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    exporter = HTMLExporter(config=Config({"CoalesceStreamsPreprocessor": {"enabled": True}}))
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    out = notebook.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    with native_noise_filtered():
        return train(argv)


def train(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {key: run_config.parse_value(value) for key, value in args.param}
    if args.dataset:
        keyword = args.dataset in ("synthetic", "real", "galaxy10")
        overrides["dataset"] = args.dataset if keyword else str(user_path(args.dataset))
    try:
        config = run_config.load_config(user_path(args.config) if args.config else None, overrides)
    except run_config.ConfigError as exc:
        print(f"train.sh: {exc}", file=sys.stderr)
        return 2
    run_name = args.run_name or dt.datetime.now().strftime("run-%Y%m%d-%H%M%S")
    if not run_name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        print(f"train.sh: run name {run_name!r} may only use letters, digits, '-', '_' and '.'", file=sys.stderr)
        return 2
    from galaxylib.modeling.distribute import cluster_from_environment
    from galaxylib.pipeline import steps

    try:
        steps.check_training(config)  # a bad mode or strategy stops here, before any work
    except ValueError as exc:
        print(f"train.sh: {exc}", file=sys.stderr)
        return 2
    roots = [user_path(r) if r else None for r in (args.reports_root, args.models_root, args.data_root)]
    paths = run_folder(run_name, *roots)
    cluster = cluster_from_environment() if config["train"].get("strategy") == "multi_worker" else None
    if cluster is not None and cluster[1] != 0:
        return run_worker(config, paths, cluster)
    paths.start()
    config_path = run_config.write_config(config, paths.config_file)

    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    params = {
        "run_name": run_name,
        "config_path": str(config_path.resolve()),
        "reports_root": str(paths.reports.parent.resolve()),
        "models_root": str(paths.model.parent.resolve()),
        "data_root": str(paths.data.resolve()),
        "show_progress": True,
    }
    print(f"Run {run_name}: dataset={config['dataset']} image_size={config['image_size']}  (config: {config_path})")
    started = time.monotonic()
    for i, name in enumerate(NOTEBOOKS, start=1):
        out = paths.reports / f"{name}.ipynb"
        print(f"\n[{i}/{len(NOTEBOOKS)}] {name} ...", flush=True)
        t0 = time.monotonic()
        try:
            pm.execute_notebook(
                NOTEBOOKS_DIR / f"{name}.ipynb",
                out,
                parameters=params,
                cwd=str(NOTEBOOKS_DIR),
                progress_bar=True,
                log_output=False,
                stdout_file=sys.stdout,
                stderr_file=sys.stderr,
            )
        except PapermillExecutionError as exc:
            export_html(out)
            if exc.ename in INPUT_ERRORS:  # the user's data or labels: one line, exit 2, as for a bad option
                print(f"train.sh: {exc.evalue} (in notebook {name}; executed copy: {out})", file=sys.stderr)
                return 2
            print(
                f"\nFAILED in notebook {name} (cell {exc.exec_count}): {exc.ename}: {exc.evalue}\n"
                f"The executed notebook with the traceback: {out}",
                file=sys.stderr,
            )
            return 1
        except Exception as exc:  # kernel died, notebook missing...
            print(f"\nFAILED in notebook {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        export_html(out)
        print(f"[{i}/{len(NOTEBOOKS)}] {name} done in {time.monotonic() - t0:.0f} s", flush=True)

    metrics = paths.metrics()
    minutes = (time.monotonic() - started) / 60
    label = " (SYNTHETIC data)" if metrics.get("synthetic") else ""
    print(f"\nDone in {minutes:.1f} min{label}.")
    for key in (
        "test_accuracy",
        "test_balanced_accuracy",
        "test_macro_f1",
        "test_ece",
        "test_ece_uncalibrated",
        "test_nll",
        "test_nll_uncalibrated",
        "ood_far_auroc",
        "ood_test_flagged_fraction",
        "val_accuracy",
        "gz1_coarse_balanced_accuracy",
    ):
        if key in metrics:
            print(f"  {key:30s} {metrics[key]:.4f}")
    rel = lambda p: os.path.relpath(p, PROJECT_ROOT) if str(p).startswith(str(PROJECT_ROOT)) else str(p)
    print(f"  reports:  {rel(paths.reports)}/ (executed notebooks, HTML, metrics.json, figures/)")
    print(f"  model:    {rel(paths.model)}/ (model.keras, model.tflite, model.json)")
    print(f"  classify: ./predict.sh --model {rel(paths.model)} IMAGE_OR_DIR --out predictions.csv")
    return 0


def run_worker(config: dict, paths, cluster: tuple[str, int, int]) -> int:
    """A non-chief worker of a multi-worker run: it prepares the data, trains in step with the
    others, and writes no report, artifact or MLflow run (the chief, task 0, does)."""
    from galaxylib.pipeline import steps

    source, index, workers = cluster
    print(f"Worker {index} of {workers} ({source}): training with the chief; it writes the artifact and the reports")
    data, split = steps.prepare_data(config, paths.data, paths.cache, show_progress=False)
    result = steps.train_as_worker(config, data, split, cache_dir=paths.cache)
    print(
        f"Worker {index}: done after {len(result['history'].get('loss', []))} epochs on {result['replicas']} replicas"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
