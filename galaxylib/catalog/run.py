"""Run a catalogue through a model: on one machine, as one task of a Slurm array, or on Dask.

Every way runs the same :func:`run_shard`: read the shard a chunk at a time, classify it
through the one classify path (``galaxylib.inference.classify``: one decode per image; the
orientation averaging, when the artifact has it, is inside the exported graph and reuses that
decode), write its Parquet file atomically, load the database if asked, then record the shard
in the manifest. So a shard is finished, or it is redone from scratch by the next run.

On one machine a catalogue of more than a few hundred rows is classified by worker
processes, one per core, each with its own one-thread LiteRT interpreter that decodes and runs
its chunks (a chunk is one forward batch): one interpreter's decode overlaps another's forward
pass, with no locks and no thread hand-offs inside XNNPACK, which measured faster than one
interpreter using every core (docs/catalog.md). A small run stays in this process, where a
pool of threads decodes the next chunks while the interpreter runs the current one. Either
way at most a few chunks per worker are in flight, so memory does not grow with the
catalogue, and the parent alone writes files and the manifest.
"""
from __future__ import annotations

import collections
import contextlib
import json
import multiprocessing
import os
import signal
import sys
import time
import uuid
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from galaxylib.catalog.shards import (Plan, crash_point, make_plan, output_columns, parse_shard,
                                      remove_stale_temporaries, write_parquet)
from galaxylib.catalog.sources import ID_COLUMN, CatalogError, ShardSpec
from galaxylib.inference.classify import Classified, ImageInput, classify
from galaxylib.inference.predictor import Predictor, default_threads
from galaxylib.inference.threads import single_threaded_children

DEFAULT_SHARD_ROWS = 2048  # ~1 min of EfficientNetB0 at 224 px on 2 cores: little lost to a crash
DEFAULT_BATCH = 8  # per forward pass: 8 kept each worker's activations in cache (docs/catalog.md: 32 ran ~12 % slower)
PROCESS_MIN_ROWS = 512  # below this, starting worker processes (~2 s each) costs more than it saves


@dataclass
class CatalogResult:
    """What a run did: shards found finished, shards done now, rows written, failures."""

    out_dir: Path
    shards: int  # in the plan
    selected: int  # this task's share (--shard K/N)
    skipped: int  # already finished
    processed: int
    rows: int  # written by this run
    errors: int  # rows with an unreadable image
    failed: list[str] = field(default_factory=list)  # "shard N: error", Dask only (local raises)
    seconds: float = 0.0
    processes: int = 1  # worker processes on one machine (1: this process)
    worker_peak_rss_mb: float | None = None  # the largest worker process's peak (Linux), None without workers
    trained_on_synthetic: bool = False  # the model learnt the renderer's galaxies: a demo on real cutouts

    @property
    def ok(self) -> bool:
        return not self.failed


# ------------------------------------------------------------------------ one shard


ChunkSubmitter = Callable[[list[ImageInput]], "Future[list[Classified]]"]


