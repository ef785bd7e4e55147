"""Fetch the real Galaxy10 DECaLS file (2.5 GB) so that a bad copy can never be used.

Why this module exists: the file is big and long downloads break, so a download
resumes from where it stopped instead of starting over. It is written to a ``.part``
file and moved to its final path only after its SHA-256 matches, so the data loader
never opens a truncated or wrong file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import requests
from tqdm import tqdm

from galaxylib.config import GALAXY10_PATH
from galaxylib.files import MiB, file_sha256, remember_sha256, sha256_file

GALAXY10_URL = "https://zenodo.org/records/10845026/files/Galaxy10_DECals.h5"
# The checksum astroNN's loader checks for this file.
GALAXY10_SHA256 = "19aefc477c41bb7f77ff07599a6b82a038dc042f889a111b0d4d98bb755c1571"
# Set this to use a mirror (or a local test server) instead of Zenodo.
URL_ENV_VAR = "GALAXY10_URL"


# The connection broke or stalled. Trying again may work, and the download resumes.
_TRANSIENT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


class DownloadError(RuntimeError):
    """The dataset could not be fetched or checked."""


class ChecksumError(DownloadError):
    """A file's SHA-256 is not the expected one: the file is truncated, corrupt or a different file."""


class DatasetUnavailableError(DownloadError):
    """The server could not be reached or refused the request (offline, DNS, HTTP error)."""


def download_file(
    url: str,
    dest: Path | str,
    sha256: str | None,
    *,
    chunk_size: int = MiB,
    timeout: float = 30,
    show_progress: bool = True,
    retries: int = 3,
    retry_wait: float = 2.0,
) -> Path:
    """Download ``url`` to ``dest`` and resume ``dest.part`` if an earlier try left one.

    If a request fails with a connection error, a timeout or a 5xx/429, it is tried
    again, with a back-off, up to ``retries`` times in a row. An attempt that got any
    bytes resets that count, because the link works and the file is still growing.
    When the file is complete its SHA-256 is checked (unless ``sha256`` is None). If it
    is wrong, the ``.part`` is deleted and ChecksumError is raised. If it is right, the
    ``.part`` is renamed to ``dest`` in one atomic step.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)

    failures = 0
    while True:
        size_before = _size(part)
        try:
            _fetch_into(url, part, chunk_size=chunk_size, timeout=timeout, show_progress=show_progress)
            break
        except requests.RequestException as exc:
            if not _is_transient(exc):
                raise DatasetUnavailableError(f"could not download {url}: {exc}") from exc
            if _size(part) > size_before:
                failures = 0  # it made progress: resume at once
                continue
            failures += 1
            if failures > retries:
                raise DatasetUnavailableError(f"could not download {url} (tried {retries + 1} times): {exc}") from exc
            time.sleep(retry_wait * 2 ** (failures - 1))

    if sha256 is not None:
        actual = sha256_file(part, show_progress=show_progress)
        if actual != sha256.lower():
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"downloaded {url} but its SHA-256 is {actual}, expected {sha256.lower()}. "
                f"The partial file was deleted. Run again to download it again."
            )
    os.replace(part, dest)
    return dest


def ensure_galaxy10(
    path: Path | str = GALAXY10_PATH,
    url: str | None = None,
    sha256: str | None = GALAXY10_SHA256,
    download: bool = True,
    *,
    retries: int = 3,
    retry_wait: float = 2.0,
) -> Path:
    """Return the path to a checked Galaxy10 DECaLS file, and download it if it is missing.

    ``url`` defaults to ``$GALAXY10_URL`` and, if that is not set, to the Zenodo record.
    A file that is already there is hashed once. The result goes into ``<path>.sha256``,
    so later calls skip the 2.5 GB hash while the file's size and mtime stay the same.
    A present file with a wrong checksum is never deleted: it may be the user's data.
    """
    path = Path(path)
    url = url or os.environ.get(URL_ENV_VAR) or GALAXY10_URL

    if path.exists():
        if sha256 is not None:
            _verify_existing(path, sha256)
        return path

    if not download:
        raise DatasetUnavailableError(f"{path.resolve()} does not exist and download=False.\n{_manual_hint(url, path)}")
    try:
        download_file(url, path, sha256, retries=retries, retry_wait=retry_wait)
    except DatasetUnavailableError as exc:
        reason = exc.__cause__ or exc
        raise DatasetUnavailableError(
            f"Could not download the Galaxy10 DECaLS dataset from {url}: {reason}\n{_manual_hint(url, path)}"
        ) from exc
    if sha256 is not None:
        remember_sha256(path, sha256)  # just checked: later calls (and the dataset fingerprint) trust it
    return path


def _manual_hint(url: str, path: Path) -> str:
    """Tell the user how to go on without a working download."""
    official = "" if url == GALAXY10_URL else f" (official copy: {GALAXY10_URL})"
    return (
        f"Download it manually from {url}{official} (2.5 GB) and place it at {path.resolve()}, "
        f"or pass the path of an existing copy.\n"
        f"To run offline without the real data, use --dataset synthetic."
    )


def _fetch_into(url: str, part: Path, *, chunk_size: int, timeout: float, show_progress: bool) -> None:
    """Send one HTTP request. It continues ``part`` from its current size, or starts it again."""
    offset = _size(part)
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as resp:
        if resp.status_code == 416 and offset:
            return  # nothing is left past our offset: the .part is complete (the checksum will check)
        resp.raise_for_status()
        if resp.status_code == 206:
            start = _content_range_start(resp)
            if start != offset:
                part.unlink(missing_ok=True)
                raise DownloadError(f"{url}: server resumed at byte {start}, asked for {offset}")
            mode = "ab"
        else:
            mode, offset = "wb", 0  # the server ignored the Range header and sent the whole file
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length else None
        with (
            open(part, mode) as f,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not show_progress,
            ) as bar,
        ):
            for chunk in resp.iter_content(chunk_size):
                f.write(chunk)
                bar.update(len(chunk))


def _is_transient(exc: requests.RequestException) -> bool:
    if isinstance(exc, _TRANSIENT):
        return True
    status = exc.response.status_code if exc.response is not None else None
    return isinstance(exc, requests.HTTPError) and status is not None and (status >= 500 or status == 429)


def _content_range_start(resp: requests.Response) -> int | None:
    """Read the first byte from ``Content-Range: bytes START-END/TOTAL``."""
    value = resp.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _verify_existing(path: Path, sha256: str) -> None:
    """Hash ``path`` unless its sidecar already vouches for this size and mtime."""
    actual = file_sha256(path, show_progress=True)
    if actual != sha256.lower():
        raise ChecksumError(
            f"{path.resolve()} has SHA-256 {actual}, expected {sha256.lower()}: it is truncated, corrupt "
            f"or a different file. It was left in place. Delete it and run again to download it again, "
            f"or replace it with a good copy."
        )
