"""The out-of-distribution check: its scorers as served (galaxylib/inference/ood.py, trust_check.py) and
their fits (galaxylib/fitting/ood_fit.py), and the temperature fit seen from a scorer's side."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from galaxylib.evaluation.metrics import ece_noise_floor, expected_calibration_error
from galaxylib.evaluation.ood_cases import FAR_OOD, PHOTOS, far_ood_cases, shifted_cases
from galaxylib.fitting.calibration_fit import fit_temperature, negative_log_likelihood
from galaxylib.fitting.ood_fit import auroc, fit_knn, fit_mahalanobis, fit_pixels, threshold_for
from galaxylib.inference.calibration import apply_temperature
from galaxylib.inference.ood import MaxSoftmax, UnionScorer, load_scorer, pixel_statistics
from galaxylib.inference.trust_check import TrustCheck


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def overconfident_model(true_temperature: float, n: int = 20000, seed: int = 0):
    """Labels drawn from softmax(z / T0) while the model reports softmax(z): T0 is the answer."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, 4))
    truth = softmax(logits / true_temperature)
    labels = np.array([rng.choice(4, p=p) for p in truth])
    return softmax(logits), labels


def test_temperature_one_changes_nothing_and_no_temperature_changes_a_class():
    probs, _ = overconfident_model(2.0, n=200)
    assert np.array_equal(apply_temperature(probs, 1.0), probs)
    for t in (0.5, 2.0, 7.0):
        scaled = apply_temperature(probs, t)
        np.testing.assert_allclose(scaled.sum(axis=1), 1.0)
        assert np.array_equal(scaled.argmax(axis=1), probs.argmax(axis=1))
    assert apply_temperature(probs, 3.0).max(axis=1).mean() < probs.max(axis=1).mean()


def test_fitted_temperature_recovers_how_overconfident_a_model_is():
    for true_t in (0.7, 2.5):
        probs, labels = overconfident_model(true_t)
        fitted = fit_temperature(probs, labels)
        assert fitted == pytest.approx(true_t, rel=0.06)
        assert negative_log_likelihood(apply_temperature(probs, fitted), labels) < negative_log_likelihood(
            probs, labels
        )


def test_the_ece_noise_floor_is_what_a_perfectly_calibrated_model_measures_on_that_many_cutouts():
    """Labels drawn from the model's own probabilities: calibrated by construction, yet the ECE
    of a 500-cutout test split is not 0, and the floor says how far from 0 it typically is."""
    rng = np.random.default_rng(7)
    probs = softmax(rng.normal(0, 1.5, size=(500, 4)))
    floor = ece_noise_floor(probs, seed=1)
    measured = []
    for _ in range(200):
        labels = np.array([rng.choice(4, p=p) for p in probs])
        measured.append(expected_calibration_error(labels, probs)[0])
    assert 0.02 < floor["median"] < floor["p90"] < 0.12  # several hundredths on 500 cutouts
    assert floor["median"] == pytest.approx(np.median(measured), rel=0.15)
    assert np.mean(np.array(measured) <= floor["p90"]) == pytest.approx(0.9, abs=0.07)
    # four times the cutouts, about half the noise
    big = ece_noise_floor(np.tile(probs, (4, 1)), seed=1)
    assert big["median"] == pytest.approx(floor["median"] / 2, rel=0.3)
    # an over-confident model measures far above its floor
    sharp = apply_temperature(probs, 0.4)
    labels = np.array([rng.choice(4, p=p) for p in probs])
    assert expected_calibration_error(labels, sharp)[0] > ece_noise_floor(sharp, seed=1)["p90"] + 0.05


def test_auroc_is_the_probability_that_an_ood_input_scores_higher():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 10, 300).astype(float)  # many ties
    b = rng.integers(3, 14, 200).astype(float)
    pairs = (b[None, :] > a[:, None]).mean() + 0.5 * (b[None, :] == a[:, None]).mean()
    assert auroc(a, b) == pytest.approx(pairs)
    assert auroc(a, a + 100) == 1.0 and auroc(a + 100, a) == 0.0


