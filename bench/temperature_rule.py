"""Does the fitted temperature make held-out NLL worse? The NLL optimum against the
one-standard-error rule (``one_standard_error_temperature``), on simulated models.

Usage: .venv/bin/python bench/temperature_rule.py [--repeats 150] [--n 750]

Each repeat draws a validation and a test split of ``--n`` cutouts from a ten-class model whose
true labels follow ``softmax(z / T*)`` while it reports ``softmax(z)``: T* = 1 is a model that is
calibrated already, T* < 1 one that is underconfident (as orientation averaging makes a model),
T* > 1 an overconfident one. The temperature is fitted on validation both ways; the test NLL is
compared with the model's own. Prints, per T*, the mean test NLL of each and how often each made
it worse than no scaling at all (a draw where the rule keeps T = 1 is a tie, not worse). Two
regimes: about 96-98 % accuracy (~10-30 validation errors), and 99-99.9 % (0-8 errors, where the
rule's minimum of ``MIN_ERRORS`` errors decides). NumPy only, about 15 s.
"""

from __future__ import annotations

import argparse

import numpy as np

from galaxylib.fitting.calibration_fit import fit_temperature, negative_log_likelihood, one_standard_error_temperature  # noqa: E402
from galaxylib.inference.calibration import apply_temperature  # noqa: E402

CLASSES = 10


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def draw(rng: np.random.Generator, n: int, true_t: float, spread: float, margin: float):
    """Probabilities the model reports, and labels drawn from the calibrated truth."""
    z = rng.normal(0, spread, (n, CLASSES))
    z[np.arange(n), rng.integers(0, CLASSES, n)] += margin
    truth = softmax(z / true_t)
    labels = (rng.random((n, 1)) > np.cumsum(truth, axis=1)).sum(axis=1).clip(max=CLASSES - 1)
    return softmax(z), labels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=150)
    parser.add_argument("--n", type=int, default=750, help="cutouts in each of validation and test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"{args.repeats} repeats of {args.n} validation + {args.n} test cutouts, {CLASSES} classes")
    print(
        "| true T* | test accuracy | validation errors (median) | test NLL, no scaling | at the NLL optimum "
        "(worse in) | one standard error (worse in) | share of the optimum's gain kept |"
    )
    print("|---|---|---|---|---|---|---|")
    for margin in (4.2, 5.6):
        for true_t in (0.65, 0.7, 0.8, 1.0, 1.3):
            rows = []
            for _ in range(args.repeats):
                val_p, val_y = draw(rng, args.n, true_t, 2.2, 2.2 * margin)
                test_p, test_y = draw(rng, args.n, true_t, 2.2, 2.2 * margin)
                optimum = fit_temperature(val_p, val_y)
                rule = one_standard_error_temperature(val_p, val_y, optimum)
                rows.append(
                    (
                        negative_log_likelihood(test_p, test_y),
                        negative_log_likelihood(apply_temperature(test_p, optimum), test_y),
                        negative_log_likelihood(apply_temperature(test_p, rule), test_y),
                        float((test_p.argmax(axis=1) == test_y).mean()),
                        int((val_p.argmax(axis=1) != val_y).sum()),
                    )
                )
            r = np.array(rows)
            gain_opt, gain_rule = (r[:, 0] - r[:, 1]).mean(), (r[:, 0] - r[:, 2]).mean()
            kept = f"{gain_rule / gain_opt:.0%}" if gain_opt > 0 else "(no gain to keep)"
            print(
                f"| {true_t} | {r[:, 3].mean():.3f} | {np.median(r[:, 4]):.0f} | {r[:, 0].mean():.4f} | "
                f"{r[:, 1].mean():.4f} ({np.mean(r[:, 1] > r[:, 0]):.0%}) | {r[:, 2].mean():.4f} "
                f"({np.mean(r[:, 2] > r[:, 0]):.0%}) | {kept} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
