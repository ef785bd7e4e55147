"""Calibrated probabilities: temperature scaling, with a class prior correction where it is needed.

A model trained to balance its classes (class weights, oversampling, logit adjustment) answers as
if every class were equally common. Its decision is what that training was for (a rare class is
found as often as a common one), but its probabilities then overstate the rare classes: on real
GZ1 galaxies, temperature alone left the cutouts it called mergers at 64 % confidence when 15 % of
them were mergers. So the calibrated probabilities are

    softmax(log p / T + b)

with T (Guo et al. 2017) and, where it helps, one bias per class (bias-corrected temperature
scaling, Alexandari et al. 2020), fitted on the validation split by negative log-likelihood. The
bias puts the catalogue's own class frequencies back into the probabilities. Temperature alone
is moved from 1 only as far as validation clearly supports (``one_standard_error_temperature``).

**The reported class never changes**: it is the argmax of the model's own answer (``decide``),
and the confidence is the calibrated probability of that class, so it says how often such a
label is right. With a bias, the most probable class can differ from the reported one (a
balanced decision calling a galaxy a merger at 17 %); without one they are always the same.
NumPy only: the Predictor applies it on the LiteRT path. The fits that find T and b run
after training, in ``galaxylib.fitting.calibration_fit``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def apply_calibration(probs: np.ndarray, temperature: float, bias: Sequence[float] | None = None) -> np.ndarray:
    """``softmax(log p / T + b)`` row by row; T = 1 and no bias return the probabilities as they are."""
    probs = np.asarray(probs, dtype=np.float64)
    if bias is None:
        if temperature == 1.0:
            return probs
        # the same as softmax(log p / T) in four NumPy calls (a served image pays for each one);
        # max p >= 1/C, so the sum never underflows
        out = np.power(np.maximum(probs, 1e-12), 1.0 / float(temperature))
        return out / out.sum(axis=-1, keepdims=True)
    return _softmax(np.log(np.maximum(probs, 1e-12)) / float(temperature) + np.asarray(bias, dtype=np.float64))


def _softmax(logits: np.ndarray) -> np.ndarray:
    out = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return out / out.sum(axis=-1, keepdims=True)


def _unbiased_logits(calibrated: np.ndarray, bias: Sequence[float]) -> np.ndarray:
    """``log q - b``: ``log p / T`` plus a constant per row."""
    return np.log(np.maximum(np.asarray(calibrated, dtype=np.float64), 1e-300)) - np.asarray(bias, dtype=np.float64)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)``: it rescales confidence without changing any row's argmax."""
    return apply_calibration(probs, temperature)


def decide(calibrated: np.ndarray, bias: Sequence[float] | None = None) -> np.ndarray:
    """The reported class of each row: the argmax of the model's own answer, read back from the
    calibrated probabilities."""
    if bias is None:
        return np.asarray(calibrated).argmax(axis=-1)
    scores = _unbiased_logits(calibrated, bias)
    # classes tied in the model's answer come back equal only to rounding: take the first, as argmax does
    return (scores >= scores.max(axis=-1, keepdims=True) - 1e-9).argmax(axis=-1)


def remove_bias(calibrated: np.ndarray, bias: Sequence[float] | None) -> np.ndarray:
    """``softmax(log q - b)``: the temperature-scaled answer, before the class bias (the
    balanced probabilities a balanced decision reads, such as folding classes together)."""
    if bias is None:
        return np.asarray(calibrated, dtype=np.float64)
    return _softmax(_unbiased_logits(calibrated, bias))
