"""Benchmark: the served model's bare forward pass against POST /predict end to end.

Measures, in one run on one machine:
  (a) the bare forward (galaxylib Predictor.forward: the interpreter, without the
      calibration and out-of-distribution score the server adds) on one preprocessed
      image and on a batch of 32 in one pass, with the same interpreter threads as
      a worker; and, for reference, the same 32 images in passes of the server's
      forward batch (GALAXY_FORWARD_BATCH), which is what a worker runs;
  (b) POST /predict through gunicorn (4 workers) with PostgreSQL: one image
      (p50/p99) and a batch of 32, stored rows checked afterwards;
  (c) for information, concurrent single-image clients (throughput under load);
  (d) POST /predict, one image, on a second server holding a copy of the artifact without
      calibration and the OOD check, in the same alternating rounds: what the check adds.
      The two servers take turns answering first in a round: a server whose workers sat
      idle while the other one worked is slower for its first few requests;
and prints the ratios against the goals, the RSS of each worker and the time
from start to a ready /health. Bare and served timings are taken in alternating
rounds, so load from other processes on the machine hits both alike.

    python bench/bench_serve.py                       # builds/uses models/bench-224
    python bench/bench_serve.py --model models/<run>  # any artifact

Everything runs on 127.0.0.1 and every loop is bounded.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

from build_artifact import BENCH_DIR, ensure_bench_artifact_in_child, without_trust_check  # noqa: E402

from galaxylib.config import SAMPLES_DIR  # noqa: E402
from galaxylib.inference.ood import pixel_statistics  # noqa: E402

GOAL_LATENCY = 1.5
GOAL_THROUGHPUT = 0.8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    chunks = []
    for name, data in files:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n".encode()
        )
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def post(port: int, body: bytes, headers: dict[str, str], path: str = "/predict") -> tuple[int, bytes, float, str]:
    """Status, body, seconds from connect to the last byte, and the Server-Timing header."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        payload = response.read()
    finally:
        conn.close()
    return response.status, payload, time.perf_counter() - started, response.getheader("Server-Timing", "")


def parse_server_timing(header: str) -> dict[str, float]:
    """'read;dur=0.3, decode;dur=1.2' -> {'read': 0.3, 'decode': 1.2} (milliseconds)."""
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if name and dur:
            out[name] = float(dur)
    return out


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


