"""The worker processes that classify a catalogue's chunks on one machine.

Each worker is a fresh (spawned) interpreter with its own one-thread LiteRT Predictor, loaded
once: one worker's decode overlaps another's forward pass, with no locks and no thread hand-offs
inside XNNPACK, which measured faster than one interpreter using every core (docs/catalog.md).
The parent alone writes files and the manifest. This module owns the processes' lives: started
ignoring Ctrl-C, killed with the run that started them (``PR_SET_PDEATHSIG``), and ended at once
when a run stops.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from galaxylib.catalog.sources import CatalogError
from galaxylib.inference.classify import Classified, ImageInput, classify
from galaxylib.inference.predictor import Predictor
from galaxylib.inference.threads import single_threaded_children
from galaxylib.processes import without_main_module

_POOL_PREDICTOR: Predictor | None = None  # this worker process's own, set by _worker_init


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


def worker_classify(items: list[ImageInput], batch_size: int) -> list[Classified]:
    assert _POOL_PREDICTOR is not None, "a worker process runs _worker_init first"
    return classify(_POOL_PREDICTOR, items, forward_batch=batch_size)


def _worker_ready() -> int:
    return os.getpid()


def worker_pool(model_dir: str | os.PathLike, processes: int, threads: int) -> ProcessPoolExecutor:
    """``processes`` fresh interpreters (spawned: nothing inherited from a parent that may hold
    threads), each loading the model once with ``threads`` LiteRT threads and every other
    native library on one thread. They are started here, so a model that fails to load fails
    now, and the environment they start with is this function's."""
    pool = ProcessPoolExecutor(
        max_workers=processes,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(str(model_dir), threads, os.getpid()),
    )
    try:
        # Each submit starts a process while none is idle yet, so all of them start inside the block.
        with single_threaded_children(), without_main_module(), _ctrl_c_ignored():
            ready = [pool.submit(_worker_ready) for _ in range(processes)]
        for future in ready:
            future.result()
    except BaseException as exc:
        stop_workers(pool)
        if isinstance(exc, BrokenProcessPool):
            raise CatalogError(
                f"the catalogue's worker processes could not start ({exc}); "
                "processes=1 (--processes 1) runs in this process"
            ) from exc
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
