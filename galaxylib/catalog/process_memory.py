"""A process's peak resident memory: what the catalogue run reports for its workers."""

from __future__ import annotations

from pathlib import Path


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


def use_system_allocator() -> None:
    """Arrow allocates from the C library's malloc in this process from now on.

    Arrow's own pool (mimalloc) keeps freed pages to reuse them, and a catalogue run reads and
    writes shard after shard, so the run's peak crept up with the catalogue's length (+10-13 %
    from 10,000 to 100,000 rows in ``bench/bench_catalog.py --only memory``); malloc hands large
    blocks back to the system: the median of three runs went from +12.2 % to +9.5 % (11 MB less
    at 100,000 rows). Per process: ``predict_catalog`` calls it before reading the catalogue and
    ``run_shard`` before each shard (a Dask worker's process); the local worker processes only
    classify."""
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
