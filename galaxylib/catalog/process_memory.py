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
