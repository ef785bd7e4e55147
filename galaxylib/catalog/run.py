"""Run a catalogue through a model: on one machine, as one task of a Slurm array, or on Dask.

:func:`predict_catalog` is what ``./predict.sh --catalog`` runs. It plans the catalogue into
work shards (``galaxylib.catalog.shards``), leaves out the ones already finished, and hands the
rest to a runner: ``local_runner`` (worker processes on this machine) or ``dask_runner``. Every
runner does each shard with ``shard_runner.run_shard``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from galaxylib.catalog.dask_runner import parse_dask, run_on_dask
from galaxylib.catalog.local_runner import run_locally
from galaxylib.catalog.process_memory import use_system_allocator
from galaxylib.catalog.shard_runner import DEFAULT_BATCH
from galaxylib.catalog.shards import make_plan, parse_shard
from galaxylib.catalog.sources import CatalogError

DEFAULT_SHARD_ROWS = 2048  # ~1 min of EfficientNetB0 at 224 px on 2 cores: little lost to a crash


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


def predict_catalog(
    model: str | os.PathLike,
    catalog: str | os.PathLike,
    out: str | os.PathLike,
    *,
    shard: str | tuple[int, int] | None = None,
    dask: str | None = None,
    to_database: bool = False,
    database_url: str | None = None,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    batch_size: int = DEFAULT_BATCH,
    threads: int | None = None,
    processes: int | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> CatalogResult:
    """Classify every row of ``catalog`` into the Parquet dataset ``out``; what ``./predict.sh --catalog`` runs.

    Resumable: shards the manifest records as finished (for this input, model and shard size)
    are skipped, so rerunning after a crash, or as another task of a Slurm array
    (``shard="K/N"``), only does what is left. ``dask="local:N"`` or a scheduler address
    spreads the shards over Dask workers. On one machine ``threads`` (default: all cores) is the
    total; ``processes`` splits it over worker processes (default: one per thread, or none for a
    catalogue under ``PROCESS_MIN_ROWS`` rows)."""
    from galaxylib.artifact import read_artifact

    use_system_allocator()
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
        entries, n_proc, peak = run_locally(
            plan,
            todo,
            threads=threads,
            processes=processes,
            batch_size=batch_size,
            database_url=database_url,
            to_database=to_database,
            show_progress=show_progress,
        )
    else:
        entries, failed = run_on_dask(
            plan,
            todo,
            dask,
            threads=threads,
            batch_size=batch_size,
            database_url=database_url,
            to_database=to_database,
            show_progress=show_progress,
        )
    return CatalogResult(
        out_dir=Path(out),
        shards=len(plan.shards),
        selected=len(selected),
        skipped=len(selected) - len(todo),
        processed=len(entries),
        rows=sum(e["rows"] for e in entries),
        errors=sum(e["errors"] for e in entries),
        failed=failed,
        seconds=time.perf_counter() - started,
        processes=n_proc,
        worker_peak_rss_mb=peak,
        trained_on_synthetic=artifact.synthetic,
    )
