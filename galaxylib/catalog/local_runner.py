"""A catalogue's shards on this machine: in worker processes, or in this one for a small run.

A catalogue of more than ``PROCESS_MIN_ROWS`` rows is classified by worker processes, one per
core (``galaxylib.catalog.worker_pool``). A small run stays in this process, where a pool of
threads decodes the next chunks while the interpreter runs the current one.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
from collections.abc import Sequence
from typing import Any

from galaxylib.catalog.process_memory import peak_rss_mb
from galaxylib.catalog.shard_runner import run_shard
from galaxylib.catalog.shards import Plan
from galaxylib.catalog.sources import ShardSpec
from galaxylib.catalog.worker_pool import running_pool
from galaxylib.inference.predictor import Predictor, default_threads

PROCESS_MIN_ROWS = 512  # below this, starting worker processes (~2 s each) costs more than it saves


def local_processes(todo: Sequence[ShardSpec], total_threads: int, shard_rows: int) -> int:
    """One worker process per thread for a catalogue worth starting them for, else 1 (this process)."""
    rows = sum(int(s.rows) if s.rows is not None else shard_rows for s in todo)
    return total_threads if total_threads > 1 and rows >= PROCESS_MIN_ROWS else 1


def run_locally(
    plan: Plan,
    todo: list[ShardSpec],
    *,
    threads: int | None,
    processes: int | None,
    batch_size: int,
    database_url: str | None,
    to_database: bool,
    show_progress: bool,
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
        bar = stack.enter_context(
            tqdm(
                total=total,
                desc="Classifying catalogue",
                unit="img",
                file=sys.stderr,
                disable=not show_progress,
                smoothing=0.05,
            )
        )
        bar.set_postfix(processes=n_proc)
        for spec in todo:
            entries.append(
                run_shard(
                    predictor,
                    plan,
                    spec,
                    batch_size=batch_size,
                    workers=ahead,
                    database_url=database_url,
                    to_database=to_database,
                    progress=bar.update,
                    pool=pool,
                )
            )
            bar.set_postfix(shards=f"{len(entries)}/{len(todo)}", processes=n_proc)
        if pool is not None:
            peaks = [peak_rss_mb(p.pid) for p in multiprocessing.active_children() if p.pid is not None]
            peak = max((x for x in peaks if x is not None), default=None)
    return entries, n_proc, peak
