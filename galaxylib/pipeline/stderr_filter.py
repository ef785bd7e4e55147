"""Known noise kept off train.sh's terminal.

TensorFlow 2.21 writes "oneDNN custom operations are on" and absl's "All log messages before
absl::InitializeLog()" straight to file descriptor 2 from C++ when it is imported, in every
notebook kernel, whatever TF_CPP_MIN_LOG_LEVEL says (tensorflow#100442); the TFLite converter
logs a deprecation through absl, MLflow announces its database set-up, each kernel warns that
it listens on TCP (on 127.0.0.1, for papermill alone), and LiteRT announces its CPU delegate
where a notebook loads the exported model. None of it is
something a user can act on, and it made each run look as if it had failed. The kernels inherit
train.sh's descriptor 2, so that is where it is filtered: a pipe, read by a thread that drops
those lines and passes everything else through unchanged, progress bars' carriage returns included.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

NOISE = re.compile(
    rb"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|oneDNN custom operations are on"
    rb"|Please consider providing the trackable_obj argument"
    rb"|INFO mlflow\.store\.db\.utils: "
    rb"|\[IPKernelApp\] WARNING \| Kernel is running over TCP without encryption"
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
)
_SEPARATORS = re.compile(rb"(?<=[\r\n])")


def _pass_through(read_fd: int, write_fd: int) -> None:
    pending = b""
    with os.fdopen(read_fd, "rb", buffering=0) as source:
        while chunk := source.read(65536):
            pieces = _SEPARATORS.split(pending + chunk)
            pending = pieces.pop() if not pieces[-1].endswith((b"\n", b"\r")) else b""
            kept = b"".join(p for p in pieces if p and not NOISE.search(p))
            if kept:
                os.write(write_fd, kept)
    if pending and not NOISE.search(pending):
        os.write(write_fd, pending)


@contextlib.contextmanager
def native_noise_filtered() -> Iterator[None]:
    """While inside, lines matching ``NOISE`` written to descriptor 2 by this process or its
    children are dropped; the rest reaches the terminal as it was written."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2: nothing to filter
        yield
        return
    read_fd, write_fd = os.pipe()
    thread = threading.Thread(target=_pass_through, args=(read_fd, saved), name="stderr-filter", daemon=True)
    thread.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer here closes; the thread drains it and stops
        thread.join(timeout=5)
        os.close(saved)
