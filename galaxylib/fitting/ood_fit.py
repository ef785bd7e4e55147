"""Fitting the out-of-distribution check an artifact carries: scorers, thresholds, the choice.

``galaxylib.inference.ood`` holds the scorers as a served model runs them; this module fits them
on the served model's train features (or pixel statistics), sets a threshold on validation
scores (``threshold_for``), measures separation (``auroc``) and chooses between scorers
(``choose_method``). ``galaxylib.pipeline.trust`` drives it after training. SciPy's binomial
distribution and scikit-learn's ROC AUC do the statistics; serving never imports them.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binom
from sklearn.metrics import roc_auc_score

from galaxylib.inference.ood import (
    METHODS,
    UNION,
    KNearest,
    Mahalanobis,
    MaxSoftmax,
    OODScorer,
    PixelGaussian,
    as_feature_matrix,
    unit_rows,
)

KEEP_FRACTION = 0.95  # at least this share of in-distribution cutouts is kept in by the threshold
CONFIDENCE = 0.99  # ... with this confidence, judged from the validation split (threshold_for; docs/trust.md: 0.9
# flagged over 5 % of test cutouts in 2 of 4 quick runs)
RANK = 256  # principal directions kept exactly; the rest share one variance (probabilistic PCA)


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray, shrinkage: float = 0.1, rank: int = RANK) -> Mahalanobis:
    """Class means and the shared within-class covariance of the train features, shrunk, kept as
    its ``rank`` leading eigenpairs and one variance for the rest."""
    x = as_feature_matrix(features)
    labels = np.asarray(labels, dtype=np.int64)
    mean = x.mean(axis=0)
    classes = np.unique(labels)
    centred = x - mean
    means = np.stack([centred[labels == c].mean(axis=0) for c in classes])
    within = centred - means[np.searchsorted(classes, labels)]
    cov = within.T @ within / max(len(x) - len(classes), 1)
    # Shrink toward a scaled identity: with about as many train images as feature dimensions
    # (3,000 against 1,280) the raw covariance is near-singular.
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / len(cov) * np.eye(len(cov))
    eigval, eigvec = np.linalg.eigh(cov)  # ascending
    k = min(int(rank), len(eigval))
    rest = float(eigval[:-k].mean()) if k < len(eigval) else float(eigval[0])
    return Mahalanobis(
        mean=mean,
        basis=eigvec[:, -k:],
        variances=np.maximum(eigval[-k:], 1e-12),
        rest_variance=max(rest, 1e-12),
        class_means=means,
    )


def fit_knn(features: np.ndarray, k: int = 10, max_bank: int = 4000, seed: int = 0, rank: int = RANK) -> KNearest:
    """A bank of up to ``max_bank`` unit train features, in their ``rank`` leading directions."""
    x = unit_rows(as_feature_matrix(features))
    if len(x) > max_bank:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), max_bank, replace=False))]
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    basis = vt[: min(int(rank), len(vt))].T
    return KNearest(basis=basis, bank=x @ basis, k=min(int(k), len(x)))


def fit_pixels(pixels: np.ndarray, shrinkage: float = 0.1) -> PixelGaussian:
    """The mean and shrunk precision of the train cutouts' ``pixel_statistics``."""
    x = np.asarray(pixels, dtype=np.float64)
    if len(x) < 2:
        raise ValueError("the pixels OOD check needs the statistics of at least 2 train cutouts")
    cov = np.cov(x, rowvar=False)
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / len(cov) * np.eye(len(cov))
    return PixelGaussian(mean=x.mean(axis=0), precision=np.linalg.inv(cov))


def fit_scorer(
    method: str, features: np.ndarray | None, labels: np.ndarray, seed: int = 0, pixels: np.ndarray | None = None
) -> OODScorer:
    """One scorer of ``METHODS``, fitted on train features (or pixel statistics)."""
    if method == "pixels":
        if pixels is None:
            raise ValueError("the pixels OOD check is fitted on the train cutouts' pixel_statistics")
        return fit_pixels(pixels)
    if method == "mahalanobis":
        return fit_mahalanobis(features, labels)
    if method == "knn":
        return fit_knn(features, seed=seed)
    if method == "max_softmax":
        return MaxSoftmax()
    raise ValueError(f"OOD method must be one of {', '.join(METHODS)}, not {method!r}")


def allowed_above(n: int, keep: float = KEEP_FRACTION, confidence: float = CONFIDENCE) -> int:
    """How many of ``n`` validation scores may lie above the threshold: the largest k with
    P(Binomial(n, 1 - keep) <= k) <= 1 - confidence, or -1 when even k = 0 exceeds it.

    SciPy's binomial CDF, in log space inside, holds for any n (a sum of ``comb(n, k) * p**k``
    terms overflows a float from n = 4,085)."""
    rate, tail = 1.0 - keep, 1.0 - confidence
    # the answer lies below the tail's quantile + 1, so only that many CDF values are needed
    last = min(n, int(binom.ppf(tail, n, rate)) + 1)
    cdf = binom.cdf(np.arange(last + 1), n, rate)
    return int(np.searchsorted(cdf, tail, side="right")) - 1


def threshold_for(scores: np.ndarray, keep: float = KEEP_FRACTION, confidence: float = CONFIDENCE) -> float:
    """The OOD threshold from in-distribution validation scores.

    Keeping exactly ``keep`` of the validation cutouts would flag more than ``1 - keep`` of new
    cutouts about half the time. So the threshold lets through only as many validation scores
    above it as keep the exact (Clopper-Pearson) upper ``confidence`` bound on the flag rate at
    ``1 - keep``: for 750 validation cutouts, 23 above it (96.9 % kept, not 95 %)."""
    values = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(values)
    if n == 0:
        raise ValueError("no validation scores to set a threshold on")
    return float(values[n - 1 - max(allowed_above(n, keep, confidence), 0)])


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """P(score of an OOD input > score of an in-distribution one), ties counted half; NaN when
    either side is empty."""
    a = np.asarray(in_scores, dtype=np.float64)
    b = np.asarray(out_scores, dtype=np.float64)
    if not len(a) or not len(b):
        return float("nan")
    return float(roc_auc_score(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b]))


def choose_method(selection: dict[str, dict[str, float]]) -> str:
    """The union of the features' and the pixels' checks when it flags at least as many selection
    cases as any single scorer at its own threshold (the operating point, where 95 % of validation
    stays in); otherwise the scorer that flags the most, AUROC breaking ties. A NaN never wins.

    The selection cases cannot tell apart scorers that all flag nearly every one of them, and a
    lead there said nothing about other inputs: a quick model's Mahalanobis check, kept for an AUROC
    lead of 0.0006, flagged 42.5-57.5 % of unseen LFW faces, which the pixel statistics flag at 97.5 %.
    The union catches what either part finds strange enough (docs/trust.md)."""

    def known(value: float) -> float:  # a NaN (no cases to judge on) never wins
        return value if math.isfinite(value) else -math.inf

    if not selection:
        raise ValueError("no OOD scorer to choose from")
    best = max((known(v["flagged_fraction"]) for m, v in selection.items() if m != UNION), default=-math.inf)
    if UNION in selection and known(selection[UNION]["flagged_fraction"]) >= best:
        return UNION
    return max(selection, key=lambda m: (known(selection[m]["flagged_fraction"]), known(selection[m]["auroc"])))