def test_the_threshold_keeps_at_least_95_percent_of_new_cutouts_in_99_times_out_of_100():
    """Thresholds set on 375 validation scores, judged on fresh draws from the same distribution."""
    rng = np.random.default_rng(2)
    flagged = []
    for _ in range(400):
        threshold = threshold_for(rng.normal(size=375))
        flagged.append((rng.normal(size=20000) > threshold).mean())
    flagged = np.array(flagged)
    assert (flagged <= 0.05).mean() >= 0.98  # 99 % by construction, less the simulation's noise
    assert flagged.mean() > 0.015  # and not much stricter than it needs to be
    assert threshold_for(np.arange(10.0)) == 9.0  # too few to allow any: the largest score


def clusters(seed: int = 3, n: int = 600, dim: int = 16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, size=(3, dim))
    labels = rng.integers(0, 3, n)
    features = centres[labels] + rng.normal(0, 1, size=(n, dim)) * np.linspace(0.5, 2, dim)
    return features, labels, centres


def test_mahalanobis_is_the_distance_to_the_nearest_class_under_the_shrunk_shared_covariance():
    features, labels, centres = clusters()
    scorer = fit_mahalanobis(features, labels, shrinkage=0.1)
    means = np.stack([features[labels == c].mean(0) for c in range(3)])
    centred = features - means[labels]
    cov = centred.T @ centred / (len(features) - 3)
    cov = 0.9 * cov + 0.1 * np.trace(cov) / len(cov) * np.eye(len(cov))
    precision = np.linalg.inv(cov)
    queries = np.random.default_rng(4).normal(0, 6, size=(50, features.shape[1]))
    brute = np.array([min((q - m) @ precision @ (q - m) for m in means) for q in queries]) / features.shape[1]
    np.testing.assert_allclose(scorer.score(queries, None), brute, rtol=1e-4)  # scored in float32
    # a point at a class centre is in distribution; one far from every class is not
    assert scorer.score(centres[:1], None)[0] < scorer.score(centres[:1] + 30, None)[0]


def test_the_low_rank_mahalanobis_gives_the_other_directions_their_mean_variance():
    """Rank 4 of 16: the covariance is its 4 leading eigenpairs plus one shared variance."""
    features, labels, _ = clusters()
    scorer = fit_mahalanobis(features, labels, shrinkage=0.1, rank=4)
    means = np.stack([features[labels == c].mean(0) for c in range(3)])
    centred = features - means[labels]
    cov = centred.T @ centred / (len(features) - 3)
    cov = 0.9 * cov + 0.1 * np.trace(cov) / len(cov) * np.eye(len(cov))
    eigval, eigvec = np.linalg.eigh(cov)
    eigval[:-4] = eigval[:-4].mean()
    precision = eigvec @ np.diag(1 / eigval) @ eigvec.T
    queries = np.random.default_rng(6).normal(0, 6, size=(30, features.shape[1]))
    brute = np.array([min((q - m) @ precision @ (q - m) for m in means) for q in queries]) / features.shape[1]
    np.testing.assert_allclose(scorer.score(queries, None), brute, rtol=1e-4)


def test_knn_is_one_minus_the_kth_largest_cosine_similarity():
    features, labels, _ = clusters(n=300)
    scorer = fit_knn(features, k=5)
    queries = np.random.default_rng(5).normal(size=(20, features.shape[1]))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    sims = unit(queries) @ unit(features).T
    brute = 1 - np.sort(sims, axis=1)[:, -5]
    np.testing.assert_allclose(scorer.score(queries, None), brute, rtol=1e-4, atol=1e-6)


