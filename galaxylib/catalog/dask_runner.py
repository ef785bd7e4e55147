"""A catalogue's shards on Dask: a local cluster (``local:N``) or a scheduler's address.

Each shard is one Dask task running :func:`galaxylib.catalog.shard_runner.run_shard`; a worker
process loads its Predictor once and keeps it. A failed shard is reported and the others go on;
a rerun redoes it.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

from galaxylib.catalog.shard_runner import run_shard
from galaxylib.catalog.shards import Plan
from galaxylib.catalog.sources import CatalogError, ShardSpec
from galaxylib.inference.predictor import Predictor

_WORKER_PREDICTORS: dict[tuple[str, int], Predictor] = {}


def _worker_threads() -> int:
    try:
        from distributed import get_worker

        worker = get_worker()
        return int(getattr(worker, "nthreads", None) or worker.state.nthreads)
    except Exception:
        return 1


def dask_task(
    out_dir: str,
    model_dir: str,
    index: int,
    batch_size: int,
    threads: int | None,
    database_url: str | None,
    to_database: bool,
) -> dict[str, Any]:
    """One shard on a Dask worker; its Predictor is loaded once per worker process and kept."""
    n = threads or _worker_threads()
    key = (model_dir, n)
    if key not in _WORKER_PREDICTORS:
        _WORKER_PREDICTORS[key] = Predictor(model_dir, num_threads=n)
    plan = Plan.load(out_dir)
    plan.model_dir = Path(model_dir)
    spec = next(s for s in plan.shards if s.index == index)
    return run_shard(
        _WORKER_PREDICTORS[key],
        plan,
        spec,
        batch_size=batch_size,
        workers=n + 1,
        database_url=database_url,
        to_database=to_database,
    )


def parse_dask(text: str) -> tuple[int | None, str | None]:
    """``local:N`` -> (N, None); ``tcp://host:port`` (any scheduler address) -> (None, address)."""
    text = str(text).strip()
    if text.startswith("local:"):
        try:
            n = int(text[len("local:") :])
        except ValueError:
            n = 0
        if n < 1:
            raise CatalogError(f"--dask local:N needs a number of worker processes N >= 1, got {text!r}")
        return n, None
    if "://" in text:
        return None, text
    raise CatalogError(
        f"--dask must be local:N (start N worker processes) or a scheduler address such as "
        f"tcp://host:8786, got {text!r}"
    )


def run_on_dask(
    plan: Plan,
    todo: list[ShardSpec],
    spec_text: str,
    *,
    threads: int | None,
    batch_size: int,
    database_url: str | None,
    to_database: bool,
    show_progress: bool,
) -> tuple[list[dict[str, Any]], list[str]]:
    import logging

    from distributed import Client, LocalCluster, as_completed
    from tqdm import tqdm

    n_local, address = parse_dask(spec_text)
    cluster = None
    if n_local is not None:
        cluster = LocalCluster(
            n_workers=n_local, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
        )
        threads = threads or 1
    try:
        client = Client(cluster if cluster is not None else address)
    except OSError as exc:  # distributed raises OSError (a TimeoutError) for a scheduler it cannot reach
        if cluster is not None:
            cluster.close()
        raise CatalogError(
            f"cannot reach the Dask scheduler at {spec_text} ({exc}); start one there "
            "(`dask scheduler`), or run on this machine with --dask local:N"
        ) from exc
    entries, failed = [], []
    try:
        token = uuid.uuid4().hex[:8]  # a long-lived scheduler may still hold an earlier run's keys
        futures = {
            client.submit(
                dask_task,
                str(plan.out_dir),
                str(plan.model_dir),
                s.index,
                batch_size,
                threads,
                database_url,
                to_database,
                key=f"galaxy-shard-{plan.key[:12]}-{s.index}-{token}",
                pure=False,
            ): s.index
            for s in todo
        }
        with tqdm(
            total=len(futures),
            desc=f"Classifying catalogue on Dask ({spec_text})",
            unit="shard",
            file=sys.stderr,
            disable=not show_progress,
        ) as bar:
            for future in as_completed(futures):
                try:
                    entries.append(future.result())
                except Exception as exc:  # the others go on; a rerun redoes this one
                    failed.append(f"shard {futures[future]}: {type(exc).__name__}: {exc}")
                bar.update(1)
                bar.set_postfix(rows=sum(e["rows"] for e in entries))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return entries, failed
