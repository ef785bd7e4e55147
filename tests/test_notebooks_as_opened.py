"""A notebook opened in JupyterLab runs as it is: with no parameters and no environment variables
it uses the synthetic set when the real Galaxy10 file is absent (and says so), and setting only
``run_name`` reopens a finished run with the config it ran with."""

from __future__ import annotations

import pytest

from galaxylib.config import GALAXY10_FILENAME, PROJECT_ROOT
from galaxylib.pipeline.run_config import load_config, write_config
from galaxylib.pipeline.run_folder import NOTEBOOK_PARAMETERS, open_run, run_folder


@pytest.fixture
def roots(tmp_path, monkeypatch):
    for variable, _ in NOTEBOOK_PARAMETERS.values():
        monkeypatch.delenv(variable, raising=False)
    return {"reports_root": tmp_path / "reports", "models_root": tmp_path / "models", "data_root": tmp_path / "data"}


def test_run_all_as_opened_uses_the_synthetic_set_when_the_real_file_is_absent_and_says_so(roots, capsys):
    run, config = open_run(**roots)
    assert load_config(PROJECT_ROOT / "configs" / "quick.yaml")["dataset"] == "real"  # what it would have tried
    assert config["dataset"] == "synthetic"
    said = capsys.readouterr().out
    assert "synthetic set" in said and 'dataset = "real"' in said and "parameters cell" in said
    assert "--dataset" not in said  # a notebook's reader has no command line


def test_the_real_file_once_present_is_used(roots, capsys):
    raw = roots["data_root"] / "raw" / GALAXY10_FILENAME
    raw.parent.mkdir(parents=True)
    raw.write_bytes(b"stand-in")
    _, config = open_run(**roots)
    assert config["dataset"] == "real"
    assert "synthetic" not in capsys.readouterr().out


def test_a_config_or_dataset_chosen_explicitly_is_never_replaced(roots):
    _, config = open_run(config_path=PROJECT_ROOT / "configs" / "quick.yaml", **roots)
    assert (
        config["dataset"] == "real"
    )  # train.sh passes its config: its dataset stands, and a missing file is an error later
    _, config = open_run(dataset="real", **roots)
    assert config["dataset"] == "real"


def test_setting_only_run_name_reopens_a_finished_run_with_its_own_config(roots, capsys):
    run = run_folder("finished", roots["reports_root"], roots["models_root"], roots["data_root"])
    ran_with = load_config(PROJECT_ROOT / "configs" / "tiny.yaml", {"image_size": 48})
    run.reports.mkdir(parents=True)
    write_config(ran_with, run.config_file)
    reopened, config = open_run(run_name="finished", **roots)
    assert reopened.reports == run.reports
    assert config["image_size"] == 48 and config["dataset"] == ran_with["dataset"]
    assert "Reopening run 'finished'" in capsys.readouterr().out
