"""The out-of-distribution scorers as a served model runs them: NumPy only.

A score on the model's pooled backbone features (its TFLite export's second output), or on
summary statistics of the model input itself, larger for inputs less like the training
cutouts. ``in_distribution`` is ``score <= threshold`` (``galaxylib.inference.trust_check``).
Four scorers and the union of two: ``mahalanobis`` (class-conditional Gaussians with a shared,
shrunk covariance: Lee et al. 2018), ``knn`` (cosine distance to the k-th nearest train
feature: Sun et al. 2022), ``max_softmax`` (1 - the largest calibrated probability: Hendrycks &
Gimpel 2017), ``pixels`` (a Gaussian on ``pixel_statistics``: a sky border, centre, colours and
texture, which hold for a model whose features separate little) and ``mahalanobis+pixels``
(``UnionScorer``). They are fitted after training by ``galaxylib.fitting.ood_fit`` and travel
in the artifact's ``ood.npz``; here they are only read back and applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

OOD_FILE = "ood.npz"
METHODS = ("mahalanobis", "knn", "max_softmax", "pixels")


class OODScorer(Protocol):
    method: str

    def score(self, features: np.ndarray | None, probs: np.ndarray, pixels: np.ndarray | None = None) -> np.ndarray: ...

    def arrays(self) -> dict[str, np.ndarray]: ...


def as_feature_matrix(features: np.ndarray | None) -> np.ndarray:
    if features is None:
        raise ValueError("this OOD scorer needs the model's features output")
    return np.asarray(features, dtype=np.float64).reshape(len(features), -1)


@dataclass(frozen=True)
class Mahalanobis:
    """Distance to the nearest class mean under the shared (shrunk) covariance of the train features.

    The covariance is kept as its leading eigenpairs (256: ``galaxylib.fitting.ood_fit.RANK``) plus one variance for every other
    direction (their mean eigenvalue), so a score costs a (D x 256) product, not (D x D): about
    0.05 ms per image for D = 1280, where the full matrix made a single image's score memory-bound."""

    mean: np.ndarray  # (D,) the train mean
    basis: np.ndarray  # (D, k) leading eigenvectors of the shrunk within-class covariance
    variances: np.ndarray  # (k,) their eigenvalues
    rest_variance: float  # the mean of the other D - k eigenvalues
    class_means: np.ndarray  # (C, D), centred on ``mean``
    method: str = "mahalanobis"

    def __post_init__(self) -> None:
        # float32 copies and the class means' projections, once: a score then does one (D x k)
        # product per image, where recomputing these would cost ten times that on every call
        means = np.asarray(self.class_means, dtype=np.float32)
        basis = np.asarray(self.basis, dtype=np.float32)
        object.__setattr__(
            self,
            "_fast",
            (
                np.asarray(self.mean, dtype=np.float32),
                basis,
                means,
                means @ basis,
                (means**2).sum(1),
                np.asarray(self.variances, dtype=np.float32),
            ),
        )

    def score(self, features: np.ndarray | None, probs: np.ndarray, pixels: np.ndarray | None = None) -> np.ndarray:
        mean, basis, means, means_z, means_sq, variances = self._fast
        f = as_feature_matrix(features).astype(np.float32) - mean
        diff = (f @ basis)[:, None, :] - means_z[None, :, :]  # (N, C, k)
        inside_sq = (diff**2).sum(-1)
        total = (f**2).sum(1)[:, None] - 2 * f @ means.T + means_sq[None, :]  # ||f - mu_c||^2
        outside = np.maximum(total - inside_sq, 0.0) / self.rest_variance
        return ((diff**2 / variances).sum(-1) + outside).min(axis=1).astype(np.float64) / len(mean)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "mean": self.mean.astype(np.float32),
            "basis": self.basis.astype(np.float32),
            "variances": self.variances.astype(np.float32),
            "rest_variance": np.array(self.rest_variance),
            "class_means": self.class_means.astype(np.float32),
        }


