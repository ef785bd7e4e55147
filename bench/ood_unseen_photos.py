"""Measurement: does an artifact's OOD check flag real photos that no part of this kit has seen?

The check is chosen on one half of scikit-image's sample photos and judged on the other half
(galaxylib/evaluation/ood_cases.py). Both halves were also in view while the scorers were
designed, so this script asks the question on photos from elsewhere, the way a private set
would: sklearn's two sample photos, matplotlib's portrait of Grace Hopper, scikit-image's
stereo motorcycle pair (unused by the cases), and faces from its LFW subset. Each source gives
random square crops at 256 px, as the photo case does, and is scored by the LiteRT Predictor.

    python bench/ood_unseen_photos.py --model models/<run>

Prints, per source, the fraction flagged and the score quartiles against the artifact's
threshold. Needs only the installed packages (no network).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from galaxylib.evaluation.ood_cases import random_crops  # noqa: E402


def unseen_photo_sources() -> dict[str, list[np.ndarray]]:
    """Photo sources bundled with installed packages that ood_cases.PHOTOS does not use."""
    import matplotlib.cbook
    import skimage.data
    import sklearn.datasets

    def read(path) -> np.ndarray:
        return np.asarray(Image.open(path).convert("RGB"))

    faces = skimage.data.lfw_subset()[:100]  # (100, 25, 25) grey faces in 0..1
    return {
        "sklearn china + flower": list(sklearn.datasets.load_sample_images().images),
        "matplotlib grace_hopper": [read(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))],
        "skimage motorcycle pair": [
            read(Path(skimage.data.__file__).parent / f"motorcycle_{side}.png") for side in ("left", "right")
        ],
        "skimage LFW faces": [
            np.asarray(Image.fromarray((f * 255).astype(np.uint8)).resize((256, 256), Image.BILINEAR)) for f in faces
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="an artifact folder with an OOD check")
    parser.add_argument("--per-source", type=int, default=40, help="crops per source")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from galaxylib.inference.predictor import Predictor
    from galaxylib.preprocessing import preprocess_image

    predictor = Predictor(args.model)
    if not predictor.has_ood:
        raise SystemExit(f"{args.model} has no OOD check (an artifact trained before it existed)")
    threshold = predictor.trust.threshold
    rng = np.random.default_rng(args.seed)
    print(f"model {predictor.model_version}: OOD method {predictor.trust.scorer.method}, threshold {threshold:.4g}")
    figures = {
        "model": predictor.model_version,
        "method": predictor.trust.scorer.method,
        "threshold": float(threshold),
        "sources": {},
    }
    for name, sources in unseen_photo_sources().items():
        crops = random_crops(sources, args.per_source, rng)
        inputs = np.stack([preprocess_image(c, predictor.image_size, predictor.crop) for c in crops])
        scores = np.concatenate([predictor.score_arrays(inputs[i : i + 16])[1] for i in range(0, len(inputs), 16)])
        flagged = float(np.mean(scores > threshold))
        q1, q2, q3 = np.percentile(scores, [25, 50, 75])
        figures["sources"][name] = {
            "n": len(scores),
            "flagged_fraction": flagged,
            "score_quartiles": [float(q1), float(q2), float(q3)],
        }
        print(
            f"  {name:26s} {len(scores):3d} crops: {flagged:6.1%} flagged   "
            f"score quartiles {q1:.3g} / {q2:.3g} / {q3:.3g}"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
