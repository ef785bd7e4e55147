"""./train.sh end to end on a tiny synthetic config: the report and the artifact it leaves."""

import json
import os
import subprocess
import sys

import pytest

from galaxylib.artifact import read_artifact
from galaxylib.config import PROJECT_ROOT
from galaxylib.modeling.loading import load_keras_model
from galaxylib.modeling.orientation import inner_network

pytestmark = pytest.mark.slow  # runs train.sh end to end


def test_train_sh_leaves_executed_notebooks_html_metrics_figures_and_the_artifact(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    result = subprocess.run(
        [
            str(PROJECT_ROOT / "train.sh"),
            "--config",
            "configs/tiny.yaml",
            "--dataset",
            "synthetic",
            "--run-name",
            "pytest-tiny",
            "--reports-root",
            str(tmp_path / "reports"),
            "--models-root",
            str(tmp_path / "models"),
            "-p",
            "train.epochs",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # a normal run is quiet: no warning, no native log line (galaxylib/pipeline/stderr_filter.py)
    noise = [
        line
        for line in result.stderr.replace("\r", "\n").splitlines()
        if any(word in line for word in ("WARNING", "Warning", "INFO", "I0000", "W0000", "oneDNN", "Traceback"))
    ]
    assert noise == []
    reports = tmp_path / "reports" / "pytest-tiny"
    for name in ("01_prepare_data", "02_train", "03_evaluate", "04_inference_tests"):
        assert (reports / f"{name}.ipynb").is_file() and (reports / f"{name}.html").is_file()
    metrics = json.loads((reports / "metrics.json").read_text())
    assert {"test_accuracy", "test_macro_f1", "val_accuracy"} <= set(metrics) and metrics["synthetic"] is True
    assert {"confusion_matrix.png", "learning_curves.png", "reliability.png", "class_counts.png"} <= {
        p.name for p in (reports / "figures").iterdir()
    }
    model = tmp_path / "models" / "pytest-tiny"
    assert {"model.keras", "model.tflite", "model.json"} <= {p.name for p in model.iterdir()}
    artifact = read_artifact(model)
    assert artifact.sidecar["metrics"]["test_accuracy"] == metrics["test_accuracy"]
    assert inner_network(load_keras_model(artifact)) is not None  # tiny.yaml averages the 8 orientations
    assert "test_accuracy" in result.stdout and "SYNTHETIC" in result.stdout


def test_a_dataset_train_sh_cannot_use_is_one_line_naming_the_notebook_and_exit_2(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(
        [
            str(PROJECT_ROOT / "train.sh"),
            "--config",
            "configs/tiny.yaml",
            "--dataset",
            str(tmp_path / "missing.h5"),
            "--run-name",
            "pytest-fail",
            "--reports-root",
            str(tmp_path / "reports"),
            "--models-root",
            str(tmp_path / "models"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("train.sh:")]
    assert "missing.h5" in line and "not found" in line and "notebook 01_prepare_data" in line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "models" / "pytest-fail").exists()


def test_an_unknown_parameter_is_refused_before_anything_runs(tmp_path):
    result = subprocess.run(
        [str(PROJECT_ROOT / "train.sh"), "--config", "configs/tiny.yaml", "-p", "learnin_rate", "1"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        cwd=PROJECT_ROOT,
        timeout=60,
    )
    assert result.returncode == 2 and "unknown parameter 'learnin_rate'" in result.stderr
