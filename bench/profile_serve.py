"""Profile: where one gunicorn worker's time goes while it answers single-image POST /predict.

Starts `gunicorn serve.app:app` with one worker on the bench artifact and a throw-away
PostgreSQL database (as bench/bench_serve.py does), sends one real cutout at a time for
``--seconds``, samples the worker with py-spy (`--nonblocking`: the default pauses the worker at
every sample, which inflated the NumPy code after the forward pass five-fold here), and prints
the share of the samples spent in each part of the request. The shares are of wall time inside
the worker, idle time included; a profiled request is slower than an unprofiled one, so read them
as proportions, not milliseconds.

    pip install py-spy==0.4.1              # not a dependency of the kit
    python bench/profile_serve.py           # builds/uses models/bench-224
    python bench/profile_serve.py --raw /tmp/worker.txt   # keep the collapsed stacks too

Everything runs on 127.0.0.1 and every loop is bounded.
"""

from __future__ import annotations

import collections
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_serve import Server, database_arguments, make_database, multipart, post  # noqa: E402
from build_artifact import ensure_bench_artifact_in_child  # noqa: E402

from galaxylib.config import SAMPLES_DIR  # noqa: E402

# (label, function, file): a sample counts for a part when a frame of its stack is that function
# in a file whose path contains that text.
PARTS = [
    ("the whole view (POST /predict)", "predict", "serve/routes/predict.py"),
    ("  decode (PIL, libjpeg)", "_read", "galaxylib/inference/classify.py"),
    ("  crop and convert to float32", "preprocess_image", "galaxylib/preprocessing.py"),
    ("  forward pass (LiteRT invoke)", "invoke", "interpreter.py"),
    ("  pixel statistics (OOD check)", "pixel_statistics", "galaxylib/inference/ood.py"),
    ("  OOD scorer (Mahalanobis, union)", "ood_scores", "galaxylib/inference/trust_check.py"),
    ("  calibration", "calibrate", "galaxylib/inference/trust_check.py"),
    ("  the prediction", "to_prediction", "galaxylib/inference/predictor.py"),
    ("  store the row (PostgreSQL)", "add_many", "galaxylib/store/database.py"),
    ("  JSON response", "jsonify", "flask/json"),
    ("  metrics", "observe_predictions", "serve/metrics.py"),
    ("gunicorn: parse the request", "__next__", "gunicorn/http/parser.py"),
    ("gunicorn: send headers and body", "write", "gunicorn/http/wsgi.py"),
    ("idle: waiting for a connection", "wait", "serve/gunicorn_worker.py"),
]


def shares(raw: Path) -> tuple[int, dict[str, float]]:
    """Samples in all, and the share of them whose stack holds each of ``PARTS``."""
    total, hits = 0, collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():  # not a stack line (py-spy's own notes)
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for label, function, file in PARTS:
            if any(f.startswith(function + " (") and file in f for f in frames):
                hits[label] += n
    return total, {label: hits[label] / max(total, 1) for label, _, _ in PARTS}


def main() -> int:
    parser = database_arguments(__doc__)
    parser.add_argument("--model", type=Path, help="artifact folder (default: build models/bench-224)")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long to send requests")
    parser.add_argument("--rate", type=int, default=2000, help="py-spy samples per second")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's collapsed stacks here")
    parser.add_argument(
        "--blocking",
        action="store_true",
        help="py-spy's default mode, which pauses the worker at each sample (misleading here)",
    )
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy==0.4.1")
    samples = sorted(SAMPLES_DIR.glob("*.jpg"))
    if not samples:
        raise SystemExit(f"need the real cutouts in {SAMPLES_DIR}")
    model = args.model or ensure_bench_artifact_in_child()
    import psutil

    from serve.settings import cpu_cores

    database_url, drop_database = make_database(args.postgres)
    server = None
    scratch = tempfile.TemporaryDirectory(prefix="profile-serve-")
    raw = Path(scratch.name) / "stacks.txt"
    try:
        server = Server(model, database_url, workers=1, threads=cpu_cores(), forward_batch=8)
        server.wait_ready(1)
        body = multipart([(samples[0].name, samples[0].read_bytes())])
        for _ in range(50):  # warm the worker
            post(server.port, *body)
        worker = psutil.Process(server.proc.pid).children()[0].pid
        record = subprocess.Popen(
            [
                spy,
                "record",
                *([] if args.blocking else ["--nonblocking"]),
                "-p",
                str(worker),
                "-r",
                str(args.rate),
                "-d",
                str(int(args.seconds) + 2),
                "--format",
                "raw",
                "-o",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)  # py-spy attaches
        seconds: list[float] = []
        deadline = time.perf_counter() + args.seconds
        while time.perf_counter() < deadline:
            seconds.append(post(server.port, *body)[2])
            time.sleep(0.002)  # the gap between requests
        _, err = record.communicate(timeout=60)
        if record.returncode or not raw.exists():
            raise SystemExit(f"py-spy failed ({record.returncode}): {err.strip()[-500:]}")
        total, part_shares = shares(raw)
        if args.raw:
            shutil.copy(raw, args.raw)
    finally:
        if server is not None:
            server.stop()
        drop_database()
        scratch.cleanup()

    print(
        f"model {model}; one worker; {len(seconds)} single-image requests, p50 "
        f"{statistics.median(seconds) * 1e3:.2f} ms while profiled; {total} samples at {args.rate}/s"
    )
    for label, share in part_shares.items():
        print(f"  {label:40s} {share * 100:5.1f} % of the samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
