"""./predict.sh as a user runs it: real cutouts plus broken files in one folder."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from support import default_ctrl_c

from galaxylib.config import PROJECT_ROOT
from galaxylib.inference.predictor import Predictor
from galaxylib.store.database import PredictionStore


@pytest.fixture
def mixed_folder(tmp_path, sample_files):
    folder = tmp_path / "cutouts"
    folder.mkdir()
    for src in sample_files[:6]:
        (folder / src.name).write_bytes(src.read_bytes())
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is a text file, not a galaxy")
    (folder / "truncated.jpg").write_bytes(sample_files[7].read_bytes()[:2000])
    return folder


def run_predict(*args, env_db=None):
    import os

    env = {**os.environ, "PYTHON": sys.executable}
    if env_db:
        env["DATABASE_URL"] = env_db
    return subprocess.run(
        [str(PROJECT_ROOT / "predict.sh"), *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_real_image_gets_one_line_and_one_row_and_broken_files_none(
    tiny_artifact, mixed_folder, tmp_path, database_url
):
    out = tmp_path / "out.csv"
    result = run_predict("--model", tiny_artifact, mixed_folder, "--out", out, env_db=database_url)
    assert result.returncode == 0, result.stderr
    lines = read_csv(out)
    good = [line for line in lines if not line["error"]]
    bad = {Path(line["filename"]).name: line["error"] for line in lines if line["error"]}
    assert len(good) == 6 and len(lines) == 9
    assert set(bad) == {"empty.jpg", "notes.jpg", "truncated.jpg"}
    assert (
        "empty" in bad["empty.jpg"] and "not a JPEG or PNG" in bad["notes.jpg"] and "truncated" in bad["truncated.jpg"]
    )
    for name in bad:
        assert name in result.stderr  # each broken file is reported by name
    store = PredictionStore(database_url)
    assert store.count() == 6
    assert {Path(r.filename).name for r in store.list(limit=50)[0]} == {Path(line["filename"]).name for line in good}


def test_a_folder_with_no_images_is_a_clear_error_and_a_dead_link_gets_its_error_line(
    tiny_artifact, sample_files, tmp_path
):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    out = tmp_path / "out.csv"
    result = run_predict("--model", tiny_artifact, empty, "--out", out, "--no-db")
    assert result.returncode == 2 and "nothing to classify" in result.stderr and str(empty) in result.stderr
    assert not out.exists()
    folder = tmp_path / "linked"
    folder.mkdir()
    (folder / "real.jpg").symlink_to(sample_files[0])
    (folder / "gone.jpg").symlink_to(tmp_path / "moved-away.jpg")
    result = run_predict("--model", tiny_artifact, folder, empty, "--out", out, "--no-db")
    assert result.returncode == 0, result.stderr
    lines = {Path(line["filename"]).name: line for line in read_csv(out)}
    assert set(lines) == {"real.jpg", "gone.jpg"} and lines["real.jpg"]["predicted_class"]
    assert lines["gone.jpg"]["error"] and "gone.jpg" in result.stderr and "holds no images" in result.stderr
    result = run_predict("--model", tiny_artifact, folder / "gone.jpg", "--out", out, "--no-db")
    assert result.returncode == 1  # every input failed: the CSV holds their error lines
    assert [line["error"] != "" for line in read_csv(out)] == [True]


def test_the_csv_has_the_class_confidence_top3_and_model_version(tiny_artifact, sample_files, tmp_path, sqlite_url):
    out = tmp_path / "one.csv"
    result = run_predict("--model", tiny_artifact, sample_files[0], "--out", out, env_db=sqlite_url)
    assert result.returncode == 0
    assert "trained on synthetic galaxies" in result.stderr  # the tiny artifact is saved as synthetic
    [line] = read_csv(out)
    expected = Predictor(tiny_artifact).predict(sample_files[0])
    assert line["predicted_class"] == expected.predicted_class
    assert float(line["confidence"]) == pytest.approx(expected.confidence, abs=1e-6)
    assert [line["top1"], line["top2"], line["top3"]] == [n for n, _ in expected.top_classes]
    assert line["model_version"] == expected.model_version and line["prediction_id"]


def test_a_galaxy10_h5_is_classified_row_by_row(tiny_artifact, tmp_path, sqlite_url):
    h5 = tmp_path / "g10.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("images", data=np.random.default_rng(0).integers(0, 256, (5, 256, 256, 3), dtype=np.uint8))
        f.create_dataset("ans", data=np.arange(5, dtype=np.uint8))
    out = tmp_path / "h5.csv"
    assert run_predict("--model", tiny_artifact, h5, "--out", out, env_db=sqlite_url).returncode == 0
    assert [line["filename"] for line in read_csv(out)] == [f"{h5}[{i}]" for i in range(5)]


def test_ctrl_c_writes_no_csv_and_says_where_the_logged_predictions_are(tiny_artifact, sample_files, tmp_path):
    import os
    import signal
    import time

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(3000):  # links to the real cutouts: a run long enough to interrupt
        (folder / f"g{i:04d}.jpg").symlink_to(sample_files[i % len(sample_files)])
    db = tmp_path / "predictions.db"
    out = tmp_path / "out.csv"
    env = {**os.environ, "PYTHON": sys.executable, "DATABASE_URL": f"sqlite:///{db}"}
    proc = subprocess.Popen(
        [str(PROJECT_ROOT / "predict.sh"), "--model", str(tiny_artifact), str(folder), "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=default_ctrl_c,
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not (db.exists() and _rows(db) >= 64):
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before Ctrl-C"
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    assert f"interrupted; {out} was not written; the predictions made so far are in sqlite:///{db}" in stderr
    assert "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob(".out.csv*"))  # no CSV, whole or partial
    assert 64 <= _rows(db) < 3000


def _rows(db: Path) -> int:
    import sqlite3

    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not there yet
        return 0


def test_a_missing_model_is_a_clear_error(tmp_path, sample_files):
    result = run_predict("--model", tmp_path / "nope", sample_files[0], "--out", tmp_path / "x.csv")
    assert result.returncode == 2 and "cannot load the model" in result.stderr
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize(
    "out, says",
    [
        ("existing-folder", "names a folder"),
        ("existing-folder/", "names a folder"),
        ("missing-folder/", "names a folder"),
        ("a-file.csv/predictions.csv", "is a file, not a folder"),
    ],
)
def test_an_out_that_cannot_take_the_csv_is_refused_before_anything_is_classified_or_logged(
    tiny_artifact, sample_files, tmp_path, sqlite_url, out, says
):
    """A late failure would leave every prediction logged and no CSV, and a rerun would log them twice."""
    (tmp_path / "existing-folder").mkdir()
    (tmp_path / "a-file.csv").write_text("not a folder")
    result = subprocess.run(
        [str(PROJECT_ROOT / "predict.sh"), "--model", str(tiny_artifact), str(sample_files[0]), "--out", out],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable, "DATABASE_URL": sqlite_url},
    )
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr
    assert PredictionStore(sqlite_url).count() == 0
    assert not (tmp_path / "missing-folder").exists()


def test_an_out_in_folders_that_do_not_exist_yet_creates_them(tiny_artifact, sample_files, tmp_path, sqlite_url):
    out = tmp_path / "results" / "today" / "predictions.csv"
    result = run_predict("--model", tiny_artifact, sample_files[0], "--out", out, env_db=sqlite_url)
    assert result.returncode == 0, result.stderr
    assert len(read_csv(out)) == 1


def test_the_usage_line_names_both_modes_and_where_the_catalogue_options_are(capsys):
    from galaxylib.apps.predict_cli import main, parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert "INPUT [INPUT ...]" in usage
    assert "--catalog CATALOG --out DIR" in usage and "predict.sh --catalog --help" in usage
    with pytest.raises(SystemExit) as done:
        main(["--catalog", "--help"])  # what the usage line tells the reader to run
    assert done.value.code == 0 and "--shard K/N" in capsys.readouterr().out


def test_a_normal_run_writes_no_warning_or_native_log_line(tiny_artifact, sample_files, tmp_path, sqlite_url):
    result = run_predict("--model", tiny_artifact, *sample_files[:3], "--out", tmp_path / "p.csv", env_db=sqlite_url)
    assert result.returncode == 0, result.stderr
    noise = [
        line
        for line in result.stderr.splitlines()
        if any(word in line for word in ("INFO:", "WARNING", "Warning", "W0000", "I0000", "Traceback"))
    ]
    assert noise == []


def test_every_answer_names_its_decision_rule_and_a_balanced_one_shows_the_most_probable_class(
    tiny_artifact, sample_files, tmp_path, sqlite_url
):
    """Without a class bias the reported class is the most probable; with one (a model trained
    to balance its classes) the record, the CSV and the API say the rule is 'balanced' and name
    the most probable class beside it."""
    import dataclasses

    from galaxylib.inference.classify import ImageInput, classify
    from galaxylib.store.records import prediction_row

    predictor = Predictor(tiny_artifact)
    inputs = [ImageInput.from_path(p) for p in sample_files[:8]]
    plain = classify(predictor, inputs)
    assert {c.prediction.decision_rule for c in plain} == {"most_probable"}
    assert all(c.prediction.most_probable_class == c.prediction.predicted_class for c in plain)

    n = len(predictor.class_names)
    bias = np.zeros(n)
    bias[0] = -8.0  # the catalogue's prior says class 0 is rare: its calls are seldom the most probable
    predictor.trust = dataclasses.replace(predictor.trust, bias=tuple(bias))
    balanced = [c.prediction for c in classify(predictor, inputs)]
    assert {p.decision_rule for p in balanced} == {"balanced"}
    for p in balanced:
        assert p.most_probable_class == max(p.probabilities, key=p.probabilities.get)
    row = prediction_row(classify(predictor, inputs[:1])[0], "predict.sh")
    assert row["metadata"]["decision_rule"] == "balanced"

    out = tmp_path / "p.csv"
    assert run_predict("--model", tiny_artifact, sample_files[0], "--out", out, "--no-db").returncode == 0
    assert read_csv(out)[0]["decision_rule"] == "most_probable"
