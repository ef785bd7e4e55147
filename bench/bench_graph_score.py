"""Benchmark: the OOD check inside the exported graph, against the NumPy check after the pass.

The Predictor scores in NumPy after the LiteRT forward pass, and right after the pass that code
runs cold: about 0.5 ms for the union check (docs/performance.md). The issue allows the score to
be part of the exported graph instead, computed in the same ``invoke``. This script measures that
design without shipping it, on the bench artifact's union check. It exports the network again
without a score, and with a third output holding the Mahalanobis part alone, the pixel statistics
alone and the union, written below in TensorFlow ops. It checks that the union output agrees with the NumPy scorer on the 40 sample
cutouts and three synthetic frames. Then it times, in alternating rounds with the worker's
interpreter threads:

  plain        the network alone, invoke and read its outputs (the bare forward)
  numpy        the same pass, then calibration and the NumPy check, as the Predictor runs them
  graph: ...   each export with a score, invoke and read its three outputs

and prints what each adds to the bare forward, and what the in-graph union saves.

    python bench/bench_graph_score.py            # builds/uses models/bench-224 (TensorFlow, ~1 min)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from build_artifact import BENCH_DIR, child, ensure_bench_artifact_in_child  # noqa: E402

from galaxylib.config import SAMPLES_DIR  # noqa: E402
from galaxylib.inference.ood import pixel_statistics  # noqa: E402

VARIANTS = ("plain", "mahalanobis", "pixels", "union")


def score_function(scorer):
    """``scorer`` (the union check or one of its parts) as TensorFlow ops of (model inputs, pooled
    features) -> (N,) scores, mirroring galaxylib.inference.ood's NumPy scorers in float32."""
    import tensorflow as tf

    from galaxylib.inference.ood import UnionScorer

    def pixel_statistics_tf(images):
        """``pixel_statistics``: (N, S, S, 3) in 0..255 -> (N, 17). float32 loses digits where
        NumPy's float64 does not (E[x^2] - E[x]^2 on a sky whose spread is a fifth of its level,
        the frame's sum less the inner square's), so every sum is taken about the frame's mean
        and each spread about its region's own mean."""
        step = max(1, int(images.shape[1]) // 64)
        x = images[:, ::step, ::step, :] / 255.0
        h = int(x.shape[1])
        edge = max(1, h // 8)
        count = float(h * h - (h - 2 * edge) ** 2)
        frame_mean = tf.reduce_mean(x, [1, 2])
        y = x - frame_mean[:, None, None, :]

        def border_sum(values):
            return tf.reduce_sum(values, [1, 2]) - tf.reduce_sum(values[:, edge : h - edge, edge : h - edge, :], [1, 2])

        border_offset = border_sum(y) / count  # the border's mean less the frame's
        border_centred = y - border_offset[:, None, None, :]
        border_std = tf.sqrt(tf.maximum(border_sum(border_centred * border_centred) / count, 0.0))
        centre = x[:, h // 2 - edge : h // 2 + edge, h // 2 - edge : h // 2 + edge, :]
        centre_mean = tf.reduce_mean(centre, [1, 2])
        centre_offset = centre - centre_mean[:, None, None, :]
        centre_std = tf.sqrt(tf.reduce_mean(centre_offset * centre_offset, [1, 2]))
        lum = tf.reduce_mean(x, -1)
        texture = tf.reduce_mean(tf.abs(lum[:, 1:, :] - lum[:, :-1, :]), [1, 2]) + tf.reduce_mean(
            tf.abs(lum[:, :, 1:] - lum[:, :, :-1]), [1, 2]
        )
        floor = 1.0 / 255
        saturated = tf.reduce_mean(tf.cast(lum > 0.98, tf.float32), [1, 2])
        return tf.concat(
            [
                frame_mean + border_offset,
                tf.math.log(border_std + floor),
                centre_mean,
                tf.math.log(centre_std + floor),
                -border_offset,
                tf.math.log(texture + floor)[:, None],
                saturated[:, None],
            ],
            axis=1,
        )

    def mahalanobis(part):
        mean, basis, means, means_z, means_sq, variances = part._fast
        rest, dim = float(part.rest_variance), len(part.mean)

        def score(images, features):
            f = features - mean
            diff = tf.matmul(f, basis)[:, None, :] - means_z[None]
            inside = tf.reduce_sum(diff * diff, -1)
            total = tf.reduce_sum(f * f, 1)[:, None] - 2 * tf.matmul(f, means.T) + means_sq[None]
            outside = tf.maximum(total - inside, 0.0) / rest
            return tf.reduce_min(tf.reduce_sum(diff * diff / variances, -1) + outside, 1) / dim

        return score

    def pixels(part):
        mean, precision = np.asarray(part.mean, np.float32), np.asarray(part.precision, np.float32)

        def score(images, features):
            d = pixel_statistics_tf(images) - mean
            return tf.reduce_sum(tf.matmul(d, precision) * d, 1) / len(mean)

        return score

    if isinstance(scorer, UnionScorer):
        features_score, pixels_score = mahalanobis(scorer.features), pixels(scorer.pixels)
        scales = [float(v) for v in scorer.scales]
        return lambda images, f: tf.maximum(features_score(images, f) / scales[0], pixels_score(images, f) / scales[1])
    return mahalanobis(scorer) if scorer.method == "mahalanobis" else pixels(scorer)


def export_variants(model_dir: Path, out_dir: Path) -> None:
    """The network exported with its two outputs alone and with each score as a third. Run in a
    child process (``--export``): the timing process never loads TensorFlow, as a worker never does."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from galaxylib.artifact import read_artifact
    from galaxylib.inference.trust_check import trust_from_sidecar
    from galaxylib.modeling.export import export_tflite, with_features_output
    from galaxylib.modeling.loading import load_keras_model

    artifact = read_artifact(model_dir)
    model = load_keras_model(artifact)
    union = trust_from_sidecar(artifact.sidecar, artifact.path).scorer
    export_tflite(model, out_dir / "plain.tflite")  # what the artifact holds
    network = with_features_output(model)
    size = artifact.image_size
    for name, scorer in (("mahalanobis", union.features), ("pixels", union.pixels), ("union", union)):
        score = score_function(scorer)

        def outputs(images, score=score):
            probs, features = network(images, training=False)
            return probs, features, score(images, features)

        concrete = tf.function(outputs).get_concrete_function(tf.TensorSpec([None, size, size, 3], tf.float32))
        converter = tf.lite.TFLiteConverter.from_concrete_functions([convert_variables_to_constants_v2(concrete)])
        (out_dir / f"{name}.tflite").write_bytes(converter.convert())


class Runner:
    """One interpreter, invoked as a worker would: set the input, invoke, copy every output."""

    def __init__(self, path: Path, threads: int):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.outputs = [o["index"] for o in self.interpreter.get_output_details()]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        self.interpreter.set_tensor(self.input, x)
        self.interpreter.invoke()
        return [np.array(self.interpreter.get_tensor(i)) for i in self.outputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300, help="timed passes per variant")
    parser.add_argument("--export", nargs=2, metavar=("MODEL", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export:
        export_variants(Path(args.export[0]), Path(args.export[1]))
        return

    from galaxylib.inference.predictor import Predictor
    from galaxylib.preprocessing import decode_image, preprocess_image

    model_dir = ensure_bench_artifact_in_child(BENCH_DIR)
    predictor = Predictor(model_dir)
    if not predictor.has_ood or predictor.trust.scorer.method != "mahalanobis+pixels":
        raise SystemExit(f"{model_dir} has no union OOD check to time")
    threads = predictor.num_threads
    paths = sorted(SAMPLES_DIR.glob("*.jpg"))
    if not paths:
        raise SystemExit(f"no sample cutouts in {SAMPLES_DIR} (../shared/galaxy10_samples)")
    inputs = [preprocess_image(decode_image(p), predictor.image_size, predictor.crop)[None] for p in paths]

    with tempfile.TemporaryDirectory() as tmp:
        child([str(Path(__file__).resolve()), "--export", str(model_dir), tmp])
        runners = {
            ("plain" if name == "plain" else f"graph: {name}"): Runner(Path(tmp) / f"{name}.tflite", threads)
            for name in VARIANTS
        }

        def numpy_check(x: np.ndarray) -> np.ndarray:
            """The pass on the plain export, then calibration and the NumPy scorer, as a worker did."""
            probs, features = runners["plain"](x)
            calibrated = predictor.trust.calibrate(probs)
            return predictor.trust.ood_scores(features, calibrated, pixel_statistics(x))

        rng = np.random.default_rng(0)
        frames = [
            np.zeros_like(inputs[0]),
            np.full_like(inputs[0], 128.0),
            rng.uniform(0, 255, inputs[0].shape).astype(np.float32),
        ]
        relative = []
        for x in inputs + frames:
            numpy_score = float(numpy_check(x)[0])
            graph_score = float(runners["graph: union"](x)[2][0])
            relative.append(abs(graph_score - numpy_score) / max(abs(numpy_score), 1e-9))

        timed = {"plain": runners["plain"], "numpy": numpy_check, **{k: v for k, v in runners.items() if k != "plain"}}
        names = list(timed)
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for i in range(args.rounds * len(names)):
            name = names[i % len(names)]
            x = inputs[i % len(inputs)].copy()  # written now, as a worker's decoded input is
            time.sleep(0.002)  # the gap between requests
            started = time.perf_counter()
            timed[name](x)
            seconds[name].append(time.perf_counter() - started)

    p50 = {name: float(np.median(v)) * 1e3 for name, v in seconds.items()}
    print(
        f"model {model_dir} at {predictor.image_size} px, {threads} interpreter threads; "
        f"{args.rounds} passes per variant, alternating; load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"in-graph union score against the NumPy scorer, {len(relative)} inputs: "
        f"largest relative difference {max(relative):.1e} (float32 against float64)"
    )
    print(f"  {'plain (bare forward)':32s} p50 {p50['plain']:7.3f} ms")
    for name in names[1:]:
        print(f"  {name:32s} p50 {p50[name]:7.3f} ms   adds {p50[name] - p50['plain']:+.3f} ms")
    added_numpy = p50["numpy"] - p50["plain"]
    added_graph = p50["graph: union"] - p50["plain"]
    print(
        f"the union check in the graph costs {added_graph / added_numpy:.2f}x what it costs in NumPy after "
        f"the pass; as a share of the bare forward: {added_graph / p50['plain']:+.3f} against "
        f"{added_numpy / p50['plain']:+.3f} (the latency ratio's units)"
    )


if __name__ == "__main__":
    main()
