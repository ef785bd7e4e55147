"""Service configuration, read once from the environment (and ``.env``, via galaxylib.config).

Everything a deployment changes lives here, so the code has no hard-coded
credentials, paths or limits. ``Settings`` is a plain dataclass: tests build one
directly instead of patching the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from galaxylib.config import database_url, user_path

MiB = 1024 * 1024


class SettingsError(ValueError):
    """A malformed environment variable; the message names it."""


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _number(env: Mapping[str, str], name: str, default, minimum, kind=int):
    """An int or float setting from the environment, with a message naming the variable."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError as exc:
        what = "an integer" if kind is int else "a number"
        raise SettingsError(f"{name} must be {what}, got {raw!r}") from exc
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be 1/true/yes/on or 0/false/no/off, got {raw!r}")


@dataclass
class Settings:
    database_url: str
    model_path: str | None = None
    model_url: str | None = None
    model_sha256: str | None = None  # optional checksum of the MODEL_URL archive
    admin_token: str | None = field(default=None, repr=False)
    max_upload_mb: float = 16.0
    max_batch: int = 32
    # Interpreter threads per worker. All cores gives the lowest latency for one request and
    # the best batch throughput; 1 gives ~19% more images/s when 8 clients post at once
    # (docs/performance.md).
    num_threads: int = field(default_factory=cpu_cores)
    # Images per forward pass; a larger request runs in several. EfficientNetB0 at 224 px needs
    # ~15 MB of activations per image, so 8 keeps a worker near 200 MB instead of ~540 MB at 32,
    # and faster per image (docs/performance.md).
    forward_batch: int = 8
    db_retry_seconds: float = 2.0
    # Seconds from a request's start to the end of its body (serve/body_deadline.py): a client
    # trickling its upload gets 408 instead of holding a worker thread. 0 turns it off.
    body_timeout_s: float = 30.0
    # A Server-Timing header on POST /predict (read, decode, forward, store): for profiling
    # and bench/bench_serve.py. Off by default: timings are internal detail.
    server_timing: bool = False

    def __post_init__(self) -> None:
        if self.admin_token is not None:
            # Surrounding whitespace is a copy-paste accident; an empty token must never mean
            # "everyone is admin", so it disables the admin endpoints.
            self.admin_token = self.admin_token.strip() or None

    @property
    def max_content_length(self) -> int:
        return int(self.max_upload_mb * MiB)

    @property
    def admin_enabled(self) -> bool:
        return self.admin_token is not None

    @classmethod
    def from_env(cls) -> Settings:
        """Read the documented variables (see .env.example); raise SettingsError on a bad value."""
        env = os.environ
        kwargs: dict = {
            "database_url": database_url(),
            "model_path": str(user_path(env["MODEL_PATH"].strip())) if env.get("MODEL_PATH", "").strip() else None,
            "model_url": env.get("MODEL_URL", "").strip() or None,
            "model_sha256": env.get("MODEL_SHA256", "").strip() or None,
            "admin_token": env.get("ADMIN_TOKEN") or None,
            "max_upload_mb": _number(env, "MAX_UPLOAD_MB", 16.0, 0.001, float),
            "max_batch": _number(env, "MAX_BATCH", 32, 1),
            "num_threads": _number(env, "GALAXY_NUM_THREADS", cpu_cores(), 1),
            "forward_batch": _number(env, "GALAXY_FORWARD_BATCH", 8, 1),
            "db_retry_seconds": _number(env, "DB_RETRY_SECONDS", 2.0, 0.0, float),
            "body_timeout_s": _number(env, "BODY_TIMEOUT_S", 30.0, 0.0, float),
            "server_timing": _flag(env, "SERVER_TIMING", False),
        }
        return cls(**kwargs)