def test_the_pixel_check_tells_real_cutouts_from_photos_blank_frames_and_noise(sample_files):
    """Fitted on 32 of the real Galaxy10 cutouts, it scores the other 8 below every photo, blank
    frame and noise field: a dark sky around a galaxy is what it learns, whatever the model."""
    from galaxylib.preprocessing import load_image

    inputs = np.stack([load_image(f, 64) for f in sample_files])
    order = np.random.default_rng(0).permutation(len(inputs))
    fit, held_out = inputs[order[:32]], inputs[order[32:]]
    scorer = fit_pixels(pixel_statistics(fit))
    cases = far_ood_cases(8, seed=0, half="evaluation")
    galaxies = scorer.score(None, None, pixel_statistics(held_out))
    for name in ("photos", "blank", "noise"):
        others = scorer.score(None, None, pixel_statistics(cases[name].astype(np.float32)[:, ::4, ::4]))
        assert galaxies.max() < others.min(), name
    # the statistics read every (size // 64)-th pixel: the same image at 64 and 256 px agrees
    assert pixel_statistics(fit[:2]).shape == (2, 17)
    big = np.repeat(np.repeat(fit[:2], 4, axis=1), 4, axis=2)
    np.testing.assert_allclose(pixel_statistics(big), pixel_statistics(fit[:2]), atol=1e-6)
    with pytest.raises(ValueError, match="pixel_statistics"):
        scorer.score(None, None, None)


def test_scorers_round_trip_through_the_artifacts_npz(tmp_path):
    features, labels, _ = clusters(n=200)
    queries = features[:10] + 1.0
    for scorer in (fit_mahalanobis(features, labels), fit_knn(features, k=3)):
        path = tmp_path / f"{scorer.method}.npz"
        np.savez(path, **scorer.arrays())
        loaded = load_scorer(scorer.method, path)
        np.testing.assert_allclose(loaded.score(queries, None), scorer.score(queries, None), rtol=1e-4, atol=1e-6)
    pixels = fit_pixels(features[:, :17])
    np.savez(tmp_path / "pixels.npz", **pixels.arrays())
    np.testing.assert_allclose(
        load_scorer("pixels", tmp_path / "pixels.npz").score(None, None, queries[:, :17]),
        pixels.score(None, None, queries[:, :17]),
    )
    assert isinstance(load_scorer("max_softmax", None), MaxSoftmax)
    with pytest.raises(FileNotFoundError, match="ood.npz"):
        load_scorer("knn", tmp_path / "missing.npz")


def test_an_artifact_without_a_check_reports_no_score():
    check = TrustCheck()
    assert not check.has_ood and check.ood_scores(np.zeros((2, 4)), np.full((2, 3), 1 / 3)) is None


def test_the_ood_cases_are_cutout_shaped_and_the_photo_halves_are_disjoint():
    assert not set(PHOTOS["selection"]) & set(PHOTOS["evaluation"])
    cases = far_ood_cases(6, seed=0, half="evaluation")
    assert tuple(cases) == FAR_OOD
    for name, images in cases.items():
        assert images.shape == (6, 256, 256, 3) and images.dtype == np.uint8, name
    assert all(len(np.unique(frame.reshape(-1, 3), axis=0)) == 1 for frame in cases["blank"])
    assert not np.array_equal(cases["photos"], far_ood_cases(6, seed=0, half="selection")["photos"])
    galaxies = np.random.default_rng(0).integers(0, 60, size=(3, 256, 256, 3)).astype(np.uint8)
    galaxies[:, 100:156, 100:156] = 220  # a bright centre
    shifted = shifted_cases(galaxies, seed=0)
    assert shifted["off_centre"][:, 100:156, 100:156].mean() < 200  # the centre moved away
    assert np.array_equal(shifted["inverted"], 255 - galaxies)
    assert shifted["saturated"].mean() > galaxies.mean()


