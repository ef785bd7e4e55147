"""Thread-count defaults for native libraries, applied before they are imported.

Each serving worker or catalogue worker is a process with its own LiteRT interpreter and an
explicit thread count (GALAXY_NUM_THREADS, ``--threads``). If every other native library in
every process also starts one thread per core (OpenMP, OpenBLAS, TensorFlow's two pools),
four processes on two cores run dozens of threads, and OpenBLAS's spin after each small
matrix product (the out-of-distribution score) takes cycles from the interpreters: measured
~11 % of a two-process catalogue run's throughput. Everything else therefore gets one
thread; values already in the environment win.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

SINGLE_THREADED = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",  # TensorFlow is never imported for inference; set in case a plugin does
    "TF_NUM_INTEROP_THREADS",
)


def limit_native_threads() -> None:
    """For this process: call it before numpy is imported."""
    for name in SINGLE_THREADED:
        os.environ.setdefault(name, "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def single_threaded_children() -> Iterator[None]:
    """For processes started inside the block (the parent's own libraries are loaded already)."""
    saved = {name: os.environ.get(name) for name in SINGLE_THREADED}
    for name in SINGLE_THREADED:
        os.environ.setdefault(name, "1")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