class Server:
    """gunicorn serve.app:app as a user would start it, with its log watched for readiness."""

    def __init__(self, model: Path, database_url: str, workers: int, threads: int, forward_batch: int):
        self.port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "MODEL_PATH": str(model),
            "ADMIN_TOKEN": uuid.uuid4().hex,
            "GALAXY_NUM_THREADS": str(threads),
            "GALAXY_FORWARD_BATCH": str(forward_batch),
            "SERVER_TIMING": "1",
        }
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self.ready_lines: list[float] = []
        self.worker_class = "?"
        self.log: list[str] = []
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [str(gunicorn), "-w", str(workers), "-b", f"127.0.0.1:{self.port}", "--no-control-socket", "serve.app:app"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            self.log.append(line.rstrip())
            if "Using worker:" in line:
                self.worker_class = line.rsplit("Using worker:", 1)[1].strip()
            if "serve: ready:" in line:
                self.ready_lines.append(time.perf_counter() - self.started)

    def wait_ready(self, workers: int, timeout: float = 120) -> tuple[float, float]:
        """Seconds until /health first answers 200, and until every worker logged 'ready'."""
        deadline = self.started + timeout
        first = None
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("gunicorn exited:\n" + "\n".join(self.log[-20:]))
            try:
                if first is None and get(self.port, "/health")[0] == 200:
                    first = time.perf_counter() - self.started
            except OSError:
                pass
            if first is not None and len(self.ready_lines) >= workers:
                return first, max(self.ready_lines)
            time.sleep(0.02)
        raise RuntimeError("gunicorn did not become ready:\n" + "\n".join(self.log[-20:]))

    def worker_rss_mb(self) -> list[float]:
        import psutil

        master = psutil.Process(self.proc.pid)
        return sorted(c.memory_info().rss / 2**20 for c in master.children())

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def make_database(admin_url: str) -> tuple[str, callable]:
    from sqlalchemy import create_engine, text

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"galaxy_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return admin_url.rsplit("/", 1)[0] + "/" + name, drop


def database_arguments(doc: str) -> argparse.ArgumentParser:
    """The option every database bench shares: which PostgreSQL to borrow."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
        help="an admin URL; the bench creates and drops its own database",
    )
    return parser


def model_and_database_arguments(doc: str) -> argparse.ArgumentParser:
    """The options the model benches share: which artifact, and which PostgreSQL to borrow."""
    parser = database_arguments(doc)
    parser.add_argument("--model", type=Path, help=f"artifact folder (default: build {BENCH_DIR})")
    return parser


def main() -> int:
    parser = model_and_database_arguments(__doc__)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="GALAXY_NUM_THREADS for the workers and the bare forward (default: all cores)",
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--singles-per-round", type=int, default=20)
    parser.add_argument("--batches-per-round", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--forward-batch", type=int, default=8, help="GALAXY_FORWARD_BATCH of the workers (the server's default is 8)"
    )
    parser.add_argument("--concurrent-clients", type=int, default=8)
    parser.add_argument("--concurrent-requests", type=int, default=160)
    parser.add_argument(
        "--no-check-baseline",
        action="store_true",
        help="skip (d), the second server without calibration and the OOD check",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from galaxylib.inference.predictor import Predictor
    from serve.settings import cpu_cores

    threads = args.threads or cpu_cores()
    model = args.model or ensure_bench_artifact_in_child()
    samples = sorted(SAMPLES_DIR.glob("*.jpg"))
    if len(samples) < 2:
        raise SystemExit(f"need the real cutouts in {SAMPLES_DIR}")
    single_file = samples[0]
    batch_files = [samples[i % len(samples)] for i in range(args.batch_size)]

    # (a) bare forward, same thread count as a worker.
    predictor = Predictor(model, num_threads=threads)
    x1 = predictor.preprocess(single_file)[None]
    xb = np.stack([predictor.preprocess(f) for f in batch_files])
    for _ in range(3):
        predictor.forward(x1)
        predictor.forward(xb)

    def bare(x: np.ndarray, chunk: int | None = None) -> float:
        """The interpreter alone: no calibration, no OOD score (the server adds both)."""
        chunk = chunk or len(x)
        started = time.perf_counter()
        for start in range(0, len(x), chunk):
            predictor.forward(x[start : start + chunk])
        return time.perf_counter() - started

    for _ in range(2):
        bare(xb, args.forward_batch)

    # What the server adds to one image's forward pass: calibration and the OOD score, timed
    # right after a forward pass, as a worker pays it (the pass has pushed the scorer's
    # statistics out of the cache), and back to back, with them in the cache.
    def check(raw: np.ndarray, features: np.ndarray | None) -> float:
        started = time.perf_counter()
        pixels_1 = pixel_statistics(x1) if predictor.trust.needs_pixels else None
        predictor.trust.ood_scores(features, predictor.trust.calibrate(raw), pixels_1)
        return time.perf_counter() - started

    after_forward = [check(*predictor.forward(x1)) for _ in range(200)]
    raw_1, features_1 = predictor.forward(x1)
    back_to_back = [check(raw_1, features_1) for _ in range(200)]
    ood_ms = statistics.median(after_forward) * 1e3
    ood_hot_ms = statistics.median(back_to_back) * 1e3
    ood_method = predictor.trust.scorer.method if predictor.has_ood else "none (no OOD check in this artifact)"

    load_before = os.getloadavg()[0]
    scratch = tempfile.TemporaryDirectory(prefix="bench-serve-")
    plain_model = None
    if predictor.has_ood and not args.no_check_baseline:
        plain_model = without_trust_check(Path(model), Path(scratch.name) / "without-check")
    database_url, drop_database = make_database(args.postgres)
    server = plain = None
    try:
        server = Server(model, database_url, args.workers, threads, args.forward_batch)
        first_ready, all_ready = server.wait_ready(args.workers)  # timed alone, before the second server
        if plain_model is not None:
            plain = Server(plain_model, database_url, args.workers, threads, args.forward_batch)
            plain.wait_ready(args.workers)
        single_body = multipart([(single_file.name, single_file.read_bytes())])
        batch_body = multipart([(f.name, f.read_bytes()) for f in batch_files])
        stored = 0
        single_timings: list[dict[str, float]] = []
        plain_timings: list[dict[str, float]] = []

        def served(body: tuple[bytes, dict], expect: int, target: Server = server) -> float:
            nonlocal stored
            status, payload, seconds, timing = post(target.port, *body)
            if status != 200 or len(json.loads(payload)["predictions"]) != expect:
                raise RuntimeError(f"POST /predict answered {status}: {payload[:300]!r}")
            stored += expect
            if expect == 1:
                (single_timings if target is server else plain_timings).append(
                    {**parse_server_timing(timing), "client": seconds * 1e3}
                )
            return seconds

        # Warm every worker at both batch sizes: concurrent requests spread over the workers.
        with ThreadPoolExecutor(args.workers) as pool:
            for _ in range(2):
                list(pool.map(lambda _: served(batch_body, args.batch_size), range(args.workers)))
                list(pool.map(lambda _: served(single_body, 1), range(args.workers * 3)))
                if plain is not None:
                    list(pool.map(lambda _: served(single_body, 1, plain), range(args.workers * 3)))

        bare_single, served_single, bare_batch, bare_chunked, served_batch = [], [], [], [], []
        served_plain: list[float] = []
        single_timings.clear()  # keep the measured rounds only
        plain_timings.clear()
        for round_number in range(args.rounds):
            bare_single += [bare(x1) for _ in range(args.singles_per_round)]
            # Whichever server answers first after the bare loop starts with cold workers and is
            # slower for its first few requests, so the two servers take turns going first.
            order = [server, plain] if round_number % 2 == 0 else [plain, server]
            for target in order:
                if target is server:
                    served_single += [served(single_body, 1) for _ in range(args.singles_per_round)]
                elif target is not None:
                    served_plain += [served(single_body, 1, plain) for _ in range(args.singles_per_round)]
            bare_batch += [bare(xb) for _ in range(args.batches_per_round)]
            bare_chunked += [bare(xb, args.forward_batch) for _ in range(args.batches_per_round)]
            for target in order:  # both servers, in the round's order: each then sat idle alike
                if target is server:
                    served_batch += [served(batch_body, args.batch_size) for _ in range(args.batches_per_round)]
                elif target is not None:
                    for _ in range(args.batches_per_round):
                        served(batch_body, args.batch_size, plain)

        measured_timings, measured_plain_timings = list(single_timings), list(plain_timings)
        # (c) informational: many clients at once, single images.
        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrent_clients) as pool:
            list(pool.map(lambda _: served(single_body, 1), range(args.concurrent_requests)))
        concurrent_ips = args.concurrent_requests / (time.perf_counter() - started)

        rss = server.worker_rss_mb()
        from galaxylib.store.database import PredictionStore

        rows = PredictionStore(database_url, upgrade=False).count()
        if rows != stored:
            raise RuntimeError(f"{stored} predictions answered 200 but {rows} rows are stored")
    finally:
        for started_server in (server, plain):
            if started_server is not None:
                started_server.stop()
        drop_database()
        scratch.cleanup()

    b1, s1 = statistics.median(bare_single), statistics.median(served_single)
    bb, sb = statistics.median(bare_batch), statistics.median(served_batch)
    bc = statistics.median(bare_chunked)
    figures = {
        "single_breakdown_p50_ms": breakdown(measured_timings),
        "single_without_check_breakdown_p50_ms": breakdown(measured_plain_timings),
        "ood_method": ood_method,
        "ood_ms_per_image": ood_ms,
        "ood_ms_per_image_cache_warm": ood_hot_ms,
        "model": str(model),
        "image_size": predictor.image_size,
        "threads": threads,
        "workers": args.workers,
        "cpu_cores": cpu_cores(),
        "batch_size": args.batch_size,
        "bare_single_p50_ms": b1 * 1e3,
        "bare_single_p99_ms": pct(bare_single, 99),
        "served_single_p50_ms": s1 * 1e3,
        "served_single_p99_ms": pct(served_single, 99),
        "bare_batch_p50_ms": bb * 1e3,
        "served_batch_p50_ms": sb * 1e3,
        "forward_batch": args.forward_batch,
        "bare_chunked_p50_ms": bc * 1e3,
        "throughput_ratio_vs_chunked": bc / sb,
        "bare_batch_images_per_s": args.batch_size / bb,
        "served_batch_images_per_s": args.batch_size / sb,
        "latency_ratio": s1 / b1,
        "throughput_ratio": bb / sb,
        "bare_single_stream_images_per_s": 1 / b1,
        "concurrent_clients": args.concurrent_clients,
        "concurrent_images_per_s": concurrent_ips,
        "worker_rss_mb": rss,
        "first_ready_s": first_ready,
        "all_workers_ready_s": all_ready,
        "rows_stored": rows,
        "samples": {
            "single": len(served_single),
            "batch": len(served_batch),
            "single_without_check": len(served_plain),
        },
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "worker_class": server.worker_class,
        "served_single_without_check_p50_ms": statistics.median(served_plain) * 1e3 if served_plain else None,
        "latency_ratio_without_check": statistics.median(served_plain) / b1 if served_plain else None,
    }
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


def breakdown(timings: list[dict[str, float]]) -> dict[str, float]:
    """Medians of each Server-Timing part of the single-image requests, plus what lies outside
    the Flask view (gunicorn, HTTP, the client) and the app's own code outside the named parts."""
    if not timings or "app" not in timings[0]:
        return {}
    parts = [k for k in timings[0] if k not in ("app", "client")]
    out = {k: statistics.median(t[k] for t in timings) for k in parts}
    out["rest_of_view"] = statistics.median(t["app"] - sum(t[k] for k in parts) for t in timings)
    out["outside_view"] = statistics.median(t["client"] - t["app"] for t in timings)
    return out


def report(f: dict) -> str:
    ok = lambda passed: "MET" if passed else "NOT MET"  # noqa: E731
    return "\n".join(
        [
            f"model {f['model']} at {f['image_size']} px; {f['workers']} gunicorn workers ({f['worker_class']}), "
            f"{f['threads']} interpreter threads each, {f['cpu_cores']} cores; "
            f"load average {f['load_average_1min'][0]:.2f} before, {f['load_average_1min'][1]:.2f} after",
            "",
            f"calibration and OOD check served: {f['ood_method']}; they add {f['ood_ms_per_image']:.3f} ms "
            f"to a single image right after its forward pass ({f['ood_ms_per_image_cache_warm']:.3f} ms back to back)",
            f"(a) bare forward, 1 image      p50 {f['bare_single_p50_ms']:8.2f} ms   p99 {f['bare_single_p99_ms']:8.2f} ms",
            f"    bare forward, batch of {f['batch_size']}  p50 {f['bare_batch_p50_ms']:8.2f} ms   "
            f"= {f['bare_batch_images_per_s']:.1f} images/s (one pass)",
            f"    bare forward, {f['batch_size']} in passes of {f['forward_batch']}  p50 {f['bare_chunked_p50_ms']:8.2f} ms   "
            f"= {f['batch_size'] / f['bare_chunked_p50_ms'] * 1e3:.1f} images/s (what a worker runs)",
            f"(b) POST /predict, 1 image     p50 {f['served_single_p50_ms']:8.2f} ms   p99 {f['served_single_p99_ms']:8.2f} ms",
            "    where it goes (medians, ms, from the Server-Timing header): "
            + ", ".join(f"{k} {v:.2f}" for k, v in f["single_breakdown_p50_ms"].items()),
            f"    POST /predict, batch of {f['batch_size']} p50 {f['served_batch_p50_ms']:8.2f} ms   "
            f"= {f['served_batch_images_per_s']:.1f} images/s",
            f"(c) {f['concurrent_clients']} concurrent clients, 1 image each: {f['concurrent_images_per_s']:.1f} images/s "
            f"(bare single-stream {f['bare_single_stream_images_per_s']:.1f}/s)",
            "",
            f"latency ratio    served p50 / bare p50          = {f['latency_ratio']:.3f}  "
            f"(goal <= {GOAL_LATENCY}: {ok(f['latency_ratio'] <= GOAL_LATENCY)})",
            *(
                [
                    f"  (d) the same artifact without calibration and the OOD check, same rounds: served p50 "
                    f"{f['served_single_without_check_p50_ms']:.2f} ms, ratio {f['latency_ratio_without_check']:.3f}; "
                    f"calibration and the check add {f['latency_ratio'] - f['latency_ratio_without_check']:+.3f}",
                    "      where it goes (medians, ms): "
                    + ", ".join(f"{k} {v:.2f}" for k, v in f["single_without_check_breakdown_p50_ms"].items()),
                ]
                if f.get("latency_ratio_without_check")
                else []
            ),
            f"throughput ratio served batch / bare batch      = {f['throughput_ratio']:.2f}  "
            f"(goal >= {GOAL_THROUGHPUT}: {ok(f['throughput_ratio'] >= GOAL_THROUGHPUT)})",
            f"  (served batch vs bare in passes of {f['forward_batch']}: {f['throughput_ratio_vs_chunked']:.2f}, "
            "the serving overhead alone)",
            f"worker RSS (MB): {', '.join(f'{r:.0f}' for r in f['worker_rss_mb'])}",
            f"start to first ready /health: {f['first_ready_s']:.2f} s; all workers ready: {f['all_workers_ready_s']:.2f} s",
            f"rows stored: {f['rows_stored']} (equal to the predictions answered)",
            f"samples: {f['samples']['single']} single, {f['samples']['batch']} batch"
            + (
                f", {f['samples']['single_without_check']} single without the check"
                if f["samples"]["single_without_check"]
                else ""
            )
            + " requests (interleaved with bare)",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
