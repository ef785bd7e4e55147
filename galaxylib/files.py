"""File integrity in one place: SHA-256, the sidecar that vouches for a hash, atomic writes.

Why one module: the 2.5 GB Galaxy10 file must be hashed once and then trusted by its
``<file>.sha256`` sidecar, whoever asks (the download check or the dataset fingerprint),
and every file the kit writes (metrics, splits, CSVs, artifacts) must appear whole or not
at all, so a crash never leaves a half-written file that a later step trusts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
SIDECAR_SUFFIX = ".sha256"


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk_size: int = 8 * MiB, show_progress: bool = False) -> str:
    """The file's SHA-256, read in chunks so a 2.5 GB file never has to fit in memory."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh, _progress(path, show_progress) as bar:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _progress(path: Path, show: bool):
    if not show:
        return contextlib.nullcontext(_NoBar())
    from tqdm import tqdm

    return tqdm(total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024, desc=f"sha256 {path.name}")


class _NoBar:
    def update(self, _n: int) -> None:
        pass


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _stamp(path: Path, sha256: str) -> dict[str, Any]:
    stat = path.stat()
    return {"sha256": sha256.lower(), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def remember_sha256(path: str | os.PathLike, sha256: str) -> None:
    """Record a hash beside the file for this size and mtime. Only a cache: a read-only
    folder is not an error, the file is simply hashed again next time."""
    path = Path(path)
    try:
        atomic_write_text(sidecar_path(path), json.dumps(_stamp(path, sha256)) + "\n")
    except OSError:
        pass


def trusted_sha256(path: str | os.PathLike) -> str | None:
    """The sidecar's hash if it still describes this file (same size and mtime), else None."""
    path = Path(path)
    try:
        saved = json.loads(sidecar_path(path).read_text())
        stat = path.stat()
        if saved.get("size") == stat.st_size and saved.get("mtime_ns") == stat.st_mtime_ns:
            return str(saved["sha256"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def file_sha256(path: str | os.PathLike, show_progress: bool = False) -> str:
    """The file's SHA-256, from its sidecar when that still vouches for it, else hashed once
    and remembered."""
    cached = trusted_sha256(path)
    if cached is not None:
        return cached
    value = sha256_file(path, show_progress=show_progress)
    remember_sha256(path, value)
    return value


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename,
    on failure it is removed. Readers see the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, value: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=indent, default=str) + "\n")