def test_an_artifact_from_before_the_check_still_loads_and_serves_without_the_flag(tmp_path, sample_files):
    """A single-output export with no calibration or OOD entry (what every earlier train.sh wrote)."""
    import keras

    from galaxylib.inference.predictor import Predictor
    from galaxylib.modeling.export import export_tflite, save_artifact
    from galaxylib.modeling.model import ModelParams, build_model

    keras.utils.set_random_seed(0)
    model = build_model(ModelParams(image_size=32, weights="none", trainable_layers="all", freeze_batchnorm=False))
    run = tmp_path / "old"
    save_artifact(model, run, run_name="old", dataset={"sha256": "0" * 64}, split={}, params={}, synthetic=True)
    export_tflite(model, run / "model.tflite", features=False)  # the export as it was
    predictor = Predictor(run, verify_hashes=False)
    prediction = predictor.predict(sample_files[0])
    assert not predictor.has_ood and predictor.trust.temperature == 1.0
    assert (prediction.ood_score, prediction.in_distribution) == (None, None)
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_a_fitted_check_travels_in_the_artifact_and_is_verified(tiny_artifact, tmp_path, sample_files):
    from support import add_trust_check

    from galaxylib.artifact import ArtifactError, read_sidecar
    from galaxylib.inference.predictor import Predictor

    run = tmp_path / "run"
    shutil.copytree(tiny_artifact, run)
    report = add_trust_check(run, tmp_path / "work", methods=("knn",))
    sidecar = read_sidecar(run)
    assert sidecar["calibration"]["temperature"] == report["calibration"]["temperature"]
    assert sidecar["ood"]["method"] == "knn" and sidecar["files"]["ood.npz"]
    predictor = Predictor(run)
    prediction = predictor.predict(sample_files[0])
    assert isinstance(prediction.in_distribution, bool) and isinstance(prediction.ood_score, float)
    assert prediction.in_distribution == (prediction.ood_score <= sidecar["ood"]["threshold"])
    threshold, probs = (
        predictor.trust.threshold,
        predictor.predict_arrays(predictor.preprocess(sample_files[0])[None])[0],
    )
    assert predictor.to_prediction(probs, threshold).in_distribution is True  # a score at the threshold is kept
    assert predictor.to_prediction(probs, np.nextafter(threshold, np.inf)).in_distribution is False
    pixels = tmp_path / "pixels"  # the pixel check: the Predictor computes the statistics itself
    shutil.copytree(tiny_artifact, pixels)
    add_trust_check(pixels, tmp_path / "work-pixels", methods=("pixels",))
    served = Predictor(pixels)
    assert served.trust.needs_pixels and read_sidecar(pixels)["ood"]["method"] == "pixels"
    # model.json says what the chosen score reads: the backbone's features, or the pixel statistics
    one = served.preprocess(sample_files[0])[None]
    assert sidecar["ood"]["feature_dim"] == served.forward(one)[1].shape[1]
    assert read_sidecar(pixels)["ood"]["feature_dim"] == pixel_statistics(one).shape[1]
    batch = np.stack([served.preprocess(f) for f in sample_files[:3]])
    expected = served.trust.scorer.score(None, None, pixel_statistics(batch))
    np.testing.assert_allclose([p.ood_score for p in served.predict_batch(sample_files[:3])], expected, rtol=1e-6)
    with open(run / "ood.npz", "ab") as fh:  # a changed statistics file is refused like a changed model
        fh.write(b"\0")
    with pytest.raises(ArtifactError, match="ood.npz does not match"):
        Predictor(run)


