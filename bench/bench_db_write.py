"""Benchmark: storing one prediction on PostgreSQL right after a forward pass.

The API answers a prediction only once its row is stored, so this write sits on
every request's critical path. Compares, in alternating rounds (background load
hits both alike), the shipped ``PredictionStore.add_many`` (a prepared one-row
INSERT ... VALUES on a held connection) with the batch statement (INSERT ... SELECT
FROM unnest) on the same connection, which one-row writes used before, and with the
ORM unit of work on a pooled, pre-pinged connection that came before that. Each write follows a real forward pass of the served model, as in the
server: the database backend has gone idle and the caches are cold.

    python bench/bench_db_write.py                       # models/bench-224, 300 rounds
    python bench/bench_db_write.py --model models/<run>
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np
from bench_serve import make_database, model_and_database_arguments  # noqa: E402
from build_artifact import ensure_bench_artifact_in_child  # noqa: E402


def main() -> int:
    parser = model_and_database_arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()

    from sqlalchemy.orm import sessionmaker

    from galaxylib.inference.predictor import Predictor
    from galaxylib.store.database import PredictionRecord, PredictionStore, utcnow

    model_dir = args.model or ensure_bench_artifact_in_child()
    predictor = Predictor(model_dir)
    batch = np.random.default_rng(0).uniform(0, 255, (1, predictor.image_size, predictor.image_size, 3))
    batch = batch.astype(np.float32)
    probabilities = predictor.to_prediction(predictor.predict_arrays(batch)[0]).probabilities
    row = {
        "filename": "g10_bench.jpg",
        "predicted_class": "Round Smooth",
        "confidence": 0.5,
        "metadata": {
            "model_version": predictor.model_version,
            "sha256": "0" * 64,
            "size_bytes": 12811,
            "probabilities": probabilities,
            "latency_ms": {"inference": 6.5},
        },
    }

    url, drop = make_database(args.postgres)
    try:
        store = PredictionStore(url)
        sessions = sessionmaker(store.engine, expire_on_commit=False)

        def shipped() -> None:
            store.add_many([row])

        def unnest_one_row() -> None:  # the batch statement, which one-row writes used before
            record = PredictionRecord(
                filename=row["filename"],
                predicted_class=row["predicted_class"],
                confidence=row["confidence"],
                meta=row["metadata"],
                created_at=utcnow(),
            )
            writer = store._writer
            with writer._lock:
                conn = writer._connection()
                conn.execute(*writer.statement([record], batch_form=True), prepare=True).fetchall()
                writer._last_used = time.monotonic()

        def orm_pooled() -> None:  # the previous path: pool checkout (pre-ping), ORM flush, COMMIT
            record = PredictionRecord(
                filename=row["filename"],
                predicted_class=row["predicted_class"],
                confidence=row["confidence"],
                meta=row["metadata"],
                created_at=utcnow(),
            )
            with sessions() as s, s.begin():
                s.add(record)
                s.flush()

        variants = {
            "PredictionStore.add_many (held connection, VALUES)": shipped,
            "the batch statement (unnest) for one row": unnest_one_row,
            "ORM session on a pooled connection": orm_pooled,
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, write in variants.items():
                predictor.predict_arrays(batch)
                started = time.perf_counter()
                write()
                times[name].append((time.perf_counter() - started) * 1e3)
        rows = store.count()
        store.close()
    finally:
        drop()

    print(f"one-row write after a forward pass, {args.rounds} rounds, load average {os.getloadavg()[0]:.2f}")
    p50 = {}
    for name, values in times.items():
        p50[name] = statistics.median(values)
        print(f"  {name:55s} p50 {p50[name]:.3f} ms  p99 {np.percentile(values, 99):.3f} ms")
    shipped_p50, unnest_p50, orm_p50 = p50.values()
    expected = len(variants) * args.rounds
    print(
        f"  ratio shipped / unnest: {shipped_p50 / unnest_p50:.2f}; shipped / ORM: {shipped_p50 / orm_p50:.2f}; "
        f"rows stored: {rows} (expected {expected})"
    )
    return 0 if rows == expected else 1


if __name__ == "__main__":
    sys.exit(main())