@dataclass(frozen=True)
class KNearest:
    """Cosine distance to the k-th nearest of (up to ``max_bank``) L2-normalised train features.

    Similarities are taken in the leading directions (256) of the normalised train features
    (almost all of their energy), so a score reads a (N x 256) bank, not (N x D)."""

    basis: np.ndarray  # (D, r)
    bank: np.ndarray  # (N, r): the unit train features in that basis
    k: int = 10
    method: str = "knn"

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "_fast",
            (np.asarray(self.basis, dtype=np.float32), np.ascontiguousarray(np.asarray(self.bank, dtype=np.float32).T)),
        )

    def score(self, features: np.ndarray | None, probs: np.ndarray, pixels: np.ndarray | None = None) -> np.ndarray:
        basis, bank_t = self._fast
        similarity = (unit_rows(as_feature_matrix(features)).astype(np.float32) @ basis) @ bank_t
        kth = np.partition(-similarity, self.k - 1, axis=1)[:, self.k - 1]
        return (1.0 + kth).astype(np.float64)  # 1 - the k-th largest cosine similarity

    def arrays(self) -> dict[str, np.ndarray]:
        return {"basis": self.basis.astype(np.float32), "bank": self.bank.astype(np.float32), "k": np.array(self.k)}


@dataclass(frozen=True)
class MaxSoftmax:
    """1 - the largest calibrated probability: needs no features, so it works for any artifact."""

    method: str = "max_softmax"

    def score(self, features: np.ndarray | None, probs: np.ndarray, pixels: np.ndarray | None = None) -> np.ndarray:
        return 1.0 - np.asarray(probs, dtype=np.float64).max(axis=1)

    def arrays(self) -> dict[str, np.ndarray]:
        return {}


def pixel_statistics(batch: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) model inputs in 0..255 -> (N, 17) statistics of the pixels: per colour the mean
    and log spread of the border ring (a cutout's sky) and of the centre (its galaxy), and the whole
    frame's mean less the border's; the log texture (mean absolute neighbour difference) and the
    saturated share. Read on every ``S // 64``-th pixel, so it costs little at any size.

    A served image pays for this, so it works channel-first on a contiguous float64 copy, and takes
    the border from the frame's sums less the inner square's: 0.09 ms for one 224 px image (a one-off
    timing), against 0.41 ms for the same statistics by masked indexing and reductions over the channel-last axes
    (up to 3 December; the two agree to 4e-6, and to 3e-4 on a constant frame, whose float32 spread
    was not quite 0)."""
    x = np.asarray(batch, dtype=np.float32)
    step = max(1, x.shape[1] // 64)
    x = np.ascontiguousarray(x[:, ::step, ::step, :].transpose(0, 3, 1, 2), dtype=np.float64) / 255.0
    n, h = x.shape[0], x.shape[2]
    edge = max(1, h // 8)  # the border ring's width, and half the central square's
    flat = x.reshape(n, 3, h * h)
    inner = x[:, :, edge : h - edge, edge : h - edge]
    total_sum, inner_sum = flat.sum(-1), inner.sum((2, 3))
    total_sq, inner_sq = np.einsum("ncp,ncp->nc", flat, flat), np.einsum("ncij,ncij->nc", inner, inner)
    count = h * h - inner.shape[2] * inner.shape[3]
    border_mean = (total_sum - inner_sum) / count
    border_std = np.sqrt(np.maximum((total_sq - inner_sq) / count - border_mean**2, 0.0))
    centre = x[:, :, h // 2 - edge : h // 2 + edge, h // 2 - edge : h // 2 + edge].reshape(n, 3, -1)
    centre_mean = centre.mean(-1)
    centre_std = np.sqrt(np.maximum((centre**2).mean(-1) - centre_mean**2, 0.0))
    lum = (x[:, 0] + x[:, 1] + x[:, 2]) / 3.0
    texture = np.abs(np.diff(lum, axis=1)).mean((1, 2)) + np.abs(np.diff(lum, axis=2)).mean((1, 2))
    floor = 1.0 / 255
    columns = [
        border_mean,
        np.log(border_std + floor),
        centre_mean,
        np.log(centre_std + floor),
        total_sum / (h * h) - border_mean,
        np.log(texture + floor)[:, None],
        (lum > 0.98).reshape(n, -1).mean(-1)[:, None],
    ]
    return np.concatenate(columns, axis=1)


@dataclass(frozen=True)
class PixelGaussian:
    """Squared Mahalanobis distance (per dimension) of an input's ``pixel_statistics`` from the
    train cutouts' (their mean and shrunk covariance)."""

    mean: np.ndarray  # (17,)
    precision: np.ndarray  # (17, 17)
    method: str = "pixels"

    def score(self, features: np.ndarray | None, probs: np.ndarray, pixels: np.ndarray | None = None) -> np.ndarray:
        if pixels is None:
            raise ValueError("the pixels OOD check needs the inputs' pixel_statistics")
        d = np.asarray(pixels, dtype=np.float64) - self.mean
        return np.einsum("ij,jk,ik->i", d, self.precision, d) / len(self.mean)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"pixel_mean": self.mean, "pixel_precision": self.precision}