def test_the_scorer_kept_is_the_one_that_flags_most_at_its_threshold_with_auroc_breaking_ties():
    from galaxylib.fitting.ood_fit import choose_method

    # The 3 December fresh clone's selection half: by AUROC alone mahalanobis would win by 0.0006
    quick = {
        "mahalanobis": {"auroc": 0.99933, "flagged_fraction": 0.99375},
        "knn": {"auroc": 0.98318, "flagged_fraction": 0.925},
        "max_softmax": {"auroc": 0.93946, "flagged_fraction": 0.6375},
        "pixels": {"auroc": 0.99869, "flagged_fraction": 1.0},
    }
    assert choose_method(quick) == "pixels"
    gz1 = {
        "mahalanobis": {"auroc": 0.99989, "flagged_fraction": 1.0},  # all flag every case: AUROC decides
        "knn": {"auroc": 0.99981, "flagged_fraction": 1.0},
        "pixels": {"auroc": 0.99963, "flagged_fraction": 1.0},
    }
    assert choose_method(gz1) == "mahalanobis"
    # the union of the features' and the pixels' checks is kept when it flags as many as the best
    assert (
        choose_method({**gz1, "mahalanobis+pixels": {"auroc": 0.99990, "flagged_fraction": 1.0}})
        == "mahalanobis+pixels"
    )
    assert choose_method({**quick, "mahalanobis+pixels": {"auroc": 0.9999, "flagged_fraction": 0.99}}) == "pixels"
    # ... even when a part has the higher AUROC: flagging as many is enough
    assert (
        choose_method({**gz1, "mahalanobis+pixels": {"auroc": 0.999, "flagged_fraction": 1.0}}) == "mahalanobis+pixels"
    )
    nan = {"auroc": float("nan"), "flagged_fraction": float("nan")}  # no cases to judge on never wins
    assert (
        choose_method({"knn": nan, **quick}) == "pixels"
        and choose_method({"mahalanobis+pixels": nan, **gz1}) == "mahalanobis"
    )
    with pytest.raises(ValueError, match="no OOD scorer"):
        choose_method({})


def test_the_union_flags_what_either_part_flags_and_is_served_from_the_artifact(tiny_artifact, tmp_path, sample_files):
    from support import add_trust_check, trust_check_data

    from galaxylib.artifact import read_sidecar
    from galaxylib.inference.predictor import Predictor

    features, labels, _ = clusters(n=200)
    part_f, part_p = fit_mahalanobis(features, labels), fit_pixels(features[:, :17])
    union = UnionScorer(part_f, part_p, scales=np.array([2.0, 4.0]))
    queries = np.concatenate([features[:5], features[:5] + 3.0])
    f_score, p_score = part_f.score(queries, None) / 2.0, part_p.score(None, None, queries[:, :17]) / 4.0
    np.testing.assert_allclose(union.score(queries, None, queries[:, :17]), np.maximum(f_score, p_score), rtol=1e-6)
    np.savez(tmp_path / "union.npz", **union.arrays())
    loaded = load_scorer("mahalanobis+pixels", tmp_path / "union.npz")
    np.testing.assert_allclose(
        loaded.score(queries, None, queries[:, :17]), union.score(queries, None, queries[:, :17]), rtol=1e-4
    )
    with pytest.raises(ValueError, match="two positive, finite scales"):
        UnionScorer(part_f, part_p, scales=np.array([0.0, 4.0]))
    # fitted by the real step (pinned here), beside its parts, and served: the Predictor computes both inputs
    runs = {}
    for methods in (("mahalanobis+pixels",), ("mahalanobis",), ("pixels",)):
        runs[methods[0]] = tmp_path / methods[0]
        shutil.copytree(tiny_artifact, runs[methods[0]])
        add_trust_check(runs[methods[0]], tmp_path / f"work-{methods[0]}", methods=methods)
    ood = read_sidecar(runs["mahalanobis+pixels"])["ood"]
    assert ood["method"] == "mahalanobis+pixels" and set(ood["selection"]) == {
        "mahalanobis",
        "pixels",
        "mahalanobis+pixels",
    }
    assert ood["pixel_statistics_dim"] == 17
    served = Predictor(runs["mahalanobis+pixels"])
    assert served.trust.needs_pixels and served.trust.needs_features
    part_thresholds = [read_sidecar(runs[m])["ood"]["threshold"] for m in ("mahalanobis", "pixels")]
    np.testing.assert_allclose(served.trust.scorer.scales, part_thresholds, rtol=1e-6)  # each part over its own
    batch = np.stack([served.preprocess(f) for f in sample_files[:3]])
    raw, feats = served.forward(batch)
    expected = served.trust.ood_scores(feats, served.trust.calibrate(raw), pixel_statistics(batch))
    np.testing.assert_allclose([p.ood_score for p in served.predict_batch(sample_files[:3])], expected, rtol=1e-5)
    # its threshold comes from the validation cutouts' own scores, as the Predictor serves them
    data, split = trust_check_data(tmp_path / "work-mahalanobis+pixels")
    val_scores = np.array([p.ood_score for p in served.predict_batch(list(data.read_images(split.val)))])
    assert ood["threshold"] == pytest.approx(threshold_for(val_scores), rel=1e-5)
    assert ood["val_kept_fraction"] == pytest.approx((val_scores <= ood["threshold"]).mean())


