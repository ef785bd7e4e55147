"""A finished run's calibration three ways: none, the temperature at the validation-NLL optimum,
and what ``fit_calibration`` chose (the one-standard-error rule, or temperature and bias).

Usage (in the checkout that trained the run):
    .venv/bin/python bench/refit_calibration.py --run quick                # config from reports/quick/
    .venv/bin/python bench/refit_calibration.py --run gz1

The served model (``model.tflite`` through the Predictor, without its stored calibration) answers
the run's validation and test splits; the calibration is fitted on validation as ``train.sh``
fits it (same seed) and judged on test. Test figures are printed to compare the rules after the
fact; nothing here chooses anything from them. Writes nothing.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="the run's name (reports/<run>, models/<run>)")
    parser.add_argument("--config", type=Path, help="default: reports/<run>/config.yaml, as the run recorded it")
    args = parser.parse_args()

    from galaxylib.data.galaxy10 import resized_cache
    from galaxylib.evaluation.metrics import expected_calibration_error
    from galaxylib.fitting.calibration_fit import fit_calibration, fit_temperature, negative_log_likelihood
    from galaxylib.inference.calibration import apply_calibration, apply_temperature, decide
    from galaxylib.inference.predictor import Predictor
    from galaxylib.pipeline.run_folder import open_run
    from galaxylib.pipeline.trust import served_outputs

    config_path = args.config or REPO / "reports" / args.run / "config.yaml"
    run, config = open_run(args.run, config_path)
    data, split = run.dataset(), run.split()
    predictor = Predictor(run.model, trust=False)
    images = resized_cache(data, predictor.image_size, run.cache, show_progress=False, crop=predictor.crop)
    labels = data.labels()
    val_p, _ = served_outputs(predictor, images[split.val])
    test_p, _ = served_outputs(predictor, images[split.test])
    val_y, test_y = labels[split.val], labels[split.test]

    chosen = fit_calibration(val_p, val_y, seed=int(config["seed"]))
    optimum = fit_temperature(val_p, val_y)
    errors = int((val_p.argmax(axis=1) != val_y).sum())
    print(f"run {args.run}: {len(val_y)} validation cutouts ({errors} misclassified), {len(test_y)} test")
    print(
        f"fit_calibration chose {chosen['method']}, T {chosen['temperature']:.3f}"
        + (" with a class bias" if chosen["bias"] is not None else "")
        + f"; the NLL optimum of T alone is {optimum:.3f}"
    )
    cv = chosen["cv_nll"]
    print(
        f"validation NLL: none {negative_log_likelihood(val_p, val_y):.4f}; 5-fold cross-validated, each at its "
        "optimum: "
        + (", ".join(f"{k} {v:.4f}" for k, v in cv.items()) if cv else "not run (too few errors or a class too rare)")
    )
    print("| calibration | T | test NLL | test ECE |")
    print("|---|---|---|---|")
    for name, temperature, bias in (
        ("none", 1.0, None),
        ("temperature at the NLL optimum", optimum, None),
        (f"chosen ({chosen['method']})", chosen["temperature"], chosen["bias"]),
    ):
        probs = (
            apply_calibration(test_p, temperature, bias) if bias is not None else apply_temperature(test_p, temperature)
        )
        ece = expected_calibration_error(test_y, probs, decisions=decide(probs, bias))[0]
        print(f"| {name} | {temperature:.3f} | {negative_log_likelihood(probs, test_y):.4f} | {ece:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