def classify_stream(submit: ChunkSubmitter, chunks: Iterator[tuple[Any, list[ImageInput]]], ahead: int
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


def build_output(inputs: Any, results: Sequence[Classified], class_names: Sequence[str], has_ood: bool) -> Any:
    """id_str, pass-through, predicted_class, confidence, one column per class, in_distribution and
    ood_score (with an OOD check), error: one row per input, in input order."""
    import numpy as np
    import pyarrow as pa

    preds = [r.prediction for r in results]
    columns: dict[str, Any] = {name: inputs.column(name) for name in inputs.column_names}
    columns["predicted_class"] = pa.array([p.predicted_class if p else None for p in preds], pa.string())
    columns["confidence"] = pa.array([p.confidence if p else None for p in preds], pa.float64())
    mask = np.array([p is None for p in preds], dtype=bool)
    probs = np.array([[p.probabilities[n] for n in class_names] if p else [0.0] * len(class_names) for p in preds],
                     dtype=np.float64).reshape(len(preds), len(class_names))
    for j, name in enumerate(class_names):
        columns[name] = pa.array(probs[:, j], pa.float64(), mask=mask)
    if has_ood:
        columns["in_distribution"] = pa.array([p.in_distribution if p else None for p in preds], pa.bool_())
        columns["ood_score"] = pa.array([p.ood_score if p else None for p in preds], pa.float64())
    columns["error"] = pa.array([None if r.ok else str(r.error) for r in results], pa.string())
    assert list(columns)[inputs.num_columns:] == output_columns(class_names, has_ood)
    return pa.table(columns)


@lru_cache(maxsize=1)
def kit_provenance() -> dict[str, str]:
    """The code that made a shard: galaxylib's version and the checkout's commit (once per process)."""
    import galaxylib
    from galaxylib.config import git_commit

    return {"galaxylib_version": galaxylib.__version__, "git_commit": git_commit() or "unknown"}


def run_shard(predictor: Predictor | None, plan: Plan, spec: ShardSpec, *, batch_size: int = DEFAULT_BATCH,
              workers: int = 2, database_url: str | None = None, to_database: bool = False,
              progress: Callable[[int], None] | None = None, pool: Executor | None = None) -> dict[str, Any]:
    """Classify one work shard and put it in place: Parquet file, database rows, manifest entry.

    With ``pool`` (a :func:`worker_pool`), its processes classify the chunks, ``workers`` of them
    queued ahead; otherwise ``predictor`` does, with ``workers`` decoding threads."""
    import pyarrow as pa

    if predictor is not None and (predictor.has_ood != plan.has_ood
                                  or list(predictor.class_names) != plan.class_names):
        raise CatalogError(f"the model at {predictor.path} is not the one this plan was made for")
    remove_stale_temporaries(plan, spec.index)
    started = time.perf_counter()
    shard_input = plan.source.read(spec, batch_size)
    tables, results = [], []
    with contextlib.ExitStack() as stack:
        if pool is not None:
            def submit(items: list[ImageInput]) -> Future:
                return pool.submit(_worker_classify, items, batch_size)
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
    size = write_parquet(out, plan.part_path(spec.index), provenance, spec.index)
    crash_point("after-rename", spec.index)
    previous = plan.entry(spec.index) or {}
    databases = [d for d in previous.get("databases", []) if previous.get("bytes") == size]
    if to_database:
        from galaxylib.catalog.to_database import load_shard, store_for

        store = store_for(database_url)
        load_shard(store, inputs.column(ID_COLUMN).to_pylist(), results, plan.model_version)
        databases = sorted(set(databases) | {store.url})
        crash_point("after-database", spec.index)
    entry = {"file": plan.part_path(spec.index).name, "rows": out.num_rows, "errors": errors, "bytes": size,
             "input_checksum": shard_input.checksum, "databases": databases,
             "seconds": round(time.perf_counter() - started, 3), "host": os.uname().nodename}
    plan.write_entry(spec.index, entry)  # last: the shard counts as finished only now
    return {"shard": spec.index, **entry}


# ------------------------------------------------------------------------- runners


_POOL_PREDICTOR: Predictor | None = None


def _die_with_parent(parent_pid: int) -> None:
    """A worker is killed with the run that started it, so a ``kill -9`` of the run leaves no
    orphan finishing a chunk while the rerun redoes its shard (Linux: PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(1)


def _worker_init(model_dir: str, threads: int, parent_pid: int) -> None:
    global _POOL_PREDICTOR
    _die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group: the parent stops the run and shuts the pool down,
    # so a worker ignores it rather than dying mid-task with a traceback of its own. Workers are
    # started ignoring it (_ctrl_c_ignored), except when the pool is made off the main
    # thread, where the parent cannot change its handler: this covers that case.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _POOL_PREDICTOR = Predictor(model_dir, num_threads=threads)


def _worker_classify(items: list[ImageInput], batch_size: int) -> list[Classified]:
    assert _POOL_PREDICTOR is not None, "a worker process runs _worker_init first"
    return classify(_POOL_PREDICTOR, items, forward_batch=batch_size)


def _worker_ready() -> int:
    return os.getpid()


def worker_pool(model_dir: str | os.PathLike, processes: int, threads: int) -> ProcessPoolExecutor:
    """``processes`` fresh interpreters (spawned: nothing inherited from a parent that may hold
    threads), each loading the model once with ``threads`` LiteRT threads and every other
    native library on one thread. They are started here, so a model that fails to load fails
    now, and the environment they start with is this function's."""
    pool = ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init, initargs=(str(model_dir), threads, os.getpid()))
    try:
        # Each submit starts a process while none is idle yet, so all of them start inside the block.
        with single_threaded_children(), _without_main_module(), _ctrl_c_ignored():
            ready = [pool.submit(_worker_ready) for _ in range(processes)]
        for future in ready:
            future.result()
    except BaseException as exc:
        stop_workers(pool)
        if isinstance(exc, BrokenProcessPool):
            raise CatalogError(f"the catalogue's worker processes could not start ({exc}); "
                               "processes=1 (--processes 1) runs in this process") from exc
        raise
    return pool