def test_the_check_is_fitted_and_judged_on_the_calibrated_probabilities(cropped_artifact, tmp_path, monkeypatch):
    """A temperature far from 1 reaches everything the check reads: the validation scores its
    threshold is set on, the selection cases, and the test evaluation. (The small set's own fit keeps
    T at 1, where raw and calibrated agree, so the fit is made to return 0.5 here.)"""
    from support import add_trust_check, trust_check_data

    import galaxylib.pipeline.trust as pipeline
    from galaxylib.inference.calibration import apply_calibration
    from galaxylib.inference.predictor import Predictor

    real_fit = pipeline.fit_calibration
    monkeypatch.setattr(
        pipeline,
        "fit_calibration",
        lambda probs, labels, seed=0: {
            **real_fit(probs, labels, seed=seed),
            "method": "temperature",
            "temperature": 0.5,
            "bias": None,
        },
    )
    run, work = tmp_path / "run", tmp_path / "work"
    shutil.copytree(cropped_artifact, run)
    report = add_trust_check(run, work, methods=("max_softmax",))
    data, split = trust_check_data(work)
    plain, served = Predictor(run, trust=False), Predictor(run)
    assert served.trust.temperature == 0.5

    def calibrated_of(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The model's own probabilities of ``images``, and the same at T 0.5."""
        raw = plain.predict_arrays(pipeline.model_inputs(plain, images))
        return raw, apply_calibration(raw, 0.5, None)

    val_raw, val_probs = calibrated_of(data.read_images(split.val))
    assert not np.allclose(val_probs, val_raw, atol=1e-3)  # T 0.5 changes them
    np.testing.assert_allclose(report["val_probs"], val_probs, rtol=1e-5)
    ood = report["ood"]
    val_scores = 1 - val_probs.max(axis=1)
    assert ood["threshold"] == pytest.approx(threshold_for(val_scores), rel=1e-5)
    cases = np.concatenate(list(far_ood_cases(6, 0, "selection").values()))
    case_scores = 1 - calibrated_of(cases)[1].max(axis=1)
    assert ood["selection"]["max_softmax"]["auroc"] == pytest.approx(auroc(val_scores, case_scores), abs=1e-9)

    judged = pipeline.judge_trust(served, data, split, work / "cache", n_cases=6, show_progress=False)
    np.testing.assert_allclose(judged["probs"], apply_calibration(judged["raw_probs"], 0.5, None), rtol=1e-6)
    y_test = data.labels()[split.test]
    assert judged["calibration"]["ece_after"] == pytest.approx(
        expected_calibration_error(y_test, judged["probs"], decisions=judged["decisions"])[0]
    )
    assert judged["calibration"]["ece_before"] == pytest.approx(
        expected_calibration_error(y_test, judged["raw_probs"])[0]
    )
    np.testing.assert_allclose(judged["ood"]["scores"]["test"], 1 - judged["probs"].max(axis=1), rtol=1e-6)
    for name, images in far_ood_cases(6, 0, "evaluation").items():
        np.testing.assert_allclose(
            judged["ood"]["scores"][name], 1 - calibrated_of(images)[1].max(axis=1), rtol=1e-5, err_msg=name
        )
