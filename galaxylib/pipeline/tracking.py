"""MLflow tracking: a local ./mlruns by default, MLFLOW_TRACKING_URI overrides it."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from galaxylib.config import mlflow_tracking_uri

EXPERIMENT = os.environ.get("MLFLOW_EXPERIMENT_NAME", "galaxy10")


def _flat(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def artifact_location(uri: str) -> str | None:
    """Where run artifacts go: beside a local SQLite store (MLflow's own default is ./mlruns in
    whatever folder the process runs in, which for a notebook is inside the checkout)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).resolve().parent / "artifacts").as_uri()
    return None  # a tracking server decides


@contextlib.contextmanager
def mlflow_run(run_name: str, params: dict[str, Any], tags: dict[str, str] | None = None) -> Iterator[Any]:
    """Start (or resume, by name) an MLflow run and log its parameters."""
    import mlflow

    uri = mlflow_tracking_uri()
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=artifact_location(uri))
    mlflow.set_experiment(EXPERIMENT)
    existing = mlflow.search_runs(
        filter_string=f"tags.mlflow.runName = '{run_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    run_id = existing[0].info.run_id if existing else None
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, tags=tags) as run:
        if params and run_id is None:
            mlflow.log_params(_flat(params))
        yield run


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow

    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    if clean:
        mlflow.log_metrics(clean, step=step)


def log_artifacts(path: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    path = Path(path)
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path=artifact_path)
    elif path.is_file():
        mlflow.log_artifact(str(path), artifact_path=artifact_path)
