"""Calibration (applied: galaxylib/inference/calibration.py; fitted: galaxylib/fitting/calibration_fit.py):
a temperature, and a class bias for a model
whose training balanced its classes, fitted by NLL on validation; the reported class never changes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from galaxylib.evaluation.metrics import ece_noise_floor, evaluate, expected_calibration_error
from galaxylib.fitting.calibration_fit import (
    fit_calibration,
    fit_temperature,
    fit_temperature_and_bias,
    negative_log_likelihood,
    one_standard_error_temperature,
)
from galaxylib.inference.calibration import apply_calibration, apply_temperature, decide, remove_bias

PRIOR = np.array([0.70, 0.16, 0.12, 0.02])  # GZ1's coarse classes are about this lopsided


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def balanced_model(n: int, prior: np.ndarray = PRIOR, overconfidence: float = 1.5, seed: int = 0):
    """A model that answers as if every class were equally common (what class weights or logit
    adjustment train for), on a catalogue whose classes follow ``prior``: the truth is
    softmax(z + log prior) while the model reports softmax(overconfidence * z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.6, size=(n, len(prior)))
    truth = softmax(z + np.log(prior))
    labels = (rng.random((n, 1)) > np.cumsum(truth, axis=1)).sum(axis=1).clip(max=len(prior) - 1)
    return softmax(overconfidence * z), labels


def per_class_confidence_and_precision(probs, decisions, labels):
    rows = np.arange(len(labels))
    return {
        c: (probs[rows, decisions][decisions == c].mean(), (labels[decisions == c] == c).mean())
        for c in np.unique(decisions)
    }


def test_the_bias_puts_the_catalogues_class_frequencies_back_and_keeps_every_reported_class():
    raw, labels = balanced_model(20000)
    temperature, bias = fit_temperature_and_bias(raw, labels)
    assert temperature == pytest.approx(1.5, rel=0.05)
    expected = np.log(PRIOR) - np.log(PRIOR).mean()
    np.testing.assert_allclose(bias, expected, atol=0.12)
    calibrated = apply_calibration(raw, temperature, bias)
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0)
    assert np.array_equal(decide(calibrated, bias), raw.argmax(axis=1))  # no class changes
    assert not np.array_equal(calibrated.argmax(axis=1), raw.argmax(axis=1))  # though the most probable may
    np.testing.assert_allclose(remove_bias(calibrated, bias), apply_temperature(raw, temperature), atol=1e-9)
    t_only = apply_temperature(raw, fit_temperature(raw, labels))
    assert negative_log_likelihood(calibrated, labels) < negative_log_likelihood(t_only, labels) - 0.1


def test_with_the_bias_a_rare_class_is_reported_at_the_confidence_it_earns():
    """Temperature alone leaves the rare class's confidence far above how often it is right
    (the GZ1 mergers: 64 % confident, 15 % right); with the bias they agree class by class."""
    raw, labels = balanced_model(20000, seed=1)
    fit_raw, fit_labels = raw[:10000], labels[:10000]
    held_raw, held_labels = raw[10000:], labels[10000:]
    decisions = held_raw.argmax(axis=1)
    t, b = fit_temperature_and_bias(fit_raw, fit_labels)
    with_bias = per_class_confidence_and_precision(apply_calibration(held_raw, t, b), decisions, held_labels)
    alone = per_class_confidence_and_precision(
        apply_temperature(held_raw, fit_temperature(fit_raw, fit_labels)), decisions, held_labels
    )
    rare = 3
    assert alone[rare][0] - alone[rare][1] > 0.3
    for c, (confidence, precision) in with_bias.items():
        assert confidence == pytest.approx(precision, abs=0.04), c


def test_the_bias_is_kept_only_where_cross_validation_says_it_helps():
    raw, labels = balanced_model(2000, seed=2)
    chosen = fit_calibration(raw, labels)
    assert chosen["method"] == "temperature_and_bias" and len(chosen["bias"]) == 4
    assert chosen["cv_nll"]["temperature_and_bias"] < chosen["cv_nll"]["temperature"]
    for seed in range(3):  # classes balanced all along: temperature alone, the class stays the most probable
        raw, labels = balanced_model(1000, prior=np.full(4, 0.25), seed=seed)
        chosen = fit_calibration(raw, labels, seed=seed)
        assert chosen["method"] == "temperature" and chosen["bias"] is None, chosen["cv_nll"]
        assert chosen["temperature"] == pytest.approx(1.5, rel=0.15)


