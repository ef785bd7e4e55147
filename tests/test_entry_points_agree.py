"""One file, one answer: the Predictor, predict.sh, the API and the dashboard agree.

The artifact here records a centre crop in its preprocessing contract, so the test
also proves that every entry point applies the artifact's contract, not its own.
"""

import csv
import io
import os
import subprocess
import sys

import pytest

from galaxylib.config import PROJECT_ROOT
from galaxylib.inference.predictor import Predictor


def test_predictor_predict_sh_api_and_dashboard_give_identical_probabilities(
    cropped_artifact, sample_files, make_app, sqlite_url, tmp_path
):
    from galaxylib.apps.dashboard.uploads import Upload, classify_uploads

    files = sample_files[:3]
    predictor = Predictor(cropped_artifact)
    expected = [predictor.predict(f).probabilities for f in files]
    # The crop must matter to this model, or the comparison below could not catch a path ignoring it.
    from galaxylib.preprocessing import load_image

    uncropped = predictor.to_prediction(predictor.predict_arrays(load_image(files[0], 32)[None])[0]).probabilities
    assert max(abs(uncropped[k] - expected[0][k]) for k in uncropped) > 1e-5

    out = tmp_path / "out.csv"
    env = {**os.environ, "PYTHON": sys.executable, "DATABASE_URL": sqlite_url}
    run = subprocess.run(
        [str(PROJECT_ROOT / "predict.sh"), "--model", str(cropped_artifact), *map(str, files), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    with open(out, newline="") as fh:
        lines = list(csv.DictReader(fh))

    client = make_app(sqlite_url, model_path=str(cropped_artifact)).test_client()
    response = client.post(
        "/predict",
        data={"file": [(io.BytesIO(f.read_bytes()), f.name) for f in files]},
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.get_json()
    api = response.get_json()["predictions"]

    dashboard = classify_uploads(predictor, [Upload(f.name, f.read_bytes(), f.stat().st_size) for f in files])

    for i, probs in enumerate(expected):
        top = max(probs, key=probs.get)
        assert lines[i]["predicted_class"] == top
        assert float(lines[i]["confidence"]) == pytest.approx(probs[top], abs=1e-6)  # CSV keeps 6 decimals
        assert api[i]["probabilities"] == pytest.approx(probs, abs=1e-7)
        assert dashboard[i].prediction.probabilities == pytest.approx(probs, abs=1e-7)
        # the same out-of-distribution verdict and score everywhere
        reference = predictor.predict(files[i])
        assert isinstance(reference.in_distribution, bool) and isinstance(reference.ood_score, float)
        assert lines[i]["in_distribution"] == str(reference.in_distribution).lower()
        assert float(lines[i]["ood_score"]) == pytest.approx(reference.ood_score, rel=1e-5)
        assert api[i]["in_distribution"] is reference.in_distribution
        assert api[i]["ood_score"] == pytest.approx(reference.ood_score, rel=1e-5)  # float32, other batch size
        assert dashboard[i].prediction.in_distribution is reference.in_distribution


def test_the_three_entry_points_store_the_same_record(cropped_artifact, sample_files, make_app, sqlite_url, tmp_path):
    """One cutout through predict.sh, the API and the dashboard: the stored rows' metadata have the
    same keys with the same types (the one record builder), and differ only in ``source``."""
    from galaxylib.apps.dashboard.app import Dashboard
    from galaxylib.apps.dashboard.sources import ModelChoice
    from galaxylib.apps.dashboard.uploads import Upload
    from galaxylib.store.database import PredictionStore
    from galaxylib.store.records import METADATA_TYPES

    cutout = sample_files[0]
    env = {**os.environ, "PYTHON": sys.executable, "DATABASE_URL": sqlite_url}
    run = subprocess.run(
        [
            str(PROJECT_ROOT / "predict.sh"),
            "--model",
            str(cropped_artifact),
            str(cutout),
            "--out",
            str(tmp_path / "out.csv"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    client = make_app(sqlite_url, model_path=str(cropped_artifact)).test_client()
    response = client.post(
        "/predict", data={"file": [(io.BytesIO(cutout.read_bytes()), cutout.name)]}, content_type="multipart/form-data"
    )
    assert response.status_code == 200, response.get_json()
    page = Dashboard(
        models=[ModelChoice(cropped_artifact, "cropped")],
        examples=[],
        db_url=sqlite_url,
        log_predictions=True,
        warm_saliency=False,
    )
    page.classify([Upload(cutout.name, cutout.read_bytes(), cutout.stat().st_size)])

    rows, total = PredictionStore(sqlite_url).list(limit=10)
    assert total == 3
    by_source = {r.meta["source"]: r for r in rows}
    assert set(by_source) == {"predict.sh", "api", "dashboard"}
    for source, row in by_source.items():
        assert set(row.meta) == set(METADATA_TYPES), source
        for key, kind in METADATA_TYPES.items():
            assert isinstance(row.meta[key], kind), (source, key, row.meta[key])
    reference = by_source["api"].meta
    for source, row in by_source.items():
        same = {k: v for k, v in row.meta.items() if k not in ("source", "latency_ms", "batch_size")}
        assert same == {k: v for k, v in reference.items() if k not in ("source", "latency_ms", "batch_size")}, source
        assert row.predicted_class == by_source["api"].predicted_class
        assert row.in_distribution is row.meta["in_distribution"], source  # the column the filter reads
    # ... and they are the Predictor's own answer, OOD check included
    expected = Predictor(cropped_artifact).predict(cutout)
    assert reference["ood_score"] == pytest.approx(expected.ood_score, rel=1e-5)
    assert reference["in_distribution"] is expected.in_distribution
    assert by_source["predict.sh"].filename.endswith(cutout.name)
    assert (reference["width"], reference["height"]) == (256, 256)
