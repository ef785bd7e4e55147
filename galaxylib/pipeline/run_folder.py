"""One run's folders and the named files its notebooks hand to each other.

``reports/<run>/`` holds the resolved ``config.yaml``, ``dataset.json`` (which data, with
its SHA-256), ``split.json``, ``metrics.json`` and ``figures/``; ``models/<run>/`` holds the
artifact. Each notebook reads what the one before wrote through these methods, so a
report folder is also the complete record of what produced it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from galaxylib.config import DATA_DIR, GALAXY10_FILENAME, MODELS_DIR, PROJECT_ROOT, REPORTS_DIR
from galaxylib.data.galaxy10 import DatasetError, Galaxy10File, open_galaxy10
from galaxylib.data.split import Split, load_split, save_split
from galaxylib.files import atomic_write_json


@dataclass(frozen=True)
class RunFolder:
    run_name: str
    reports: Path
    model: Path  # the artifact folder
    data: Path  # datasets and caches (shared by runs)

    @property
    def figures(self) -> Path:
        return self.reports / "figures"

    @property
    def config_file(self) -> Path:
        return self.reports / "config.yaml"

    @property
    def dataset_file(self) -> Path:
        return self.reports / "dataset.json"

    @property
    def split_file(self) -> Path:
        return self.reports / "split.json"

    @property
    def metrics_file(self) -> Path:
        return self.reports / "metrics.json"

    @property
    def cache(self) -> Path:
        return self.data / "cache"

    def read_config(self) -> dict:
        from galaxylib.pipeline.run_config import load_config

        return load_config(self.config_file)

    def record_dataset(self, data: Galaxy10File, spec: str) -> dict[str, Any]:
        record = {
            "spec": str(spec),
            "path": str(data.path),
            "sha256": data.fingerprint(),
            "n_images": data.n_images,
            "synthetic": data.synthetic,
            "class_names": list(data.class_names),
        }
        atomic_write_json(self.dataset_file, record)
        return record

    def dataset(self) -> Galaxy10File:
        """The run's dataset, refused if the file changed since data preparation."""
        if not self.dataset_file.is_file():
            raise DatasetError(f"no {self.dataset_file}: run notebooks/01_prepare_data for run {self.run_name!r} first")
        record = json.loads(self.dataset_file.read_text())
        data = open_galaxy10(record["path"])
        if data.fingerprint() != record["sha256"]:
            raise DatasetError(f"{record['path']} changed since 01_prepare_data recorded it: run that step again")
        return data

    def save_split(self, split: Split) -> Path:
        return save_split(split, self.split_file)

    def split(self, dataset_sha256: str | None = None) -> Split:
        return load_split(self.split_file, dataset_sha256)

    def metrics(self) -> dict[str, Any]:
        return json.loads(self.metrics_file.read_text()) if self.metrics_file.is_file() else {}

    def update_metrics(self, **values: Any) -> dict[str, Any]:
        """Merge ``values`` into metrics.json, written atomically."""
        current = {**self.metrics(), **values}
        atomic_write_json(self.metrics_file, current)
        return current

    def start(self) -> None:
        """A fresh run: the previous run's hand-offs are removed, and so is its artifact (the new
        one replaces it; a run that stops before the end then leaves no models/<run> at all)."""
        import shutil

        from galaxylib.artifact import staging_dir

        self.reports.mkdir(parents=True, exist_ok=True)
        for stale in (self.dataset_file, self.split_file, self.metrics_file):
            stale.unlink(missing_ok=True)
        for folder in (self.model, staging_dir(self.model)):
            shutil.rmtree(folder, ignore_errors=True)


def run_folder(
    run_name: str,
    reports_root: str | os.PathLike | None = None,
    models_root: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
) -> RunFolder:
    """The folders of run ``run_name``; each root defaults to the project's (see galaxylib.config)."""
    return RunFolder(
        run_name,
        Path(reports_root or REPORTS_DIR) / run_name,
        Path(models_root or MODELS_DIR) / run_name,
        Path(data_root or DATA_DIR),
    )


# A notebook parameter left None comes from its environment variable, then from this default:
# nbval and interactive sessions point the notebooks at another config or folder this way.
NOTEBOOK_PARAMETERS: dict[str, tuple[str, Any]] = {
    "run_name": ("GALAXY_RUN_NAME", "notebook-dev"),
    "config_path": ("GALAXY_CONFIG", PROJECT_ROOT / "configs" / "quick.yaml"),
    "dataset": ("GALAXY_DATASET", None),  # None: the config's dataset
    "reports_root": ("GALAXY_REPORTS_ROOT", None),  # None: <repo>/reports
    "models_root": ("GALAXY_MODELS_ROOT", None),  # None: <repo>/models
    "data_root": ("GALAXY_DATA_ROOT", None),  # None: <repo>/data
    "catalog": ("GALAXY_CATALOG", None),  # notebook 05: None makes a demo catalogue
}


def notebook_parameter(name: str, value: Any = None) -> Any:
    """``value``, or when it is None the parameter's environment variable, or its default."""
    if value is not None:
        return value
    variable, default = NOTEBOOK_PARAMETERS[name]
    return os.environ.get(variable) or default


def open_run(
    run_name: str | None = None,
    config_path: str | os.PathLike | None = None,
    *,
    dataset: str | None = None,
    reports_root: str | os.PathLike | None = None,
    models_root: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
) -> tuple[RunFolder, dict]:
    """What each notebook starts with: the run's folders and its resolved config. Each argument
    left None is read through ``notebook_parameter``, so a notebook's parameters cell holds only
    the names papermill sets."""
    from galaxylib.pipeline.run_config import load_config

    given = {
        "run_name": run_name,
        "config_path": config_path,
        "dataset": dataset,
        "reports_root": reports_root,
        "models_root": models_root,
        "data_root": data_root,
    }
    p = {name: notebook_parameter(name, value) for name, value in given.items()}
    run = run_folder(p["run_name"], p["reports_root"], p["models_root"], p["data_root"])
    config_chosen = config_path is not None or bool(os.environ.get(NOTEBOOK_PARAMETERS["config_path"][0]))
    if not config_chosen and run.config_file.is_file():
        # a notebook opened with only run_name set reopens that run, with the config it ran with
        print(f"Reopening run {run.run_name!r} with the config it ran with ({run.config_file}).")
        p["config_path"] = run.config_file
    config = load_config(p["config_path"], {"dataset": p["dataset"]} if p["dataset"] else None)
    real_file = run.data / "raw" / GALAXY10_FILENAME
    if (
        not config_chosen
        and not p["dataset"]
        and config["dataset"] in ("real", "galaxy10", "")
        and not real_file.is_file()
    ):
        # "Run All" as opened works offline: the default config names the real Galaxy10 file
        # (2.5 GB), which is not here, so the synthetic set stands in, and the notebook says so.
        print(
            f"The real Galaxy10 DECaLS file is not in {real_file.parent}: this notebook uses the "
            'synthetic set. For the real galaxies set dataset = "real" in the parameters cell '
            "(it downloads 2.5 GB), or a path to your own .h5, folder or catalogue."
        )
        config["dataset"] = "synthetic"
    run.figures.mkdir(parents=True, exist_ok=True)
    return run, config
