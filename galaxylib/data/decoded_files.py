"""Image files straight to a model-size uint8 cache, on every core, resuming where it stopped.

Why its own module: a labelled folder or catalogue is never copied at 256 px first. Each file
is decoded once, through the one preprocessing path at the model's size and crop (the same
mapping the served model applies to that file), into a ``.npy`` memmap that becomes the resized
cache. A stopped decode keeps what it did: ``<partial>.done.npy`` marks the finished rows and
``<partial>.errors.jsonl`` the unreadable ones, so the next call decodes only what is left.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from galaxylib.preprocessing import ImageError, decode_image, preprocess_uint8
from galaxylib.processes import without_main_module

CHUNK = 64  # images a worker decodes per task


def _decode_chunk(paths: list[str], image_size: int, crop: float) -> tuple[np.ndarray, list[str | None]]:
    """A worker's task: the files at the model's size, and for each a reason it could not be read."""
    out = np.zeros((len(paths), image_size, image_size, 3), np.uint8)
    errors: list[str | None] = []
    for i, path in enumerate(paths):
        try:
            out[i] = preprocess_uint8(decode_image(Path(path)), image_size, crop)
            errors.append(None)
        except (OSError, ImageError, ValueError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return out, errors


def _decode_into(
    pixels: str, offset: int, start: int, paths: list[str], image_size: int, crop: float
) -> list[str | None]:
    """A worker's task: decode a chunk and write it at its rows of the ``.npy`` itself, so only
    the reasons travel back (pixels through a pipe would keep the parent busy copying). Written
    without a sync: a killed process's writes are in the page cache, and the parent marks the rows
    done only after this returns."""
    decoded, errors = _decode_chunk(paths, image_size, crop)
    with open(pixels, "r+b") as fh:
        fh.seek(offset + start * decoded[0].nbytes)
        fh.write(decoded.tobytes())
    return errors


@contextlib.contextmanager
def decoding_lock(partial: Path) -> Iterator[None]:
    """One decoder per partial file: a second process (another worker of a cluster) waits here,
    then finds the work done. Hold it from the check for the finished file to its move into
    place. The lock file stays (removing a lock file others wait on would let two in)."""
    lock = partial.with_name(partial.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def partial_files(partial: Path) -> tuple[Path, Path, Path, Path]:
    """The pixels, the done flags, the errors and the key of a decode in progress."""
    named = partial.with_name
    return (
        named(partial.name + ".npy"),
        named(partial.name + ".done.npy"),
        named(partial.name + ".errors.jsonl"),
        named(partial.name + ".key"),
    )


def discard_partial(partial: Path) -> None:
    for path in partial_files(partial):
        path.unlink(missing_ok=True)


def decode_files(
    paths: Sequence[str | os.PathLike],
    image_size: int,
    crop: float,
    partial: Path,
    *,
    workers: int | None = None,
    show_progress: bool = True,
    desc: str = "Decoding images",
) -> tuple[Path, dict[int, str]]:
    """Decode every file into ``<partial>.npy`` ((n, size, size, 3) uint8; an unreadable file's row
    stays zeros), on ``workers`` processes (all cores by default). Returns that file and
    ``{row: why}`` for the files that could not be read. The caller holds ``decoding_lock``,
    moves the file into place and then calls ``discard_partial``."""
    names = [str(p) for p in paths]
    n = len(names)
    pixels, done_file, errors_file, key_file = partial_files(partial)
    key = json.dumps(
        {"files": hashlib.sha256("\n".join(names).encode()).hexdigest(), "n": n, "size": image_size, "crop": crop}
    )
    fresh = not (key_file.is_file() and key_file.read_text() == key and pixels.is_file() and done_file.is_file())
    if fresh:  # another input's, or a first start
        for path in (pixels, done_file, errors_file, key_file):
            path.unlink(missing_ok=True)
        np.lib.format.open_memmap(pixels, mode="w+", dtype=np.uint8, shape=(n, image_size, image_size, 3)).flush()
        np.save(done_file, np.zeros(n, bool))
        key_file.write_text(key)
    offset = np.load(pixels, mmap_mode="r").offset  # where the rows start, after the .npy header
    done = np.load(done_file, mmap_mode="r+")
    todo = [i for i in range(0, n, CHUNK) if not done[i : i + CHUNK].all()]
    workers = max(1, workers or os.cpu_count() or 1)
    # spawned, not forked: a notebook's kernel holds threads a fork would copy mid-flight
    pool = (
        ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        if workers > 1 and len(todo) > 1
        else None
    )
    try:
        tasks = (
            [str(pixels)] * len(todo),
            [offset] * len(todo),
            todo,
            [names[i : i + CHUNK] for i in todo],
            [image_size] * len(todo),
            [crop] * len(todo),
        )
        with (
            tqdm(total=n, initial=int(done.sum()), desc=desc, unit="img", disable=not show_progress) as bar,
            open(errors_file, "a") as errors_out,
        ):
            if pool is None:
                results = map(_decode_into, *tasks)
            else:
                with without_main_module():  # every task is submitted, and every worker started, here
                    results = pool.map(_decode_into, *tasks)
            for start, errors in zip(todo, results):
                for row, why in enumerate(errors, start=start):
                    if why:
                        errors_out.write(json.dumps({"row": row, "error": why}) + "\n")
                errors_out.flush()
                done[start : start + len(errors)] = True  # a stop after this line resumes after this chunk
                bar.update(len(errors))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    done.flush()
    del done
    unreadable: dict[int, str] = {}
    for line in errors_file.read_text().splitlines():
        record = json.loads(line)
        unreadable[int(record["row"])] = str(record["error"])  # a chunk redone after a stop writes its rows again
    return pixels, unreadable