@contextlib.contextmanager
def running_pool(model_dir: str | os.PathLike, processes: int, threads: int) -> Iterator[ProcessPoolExecutor]:
    """A :func:`worker_pool` for one run: shut down in order when the run ends, its workers ended at
    once when the run stops on an error or Ctrl-C."""
    pool = worker_pool(model_dir, processes, threads)
    try:
        yield pool
    except BaseException:
        stop_workers(pool)
        raise
    pool.shutdown(wait=True)


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """End a stopped run's worker processes now, queued chunks and all. An orderly shutdown waits
    for the queued chunks, and a second Ctrl-C during it left the workers waiting for work that
    never came while the run waited for them at exit, for good (2 of 3 double Ctrl-Cs here). A
    chunk in flight is lost, and that costs nothing: a shard counts as finished only once its
    manifest entry is written, so the rerun redoes it."""
    with _ctrl_c_ignored():  # a further Ctrl-C must not cut this short
        # The executor's own process table (private, but in every CPython since 3.2): nothing public
        # lists a pool's processes, and multiprocessing.active_children() holds the caller's others too.
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=10)


@contextlib.contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    """Ctrl-C is ignored inside the block. Processes started in it ignore SIGINT from birth (Python
    keeps an inherited SIG_IGN), so a Ctrl-C while they are still importing prints no traceback
    from each of them; and stopping a pool in it is not cut short by a second Ctrl-C. The block
    lasts milliseconds; the caller's own handler is back after it."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be changed from the main thread
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _without_main_module() -> Iterator[None]:
    """Spawned workers skip re-importing the caller's ``__main__`` (they need nothing from it), so a
    plain script without an ``if __name__ == "__main__":`` guard works, and a guarded one is not
    imported twice more. multiprocessing reads ``sys.modules["__main__"]`` only while starting a
    process, which is all that happens inside this block."""
    import types

    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def peak_rss_mb(pid: int | str = "self") -> float | None:
    """A process's peak resident memory (VmHWM, Linux; None elsewhere). Not ru_maxrss, which on
    Linux keeps the peak of the process before an exec."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def local_processes(todo: Sequence[ShardSpec], total_threads: int, shard_rows: int) -> int:
    """One worker process per thread for a catalogue worth starting them for, else 1 (this process)."""
    rows = sum(int(s.rows) if s.rows is not None else shard_rows for s in todo)
    return total_threads if total_threads > 1 and rows >= PROCESS_MIN_ROWS else 1


