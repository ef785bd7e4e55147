"""Fitting the calibration an artifact carries: a temperature, and a class bias where it helps.

``galaxylib.inference.calibration`` holds what the Predictor applies, ``softmax(log p / T + b)``,
and why. This module finds T and b on the validation split, after training: temperature scaling
(Guo et al. 2017) moved from 1 only as far as validation clearly supports
(``one_standard_error_temperature``), and a per-class bias (Alexandari et al. 2020) kept only when
cross-validation on the validation split says it lowers the NLL (``fit_calibration``). SciPy and
scikit-learn do the optimisation and the folds; serving never imports them.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize
from sklearn.model_selection import StratifiedKFold

from galaxylib.inference.calibration import apply_calibration, apply_temperature

FOLDS = 5  # the bias is judged by cross-validation on the validation split ...
MIN_GAIN = 0.01  # ... and kept only when it lowers that NLL by at least this share: a model whose
# classes were balanced all along keeps temperature alone, and its class stays its most probable one
MIN_ERRORS = 5  # fewer misclassified validation cutouts than this leave temperature alone at 1


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(_nll_each(probs, labels)))


def _nll_each(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    picked = probs[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)]
    return -np.log(np.clip(picked, 1e-12, 1.0))


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the NLL of ``labels``: a log grid, then golden section."""
    if len(labels) == 0:
        raise ValueError("no examples to fit a temperature on")

    def loss(log_t: float) -> float:
        return negative_log_likelihood(apply_temperature(probs, math.exp(log_t)), labels)

    grid = np.linspace(math.log(0.05), math.log(20.0), 61)
    best = int(np.argmin([loss(g) for g in grid]))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    for _ in range(40):
        if loss(a) < loss(b):
            hi = b
        else:
            lo = a
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    return float(math.exp((lo + hi) / 2))


def one_standard_error_temperature(probs: np.ndarray, labels: np.ndarray, fitted: float, steps: int = 40) -> float:
    """The temperature nearest 1, on the way from 1 to ``fitted``, whose NLL on these cutouts lies
    within one standard error of ``fitted``'s (the per-cutout differences, paired); 1 itself when
    fewer than ``MIN_ERRORS`` cutouts are misclassified. Adapted from the one-standard-error rule
    of Hastie, Tibshirani & Friedman (ESL 2nd ed., section 7.10), which applies it to a
    cross-validated error.

    A model that already answers nearly calibrated has a handful of validation errors, and the
    NLL optimum follows them: a temperature fitted to 7 uncertain errors sharpened the quick
    model (T 0.65) and made its test NLL worse, because 2 of test's 8 errors were confident. With
    no error at all the optimum is as sharp as the search allows (every right answer gains), and
    the per-cutout differences all share a sign, so one standard error would not hold it back:
    hence the minimum. On simulated models (bench/temperature_rule.py, docs/trust.md) this rarely
    makes test NLL worse where the optimum often does, and keeps most of the optimum's gain where
    the model is miscalibrated."""
    if _errors(probs, labels) < MIN_ERRORS:
        return 1.0
    fitted_losses = _nll_each(apply_temperature(probs, fitted), labels)
    for log_t in np.linspace(0.0, math.log(fitted), steps + 1):
        diff = _nll_each(apply_temperature(probs, math.exp(log_t)), labels) - fitted_losses
        if diff.mean() <= diff.std(ddof=1) / math.sqrt(len(diff)):
            return float(math.exp(log_t))
    return float(fitted)


def _errors(probs: np.ndarray, labels: np.ndarray) -> int:
    return int((np.asarray(probs).argmax(axis=-1) != np.asarray(labels, dtype=np.int64)).sum())


def fit_temperature_and_bias(probs: np.ndarray, labels: np.ndarray) -> tuple[float, list[float]]:
    """T and the per-class bias that minimise the NLL of ``labels`` (the loss is convex in 1/T and
    b, so L-BFGS from T = 1, b = 0 finds the optimum). The bias is returned centred on zero."""
    if len(labels) == 0:
        raise ValueError("no examples to fit a calibration on")
    log_p = np.log(np.maximum(np.asarray(probs, dtype=np.float64), 1e-12))
    labels = np.asarray(labels, dtype=np.int64)
    onehot = np.eye(log_p.shape[1])[labels]

    def loss_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
        inverse_t, bias = theta[0], theta[1:]
        logits = log_p * inverse_t + bias
        logits = logits - logits.max(axis=1, keepdims=True)
        log_q = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        residual = (np.exp(log_q) - onehot) / len(labels)
        return float(-log_q[np.arange(len(labels)), labels].mean()), np.r_[
            (residual * log_p).sum(), residual.sum(axis=0)
        ]

    start = np.r_[1.0, np.zeros(log_p.shape[1])]
    bounds = [(1 / 20.0, 1 / 0.05)] + [(None, None)] * log_p.shape[1]
    theta = minimize(loss_and_gradient, start, jac=True, method="L-BFGS-B", bounds=bounds).x
    bias = theta[1:] - theta[1:].mean()
    return float(1.0 / theta[0]), [float(b) for b in bias]


def cross_validated_nll(
    probs: np.ndarray, labels: np.ndarray, with_bias: bool, folds: int = FOLDS, seed: int = 0
) -> float:
    """Mean held-out NLL of the calibration fitted on the other folds (stratified, seeded)."""
    labels = np.asarray(labels, dtype=np.int64)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    losses = []
    for fit_rows, held_rows in splitter.split(probs, labels):  # every class has >= folds (fit_calibration)
        if with_bias:
            t, b = fit_temperature_and_bias(probs[fit_rows], labels[fit_rows])
        else:
            t, b = fit_temperature(probs[fit_rows], labels[fit_rows]), None
        losses.append(
            negative_log_likelihood(apply_calibration(probs[held_rows], t, b), labels[held_rows]) * len(held_rows)
        )
    return float(np.sum(losses) / len(labels))


def fit_calibration(probs: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict:
    """Temperature alone (by the one-standard-error rule), or temperature and a class bias where
    cross-validation on these (validation) cutouts says the bias helps; the bias is only tried when
    every class has at least ``FOLDS`` of them and at least ``MIN_ERRORS`` cutouts are misclassified.
    Returns what the artifact stores."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    best = fit_temperature(probs, labels)
    alone = {
        "method": "temperature",
        "temperature": one_standard_error_temperature(probs, labels, best),
        "temperature_nll_optimum": best,
        "temperature_rule": "one standard error",
        "bias": None,
    }
    if np.bincount(labels, minlength=probs.shape[1]).min() < FOLDS or _errors(probs, labels) < MIN_ERRORS:
        # a class absent from (or nearly absent in) validation would get a bias no fold can judge,
        # and with almost no errors the bias's optimum runs to the edge as the temperature's does
        return {**alone, "cv_nll": None}
    # each candidate at its NLL optimum: the question here is whether a bias helps at all
    cv = {
        "temperature": cross_validated_nll(probs, labels, False, seed=seed),
        "temperature_and_bias": cross_validated_nll(probs, labels, True, seed=seed),
    }
    if cv["temperature_and_bias"] <= (1 - MIN_GAIN) * cv["temperature"]:
        # kept only for a large, systematic miscalibration (the class frequencies), fitted at its optimum
        temperature, bias = fit_temperature_and_bias(probs, labels)
        return {"method": "temperature_and_bias", "temperature": temperature, "bias": bias, "cv_nll": cv}
    return {**alone, "cv_nll": cv}
