"""Starting worker processes from anywhere: a script, a notebook's kernel, a test."""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator


@contextlib.contextmanager
def without_main_module() -> Iterator[None]:
    """Spawned workers skip re-importing the caller's ``__main__`` (they need nothing from it), so a
    plain script without an ``if __name__ == "__main__":`` guard works, a guarded one is not
    imported twice more, and a notebook's kernel is not started again. multiprocessing reads
    ``sys.modules["__main__"]`` only while starting a process: start them inside this block."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main