def _run_local(plan: Plan, todo: list[ShardSpec], *, threads: int | None, processes: int | None, batch_size: int,
               database_url: str | None, to_database: bool, show_progress: bool
               ) -> tuple[list[dict[str, Any]], int, float | None]:
    from tqdm import tqdm

    total_threads = threads or default_threads()
    n_proc = processes or local_processes(todo, total_threads, plan.shard_rows)
    total = None if any(s.rows is None for s in todo) else sum(int(s.rows or 0) for s in todo)
    entries: list[dict[str, Any]] = []
    peak: float | None = None
    with contextlib.ExitStack() as stack:
        if n_proc > 1:
            pool = stack.enter_context(running_pool(plan.model_dir, n_proc, max(1, total_threads // n_proc)))
            predictor, ahead = None, 2 * n_proc
        else:
            pool, predictor = None, Predictor(plan.model_dir, num_threads=total_threads)
            ahead = predictor.num_threads + 1
        bar = stack.enter_context(tqdm(total=total, desc="Classifying catalogue", unit="img", file=sys.stderr,
                                       disable=not show_progress, smoothing=0.05))
        bar.set_postfix(processes=n_proc)
        for spec in todo:
            entries.append(run_shard(predictor, plan, spec, batch_size=batch_size, workers=ahead,
                                     database_url=database_url, to_database=to_database, progress=bar.update,
                                     pool=pool))
            bar.set_postfix(shards=f"{len(entries)}/{len(todo)}", processes=n_proc)
        if pool is not None:
            peaks = [peak_rss_mb(p.pid) for p in multiprocessing.active_children() if p.pid is not None]
            peak = max((x for x in peaks if x is not None), default=None)
    return entries, n_proc, peak


_WORKER_PREDICTORS: dict[tuple[str, int], Predictor] = {}


def _worker_threads() -> int:
    try:
        from distributed import get_worker

        worker = get_worker()
        return int(getattr(worker, "nthreads", None) or worker.state.nthreads)
    except Exception:
        return 1


def dask_task(out_dir: str, model_dir: str, index: int, batch_size: int, threads: int | None,
              database_url: str | None, to_database: bool) -> dict[str, Any]:
    """One shard on a Dask worker; its Predictor is loaded once per worker process and kept."""
    n = threads or _worker_threads()
    key = (model_dir, n)
    if key not in _WORKER_PREDICTORS:
        _WORKER_PREDICTORS[key] = Predictor(model_dir, num_threads=n)
    plan = Plan.load(out_dir)
    plan.model_dir = Path(model_dir)
    spec = next(s for s in plan.shards if s.index == index)
    return run_shard(_WORKER_PREDICTORS[key], plan, spec, batch_size=batch_size, workers=n + 1,
                     database_url=database_url, to_database=to_database)


def parse_dask(text: str) -> tuple[int | None, str | None]:
    """``local:N`` -> (N, None); ``tcp://host:port`` (any scheduler address) -> (None, address)."""
    text = str(text).strip()
    if text.startswith("local:"):
        try:
            n = int(text[len("local:"):])
        except ValueError:
            n = 0
        if n < 1:
            raise CatalogError(f"--dask local:N needs a number of worker processes N >= 1, got {text!r}")
        return n, None
    if "://" in text:
        return None, text
    raise CatalogError(f"--dask must be local:N (start N worker processes) or a scheduler address such as "
                       f"tcp://host:8786, got {text!r}")


def _run_dask(plan: Plan, todo: list[ShardSpec], spec_text: str, *, threads: int | None, batch_size: int,
              database_url: str | None, to_database: bool, show_progress: bool
              ) -> tuple[list[dict[str, Any]], list[str]]:
    import logging

    from distributed import Client, LocalCluster, as_completed
    from tqdm import tqdm

    n_local, address = parse_dask(spec_text)
    cluster = None
    if n_local is not None:
        cluster = LocalCluster(n_workers=n_local, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
        threads = threads or 1
    try:
        client = Client(cluster if cluster is not None else address)
    except OSError as exc:  # distributed raises OSError (a TimeoutError) for a scheduler it cannot reach
        if cluster is not None:
            cluster.close()
        raise CatalogError(f"cannot reach the Dask scheduler at {spec_text} ({exc}); start one there "
                           "(`dask scheduler`), or run on this machine with --dask local:N") from exc
    entries, failed = [], []
    try:
        token = uuid.uuid4().hex[:8]  # a long-lived scheduler may still hold an earlier run's keys
        futures = {client.submit(dask_task, str(plan.out_dir), str(plan.model_dir), s.index, batch_size, threads,
                                 database_url, to_database, key=f"galaxy-shard-{plan.key[:12]}-{s.index}-{token}",
                                 pure=False): s.index for s in todo}
        with tqdm(total=len(futures), desc=f"Classifying catalogue on Dask ({spec_text})", unit="shard",
                  file=sys.stderr, disable=not show_progress) as bar:
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


def predict_catalog(model: str | os.PathLike, catalog: str | os.PathLike, out: str | os.PathLike, *,
                    shard: str | tuple[int, int] | None = None, dask: str | None = None, to_database: bool = False,
                    database_url: str | None = None, shard_rows: int = DEFAULT_SHARD_ROWS,
                    batch_size: int = DEFAULT_BATCH, threads: int | None = None, processes: int | None = None,
                    overwrite: bool = False, show_progress: bool = True) -> CatalogResult:
    """Classify every row of ``catalog`` into the Parquet dataset ``out``; what ``./predict.sh --catalog`` runs.

    Resumable: shards the manifest records as finished (for this input, model and shard size)
    are skipped, so rerunning after a crash, or as another task of a Slurm array
    (``shard="K/N"``), only does what is left. ``dask="local:N"`` or a scheduler address
    spreads the shards over Dask workers. On one machine ``threads`` (default: all cores) is the
    total; ``processes`` splits it over worker processes (default: one per thread, or none for a
    catalogue under ``PROCESS_MIN_ROWS`` rows)."""
    from galaxylib.artifact import read_artifact

    started = time.perf_counter()
    k_n = shard if isinstance(shard, tuple) else parse_shard(shard)
    if isinstance(shard, tuple):
        parse_shard(f"{shard[0]}/{shard[1]}")
    if batch_size < 1:
        raise CatalogError(f"--batch-size must be at least 1, got {batch_size}")
    if processes is not None and processes < 1:
        raise CatalogError(f"--processes must be at least 1, got {processes}")
    if dask is not None:
        parse_dask(dask)  # a bad spec fails before any work
    artifact = read_artifact(model)
    plan = make_plan(catalog, artifact, out, shard_rows=shard_rows, overwrite=overwrite, show_progress=show_progress)
    db_key = None
    if to_database:
        from galaxylib.catalog.to_database import database_key

        db_key = database_key(database_url)
    selected = [s for s in plan.shards if s.index % k_n[1] == k_n[0] - 1]
    todo = plan.todo(k_n, db_key)
    failed: list[str] = []
    n_proc, peak = 1, None
    if not todo:
        entries: list[dict[str, Any]] = []
    elif dask is None:
        entries, n_proc, peak = _run_local(plan, todo, threads=threads, processes=processes, batch_size=batch_size,
                                           database_url=database_url, to_database=to_database,
                                           show_progress=show_progress)
    else:
        entries, failed = _run_dask(plan, todo, dask, threads=threads, batch_size=batch_size,
                                    database_url=database_url, to_database=to_database, show_progress=show_progress)
    return CatalogResult(out_dir=Path(out), shards=len(plan.shards), selected=len(selected),
                         skipped=len(selected) - len(todo), processed=len(entries),
                         rows=sum(e["rows"] for e in entries), errors=sum(e["errors"] for e in entries),
                         failed=failed, seconds=time.perf_counter() - started, processes=n_proc,
                         worker_peak_rss_mb=peak, trained_on_synthetic=artifact.synthetic)