def sharp_model(n: int, true_t: float, seed: int, margin: float = 9.0):
    """Ten classes at about 95 % accuracy (more with a larger margin): the model reports
    softmax(z), the truth is softmax(z / true_t) (true_t = 1: calibrated already)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.2, size=(n, 10))
    z[np.arange(n), rng.integers(0, 10, n)] += margin
    truth = softmax(z / true_t)
    return softmax(z), (rng.random((n, 1)) > np.cumsum(truth, axis=1)).sum(axis=1).clip(max=9)


def within_one_standard_error(probs, labels, t: float, best: float) -> bool:
    each = lambda temperature: -np.log(apply_temperature(probs, temperature)[np.arange(len(labels)), labels])  # noqa: E731
    diff = each(t) - each(best)
    return diff.mean() <= diff.std(ddof=1) / np.sqrt(len(diff))


def assert_first_within_one_standard_error(probs, labels, chosen: float, best: float) -> None:
    """``chosen`` is within one standard error of the optimum, and one step of the walk nearer 1 is not."""
    assert within_one_standard_error(probs, labels, chosen, best)
    a_step_nearer_1 = np.exp(np.log(chosen) - np.log(best) / 40)
    assert not within_one_standard_error(probs, labels, a_step_nearer_1, best)


def test_a_temperature_moves_from_1_only_as_far_as_validation_supports():
    # Calibrated already, 750 cutouts: the NLL optimum follows the errors away from 1 (T 0.84);
    # the rule stops near 1, at the first temperature within one standard error of the optimum.
    probs, labels = sharp_model(750, 1.0, seed=12)
    best = fit_temperature(probs, labels)
    chosen = one_standard_error_temperature(probs, labels, best)
    assert best < 0.87 and abs(np.log(chosen)) < 0.3 * abs(np.log(best)), (best, chosen)
    assert_first_within_one_standard_error(probs, labels, chosen, best)
    # Clearly underconfident, 3000 cutouts: most of the way to the optimum, far from 1.
    probs, labels = sharp_model(3000, 0.6, seed=5)
    best = fit_temperature(probs, labels)
    chosen = one_standard_error_temperature(probs, labels, best)
    assert best == pytest.approx(0.6, rel=0.1) and np.log(chosen) / np.log(best) > 0.7, (best, chosen)
    assert_first_within_one_standard_error(probs, labels, chosen, best)
    # fit_calibration stores the rule's temperature, and the optimum beside it
    stored = fit_calibration(probs, labels)
    assert stored["method"] == "temperature" and stored["temperature"] == pytest.approx(chosen)
    assert stored["temperature_nll_optimum"] == pytest.approx(best)


def test_with_almost_no_validation_errors_the_temperature_stays_1():
    # No error in 750: every right answer gains from sharpening, so the optimum runs to the edge
    # of the search (0.05), and the test split's first confident error would pay for it. One
    # error: the optimum (0.52) is set by how confident that one cutout was.
    for margin, errors, optimum_below in ((13.0, 0, 0.06), (12.3, 1, 0.6)):
        probs, labels = sharp_model(750, 0.7, seed=0, margin=margin)
        best = fit_temperature(probs, labels)
        assert int((probs.argmax(axis=1) != labels).sum()) == errors and best < optimum_below, best
        assert one_standard_error_temperature(probs, labels, best) == 1.0
        assert fit_calibration(probs, labels)["temperature"] == 1.0
    # MIN_ERRORS (5) is the edge: with 5 errors the rule may move T, with 4 it may not
    probs, labels = sharp_model(750, 0.7, seed=0, margin=11.0)
    wrong = np.flatnonzero(probs.argmax(axis=1) != labels)
    labels[wrong[: len(wrong) - 5]] = probs.argmax(axis=1)[wrong[: len(wrong) - 5]]
    assert int((probs.argmax(axis=1) != labels).sum()) == 5
    assert one_standard_error_temperature(probs, labels, fit_temperature(probs, labels)) < 0.95
    labels[wrong[-1]] = probs[wrong[-1]].argmax()
    assert one_standard_error_temperature(probs, labels, fit_temperature(probs, labels)) == 1.0


def test_the_evaluation_reads_the_reported_class_and_its_confidence():
    probs = np.tile([0.5, 0.3, 0.2], (10, 1))
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    assert expected_calibration_error(labels, probs)[0] == pytest.approx(0.2)  # class 0 at 0.5, right 7 in 10
    reported = np.ones(10, dtype=int)  # a balanced decision: class 1 at 0.3, right 3 in 10
    assert expected_calibration_error(labels, probs, decisions=reported)[0] == pytest.approx(0.0)
    labels[:3] = 0  # class 1 now never right while reported at 0.3
    assert expected_calibration_error(labels, probs, decisions=reported)[0] == pytest.approx(0.3)
    assert expected_calibration_error(labels, probs)[0] == pytest.approx(0.5)
    results = evaluate(labels, probs, ("a", "b", "c"), decisions=reported)
    assert results["accuracy"] == 0.0 and np.asarray(results["confusion_matrix"])[:, 1].sum() == 10
    assert results["per_class"][1]["mean_confidence"] == pytest.approx(0.3)
    assert results["per_class"][0]["mean_confidence"] is None  # never reported
    floor = ece_noise_floor(probs, decisions=reported, seed=0)
    assert floor["median"] > 0 and floor != ece_noise_floor(probs, seed=0)


def test_a_tie_in_the_models_answer_is_reported_as_argmax_reports_it():
    raw = np.array([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    bias = [-0.06, -1.85, 1.86, 0.05]
    assert decide(apply_calibration(raw, 1.16, bias), bias).tolist() == raw.argmax(axis=1).tolist() == [0, 0]


def test_a_class_too_rare_in_validation_to_judge_gets_no_bias():
    raw, labels = balanced_model(2000, seed=3)
    labels = np.where(labels == 3, 2, labels)  # the rare class absent from validation
    assert fit_calibration(raw, labels)["method"] == "temperature"
    labels[:4] = 3  # four of it: fewer than the folds
    assert fit_calibration(raw, labels)["bias"] is None
    labels[:5] = 3  # five, one per fold: judged
    assert fit_calibration(raw, labels)["method"] == "temperature_and_bias"


def test_the_predictor_reports_the_models_class_at_its_calibrated_probability(tiny_artifact, tmp_path, sample_files):
    from support import add_trust_check

    from galaxylib.artifact import add_to_artifact
    from galaxylib.inference.predictor import Predictor

    run = tmp_path / "biased"
    shutil.copytree(tiny_artifact, run)
    add_trust_check(run, tmp_path / "work", methods=("max_softmax",))  # an OOD check beside the bias
    plain = Predictor(run, trust=False)
    inputs = np.stack([plain.preprocess(f) for f in sample_files[:6]])
    raw, _ = plain.forward(inputs)
    bias = np.zeros(raw.shape[1])
    bias[int(np.argmin(raw.mean(axis=0)))] = 6.0  # makes the least likely class the most probable
    add_to_artifact(run, {"calibration": {"method": "temperature_and_bias", "temperature": 0.8, "bias": bias.tolist()}})
    predictor = Predictor(run)
    assert predictor.trust.bias == tuple(bias) and predictor.has_ood
    expected = apply_calibration(raw, 0.8, bias)
    for i, prediction in enumerate(predictor.predict_batch(sample_files[:6])):
        assert prediction.class_index == int(raw[i].argmax())
        assert prediction.confidence == pytest.approx(expected[i, prediction.class_index], rel=1e-4)
        assert list(prediction.probabilities.values()) == pytest.approx(list(expected[i]), rel=1e-4)
        assert max(prediction.probabilities, key=prediction.probabilities.get) != prediction.predicted_class
        # the OOD score reads the calibrated probabilities: 1 - the largest, here not the reported class's
        assert prediction.ood_score == pytest.approx(1 - expected[i].max(), rel=1e-4)
        ranked = [predictor.class_names[j] for j in np.argsort(-expected[i])]
        assert [name for name, _ in prediction.top_classes] == ranked[: len(prediction.top_classes)]
