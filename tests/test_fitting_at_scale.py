"""Every fit of the calibration and the OOD check works at survey scale: 20,000 validation cutouts.

The threshold once summed ``comb(n, k) * rate**k`` terms, which overflow a float from n = 4,085:
a run with a validation split of 4,260 images crashed after training. These tests run each fitting
step on 20,000 validation (and 30,000 train) examples, with a model that is not calibrated.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from galaxylib.fitting.calibration_fit import fit_calibration, negative_log_likelihood
from galaxylib.fitting.ood_fit import (
    CONFIDENCE,
    KEEP_FRACTION,
    allowed_above,
    auroc,
    choose_method,
    fit_scorer,
    threshold_for,
)
from galaxylib.inference.calibration import apply_calibration
from galaxylib.inference.ood import METHODS, UnionScorer

N_VAL, N_TRAIN, CLASSES, DIM = 20_000, 30_000, 4, 64


def survey(seed: int = 0):
    """Features in four clusters, and an overconfident classifier with lopsided classes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(CLASSES, DIM))

    def draw(n: int):
        labels = rng.choice(CLASSES, size=n, p=[0.6, 0.25, 0.1, 0.05])
        features = centres[labels] + rng.normal(size=(n, DIM))
        evidence = rng.normal(size=(n, CLASSES))
        evidence[np.arange(n), labels] += 1.5  # right about three times in four ...
        logits = 3.0 * evidence  # ... and three times too sure of itself
        probs = np.exp(logits - logits.max(1, keepdims=True))
        return features, labels, probs / probs.sum(1, keepdims=True)

    return draw(N_TRAIN), draw(N_VAL)


def test_the_threshold_holds_for_any_number_of_validation_scores():
    # the count of scores allowed above it grows with n and never overflows
    counts = [allowed_above(n) for n in (750, 4_084, 4_085, 4_260, 20_000, 1_000_000)]
    assert counts[0] == 23 and counts == sorted(counts) and counts[-1] > 49_000
    for n in (4_260, 20_000):  # each count is the largest whose binomial tail stays within 1 - confidence
        from scipy.stats import binom

        k = allowed_above(n)
        assert binom.cdf(k, n, 1 - KEEP_FRACTION) <= 1 - CONFIDENCE < binom.cdf(k + 1, n, 1 - KEEP_FRACTION)
    scores = np.random.default_rng(1).normal(size=N_VAL)
    threshold = threshold_for(scores)
    kept = (scores <= threshold).mean()
    assert KEEP_FRACTION < kept < KEEP_FRACTION + 0.01  # at 20,000 the bound costs little


@pytest.mark.parametrize("method", METHODS)
def test_each_scorer_fits_thresholds_and_separates_at_survey_scale(method):
    (train_x, train_y, _), (val_x, val_y, val_p) = survey()
    pixels = train_x[:, :17]
    scorer = fit_scorer(method, train_x, train_y, pixels=pixels)
    s_in = scorer.score(val_x, val_p, val_x[:, :17])
    far = val_x[:2_000] * 4.0 + 20.0  # far from every cluster
    s_out = scorer.score(far, np.full((len(far), CLASSES), 1 / CLASSES), far[:, :17])
    threshold = threshold_for(s_in)
    assert np.isfinite(threshold) and (s_in <= threshold).mean() >= KEEP_FRACTION
    assert auroc(s_in, s_out) > 0.99
    if method != "max_softmax":
        assert (s_out > threshold).mean() > 0.99


def test_the_union_and_the_choice_at_survey_scale():
    (train_x, train_y, _), (val_x, _, val_p) = survey()
    parts = [fit_scorer("mahalanobis", train_x, train_y), fit_scorer("pixels", None, train_y, pixels=train_x[:, :17])]
    scales = [threshold_for(p.score(val_x, val_p, val_x[:, :17])) for p in parts]
    union = UnionScorer(parts[0], parts[1], scales=np.array(scales))
    s_in = union.score(val_x, val_p, val_x[:, :17])
    assert math.isfinite(threshold_for(s_in))
    selection = {
        "mahalanobis": {"auroc": 0.999, "flagged_fraction": 1.0},
        "knn": {"auroc": 0.99, "flagged_fraction": 0.9},
    }
    assert choose_method({**selection, "mahalanobis+pixels": {"auroc": 1.0, "flagged_fraction": 1.0}}) == (
        "mahalanobis+pixels"
    )


def test_the_calibration_fits_20000_validation_cutouts_and_lowers_their_nll():
    _, (_, val_y, val_p) = survey()
    fitted = fit_calibration(val_p, val_y)
    assert fitted["method"] in ("temperature", "temperature_and_bias")
    calibrated = apply_calibration(val_p, fitted["temperature"], fitted["bias"])
    assert fitted["temperature"] > 1.5  # it finds how overconfident the model is
    assert negative_log_likelihood(calibrated, val_y) < 0.8 * negative_log_likelihood(val_p, val_y)
