"""One work shard, start to finish: read it a chunk at a time, classify, write, record.

Every way of running a catalogue (one machine, a Slurm task, a Dask worker) runs the same
:func:`run_shard`: it reads the shard a chunk at a time, classifies it through the one classify
path (``galaxylib.inference.classify``: one decode per image; the orientation averaging, when the
artifact has it, is inside the exported graph and reuses that decode), writes its Parquet file
atomically, loads the database if asked, then records the shard in the manifest. So a shard is
finished, or it is redone from scratch by the next run. At most ``workers + 1`` chunks are in
flight, so memory does not grow with the shard.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

from galaxylib.catalog.output import build_output, kit_provenance
from galaxylib.catalog.process_memory import use_system_allocator
from galaxylib.catalog.shards import Plan, remove_stale_temporaries, write_parquet
from galaxylib.catalog.sources import ID_COLUMN, CatalogError, ShardSpec
from galaxylib.catalog.worker_pool import worker_classify
from galaxylib.inference.classify import Classified, ImageInput, classify
from galaxylib.inference.predictor import Predictor

DEFAULT_BATCH = 8  # per forward pass: 8 kept each worker's activations in cache (docs/catalog.md: 32 ran ~12 % slower)


ChunkSubmitter = Callable[[list[ImageInput]], "Future[list[Classified]]"]


def classify_stream(
    submit: ChunkSubmitter, chunks: Iterator[tuple[Any, list[ImageInput]]], ahead: int
) -> Iterator[tuple[Any, list[Classified]]]:
    """Classify chunks in input order, with up to ``ahead + 1`` of them submitted at once."""
    pending: collections.deque = collections.deque()
    for table, items in chunks:
        pending.append((table, submit(items)))
        if len(pending) > ahead:
            table0, future = pending.popleft()
            yield table0, future.result()
    while pending:
        table0, future = pending.popleft()
        yield table0, future.result()


def run_shard(
    predictor: Predictor | None,
    plan: Plan,
    spec: ShardSpec,
    *,
    batch_size: int = DEFAULT_BATCH,
    workers: int = 2,
    database_url: str | None = None,
    to_database: bool = False,
    progress: Callable[[int], None] | None = None,
    pool: Executor | None = None,
) -> dict[str, Any]:
    """Classify one work shard and put it in place: Parquet file, database rows, manifest entry.

    With ``pool`` (a :func:`worker_pool`), its processes classify the chunks, ``workers`` of them
    queued ahead; otherwise ``predictor`` does, with ``workers`` decoding threads."""
    import pyarrow as pa

    use_system_allocator()  # a Dask worker's process too: it writes shard after shard
    if predictor is not None and (predictor.has_ood != plan.has_ood or list(predictor.class_names) != plan.class_names):
        raise CatalogError(f"the model at {predictor.path} is not the one this plan was made for")
    remove_stale_temporaries(plan, spec.index)
    started = time.perf_counter()
    shard_input = plan.source.read(spec, batch_size)
    tables, results = [], []
    with contextlib.ExitStack() as stack:
        if pool is not None:

            def submit(items: list[ImageInput]) -> Future:
                return pool.submit(worker_classify, items, batch_size)
        elif predictor is not None:
            threads = stack.enter_context(ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode"))

            def submit(items: list[ImageInput]) -> Future:
                return threads.submit(classify, predictor, items, forward_batch=batch_size)
        else:
            raise ValueError("run_shard needs a predictor or a worker pool")
        for table, classified in classify_stream(submit, shard_input.chunks, workers):
            tables.append(table)
            results.extend(classified)
            if progress is not None:
                progress(len(classified))
    inputs = pa.concat_tables(tables) if tables else pa.table({ID_COLUMN: pa.array([], pa.string())})
    out = build_output(inputs, results, plan.class_names, plan.has_ood)
    errors = sum(not r.ok for r in results)
    provenance = {
        "model_version": plan.model_version,
        "model_sha256": plan.model_sha256,
        **kit_provenance(),
        "preprocessing": json.dumps(plan.extra.get("preprocessing", {}), sort_keys=True),
        "orientation_views": str(plan.extra.get("orientation_views", 1)),
        "input_checksum": shard_input.checksum,
        "shard": str(spec.index),
        "shards": str(len(plan.shards)),
        "plan_key": plan.key,
        "source": plan.source.kind,
    }
    size = write_parquet(out, plan.part_path(spec.index), provenance)
    previous = plan.entry(spec.index) or {}
    databases = [d for d in previous.get("databases", []) if previous.get("bytes") == size]
    if to_database:
        from galaxylib.catalog.to_database import load_shard, store_for

        store = store_for(database_url)
        load_shard(store, inputs.column(ID_COLUMN).to_pylist(), results, plan.model_version)
        databases = sorted(set(databases) | {store.url})
    entry = {
        "file": plan.part_path(spec.index).name,
        "rows": out.num_rows,
        "errors": errors,
        "bytes": size,
        "input_checksum": shard_input.checksum,
        "databases": databases,
        "seconds": round(time.perf_counter() - started, 3),
        "host": os.uname().nodename,
    }
    plan.write_entry(spec.index, entry)  # last: the shard counts as finished only now
    return {"shard": spec.index, **entry}
