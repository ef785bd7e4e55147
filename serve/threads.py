"""Thread-count defaults for native libraries, applied before they are imported.

Each gunicorn worker is a process; if every library in every worker also starts
one thread per core (OpenMP, OpenBLAS, TensorFlow's two pools), four workers on
two cores run dozens of busy threads and thrash. The model's own threads are set
explicitly (GALAXY_NUM_THREADS, serve/settings.py); everything else gets one
thread. Values already in the environment win.
"""
from __future__ import annotations

import os

SINGLE_THREADED = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",  # TensorFlow is never imported by the server; set in case a plugin does
    "TF_NUM_INTEROP_THREADS",
)


def limit_native_threads() -> None:
    for name in SINGLE_THREADED:
        os.environ.setdefault(name, "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