UNION = "mahalanobis+pixels"


@dataclass(frozen=True)
class UnionScorer:
    """The larger of the two scores, each divided by its own validation threshold (``scales``), so
    1 is where either part alone would flag. The union is thresholded again on validation (at
    1.18-1.32 in the runs of 3 December: each part then flags a little above its own threshold),
    so an input that only one part finds strange is caught when that part finds it strange enough:
    the features see what the network learnt, the pixel statistics what any cutout looks like
    (LFW faces, which a quick model's features let through)."""

    features: Mahalanobis
    pixels: PixelGaussian
    scales: np.ndarray  # (2,) the parts' thresholds on validation
    method: str = UNION

    def __post_init__(self) -> None:
        scales = np.asarray(self.scales, dtype=np.float64)
        if scales.shape != (2,) or not np.all(np.isfinite(scales)) or np.any(scales <= 0):
            raise ValueError(f"the union OOD check needs two positive, finite scales, not {self.scales!r}")

    def score(self, features: np.ndarray | None, probs: np.ndarray, pixels: np.ndarray | None = None) -> np.ndarray:
        return np.maximum(
            self.features.score(features, probs) / float(self.scales[0]),
            self.pixels.score(None, probs, pixels) / float(self.scales[1]),
        )

    def arrays(self) -> dict[str, np.ndarray]:
        return {**self.features.arrays(), **self.pixels.arrays(), "union_scales": np.asarray(self.scales, np.float64)}


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def load_scorer(method: str, path: Path | None) -> OODScorer:
    """The scorer an artifact names, from its ``ood.npz``."""
    if method == "max_softmax":
        return MaxSoftmax()
    if path is None or not path.is_file():
        raise FileNotFoundError(f"the {method} OOD check needs {OOD_FILE}, which is missing")
    with np.load(path) as data:
        if method in ("mahalanobis", UNION):
            features = Mahalanobis(
                mean=data["mean"],
                basis=data["basis"],
                variances=data["variances"],
                rest_variance=float(data["rest_variance"]),
                class_means=data["class_means"],
            )
            if method == "mahalanobis":
                return features
            return UnionScorer(
                features,
                PixelGaussian(mean=data["pixel_mean"], precision=data["pixel_precision"]),
                scales=np.asarray(data["union_scales"], dtype=np.float64),
            )
        if method == "knn":
            return KNearest(basis=data["basis"], bank=data["bank"], k=int(data["k"]))
        if method == "pixels":
            return PixelGaussian(mean=data["pixel_mean"], precision=data["pixel_precision"])
    raise ValueError(f"unknown OOD method {method!r} in the artifact")
