"""How galaxylib.data.download gets the Galaxy10 file, shown against a real local HTTP server.

The server below serves a small file in the real Galaxy10 DECaLS layout. It supports
``Range: bytes=N-`` like Zenodo does, and it can drop a connection partway through.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest

from galaxylib.data.download import (
    ChecksumError,
    DatasetUnavailableError,
    download_file,
    ensure_galaxy10,
)

PATH = "/records/10845026/files/Galaxy10_DECals.h5"


class FileServer(ThreadingHTTPServer):
    """Serves ``files`` (URL path -> bytes) and records every request it sees."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files: dict[str, bytes] = {}
        self.seen: list[tuple[str, str | None]] = []  # (path, Range header)
        self.drop_after: int | None = None  # the next response is cut off after this many bytes
        self.ignore_range = False  # behave like a server without Range support

    def url(self, path: str = PATH) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    @property
    def range_requests(self) -> list[str]:
        return [r for _, r in self.seen if r is not None]


class RangeHandler(BaseHTTPRequestHandler):
    server: FileServer

    def do_GET(self) -> None:
        range_header = self.headers.get("Range")
        self.server.seen.append((self.path, range_header))
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if range_header and not self.server.ignore_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.server.drop_after is not None:
            payload, self.server.drop_after = payload[: self.server.drop_after], None
            self.close_connection = True  # hang up with the promised bytes still missing
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():
    srv = FileServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def galaxy10_bytes(tmp_path_factory) -> bytes:
    """A 6-galaxy file with the same datasets, dtypes and shapes as Galaxy10_DECals.h5."""
    path = tmp_path_factory.mktemp("payload") / "Galaxy10_DECals.h5"
    rng = np.random.default_rng(0)
    n = 6
    with h5py.File(path, "w") as f:
        f["images"] = rng.integers(0, 256, size=(n, 256, 256, 3), dtype=np.uint8)
        f["ans"] = np.arange(n, dtype=np.uint8)
        f["ra"] = rng.uniform(0, 360, n)
        f["dec"] = rng.uniform(-30, 60, n)
        f["redshift"] = rng.uniform(0, 0.3, n)
        f["pxscale"] = np.full(n, 0.262)
    return path.read_bytes()


@pytest.fixture
def galaxy10(server, galaxy10_bytes) -> tuple[str, bytes, str]:
    """Put the file on the server. Returns (url, bytes, sha256)."""
    server.files[PATH] = galaxy10_bytes
    return server.url(), galaxy10_bytes, hashlib.sha256(galaxy10_bytes).hexdigest()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{PATH}"


def fetch(url: str, dest: Path, sha256: str | None, **kwargs) -> Path:
    return download_file(url, dest, sha256, show_progress=False, retry_wait=0, **kwargs)


# download_file


def test_download_verifies_checksum_and_yields_galaxy10_file(galaxy10, tmp_path):
    url, payload, sha = galaxy10
    dest = tmp_path / "raw" / "Galaxy10_DECals.h5"

    assert fetch(url, dest, sha) == dest

    assert dest.read_bytes() == payload
    assert not (tmp_path / "raw" / "Galaxy10_DECals.h5.part").exists()
    with h5py.File(dest, "r") as f:
        assert set(f) == {"images", "ans", "ra", "dec", "redshift", "pxscale"}
        assert f["images"].shape == (6, 256, 256, 3) and f["images"].dtype == np.uint8


def test_checksum_mismatch_raises_and_leaves_no_file(galaxy10, tmp_path):
    url, payload, sha = galaxy10
    dest = tmp_path / "Galaxy10_DECals.h5"
    wrong = "0" * 64

    with pytest.raises(ChecksumError) as err:
        fetch(url, dest, wrong)

    assert sha in str(err.value) and wrong in str(err.value)
    assert not dest.exists()
    assert not dest.with_name(dest.name + ".part").exists()


def test_interrupted_download_resumes_from_part_file(server, galaxy10, tmp_path):
    url, payload, sha = galaxy10
    dest = tmp_path / "Galaxy10_DECals.h5"
    server.drop_after = 300_000  # the first response stops partway

    fetch(url, dest, sha, chunk_size=64 * 1024)

    assert len(server.range_requests) == 1
    resumed_at = int(server.range_requests[0].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 300_000
    assert dest.read_bytes() == payload


def test_part_file_left_by_an_earlier_run_is_resumed(server, galaxy10, tmp_path):
    url, payload, sha = galaxy10
    dest = tmp_path / "Galaxy10_DECals.h5"
    dest.with_name(dest.name + ".part").write_bytes(payload[:1000])

    fetch(url, dest, sha)

    assert server.range_requests == ["bytes=1000-"]
    assert dest.read_bytes() == payload


def test_server_ignoring_range_restarts_from_zero(server, galaxy10, tmp_path):
    url, payload, sha = galaxy10
    dest = tmp_path / "Galaxy10_DECals.h5"
    dest.with_name(dest.name + ".part").write_bytes(b"stale bytes from an older run")
    server.ignore_range = True  # answers 200 with the whole file

    fetch(url, dest, sha)

    assert dest.read_bytes() == payload


def test_complete_part_file_is_verified_without_refetching(server, galaxy10, tmp_path):
    url, payload, sha = galaxy10
    dest = tmp_path / "Galaxy10_DECals.h5"
    dest.with_name(dest.name + ".part").write_bytes(payload)  # the server answers 416

    fetch(url, dest, sha)

    assert dest.read_bytes() == payload


def test_http_error_is_reported_as_unavailable(server, tmp_path):
    with pytest.raises(DatasetUnavailableError, match="404"):
        fetch(server.url("/missing.h5"), tmp_path / "x.h5", None)


# ensure_galaxy10


def test_unreachable_url_explains_how_to_get_the_file(tmp_path):
    url = closed_port_url()
    dest = tmp_path / "raw" / "Galaxy10_DECals.h5"

    with pytest.raises(DatasetUnavailableError) as err:
        ensure_galaxy10(dest, url=url, sha256="0" * 64, retries=0)

    message = str(err.value)
    assert url in message
    assert str(dest.resolve()) in message
    assert "--dataset synthetic" in message
    assert not dest.exists()


def test_missing_file_is_downloaded_from_the_url_in_the_environment(galaxy10, tmp_path, monkeypatch):
    url, payload, sha = galaxy10
    monkeypatch.setenv("GALAXY10_URL", url)
    dest = tmp_path / "Galaxy10_DECals.h5"

    assert ensure_galaxy10(dest, sha256=sha) == dest

    assert dest.read_bytes() == payload
    assert (tmp_path / "Galaxy10_DECals.h5.sha256").exists()


def test_existing_good_file_is_not_downloaded_and_gets_a_sidecar(server, galaxy10, tmp_path):
    url, payload, sha = galaxy10
    dest = tmp_path / "Galaxy10_DECals.h5"
    dest.write_bytes(payload)

    assert ensure_galaxy10(dest, url=url, sha256=sha) == dest

    assert server.seen == []
    sidecar = (tmp_path / "Galaxy10_DECals.h5.sha256").read_text()
    assert sha in sidecar and str(len(payload)) in sidecar


def test_sidecar_skips_rehashing_while_size_and_mtime_are_unchanged(galaxy10, tmp_path):
    url, payload, sha = galaxy10
    dest = tmp_path / "Galaxy10_DECals.h5"
    dest.write_bytes(payload)
    ensure_galaxy10(dest, url=url, sha256=sha)
    stat = dest.stat()

    # Same size and mtime but different content: the sidecar is trusted, no 2.5 GB hash.
    dest.write_bytes(bytes(len(payload)))
    os.utime(dest, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert ensure_galaxy10(dest, url=url, sha256=sha) == dest

    # Once the mtime moves, the file is checked again.
    os.utime(dest, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(ChecksumError):
        ensure_galaxy10(dest, url=url, sha256=sha)


def test_existing_corrupt_file_raises_and_is_kept(server, galaxy10, tmp_path):
    url, payload, sha = galaxy10
    dest = tmp_path / "Galaxy10_DECals.h5"
    corrupt = payload[:-10]
    dest.write_bytes(corrupt)

    with pytest.raises(ChecksumError) as err:
        ensure_galaxy10(dest, url=url, sha256=sha)

    assert str(dest.resolve()) in str(err.value) and "Delete it" in str(err.value)
    assert dest.read_bytes() == corrupt
    assert server.seen == []


def test_the_real_file_is_hashed_once_then_trusted_by_the_download_check_and_the_dataset(
    galaxy10, tmp_path, monkeypatch
):
    from galaxylib import files
    from galaxylib.data.galaxy10 import dataset_fingerprint

    url, payload, sha = galaxy10
    dest = tmp_path / "Galaxy10_DECals.h5"
    dest.write_bytes(payload)
    hashed = []
    real = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda path, **kw: hashed.append(path) or real(path, **kw))

    ensure_galaxy10(dest, url=url, sha256=sha)  # hashes and writes the sidecar
    assert dataset_fingerprint(dest) == sha  # the dataset's fingerprint trusts it
    ensure_galaxy10(dest, url=url, sha256=sha)  # and so does the next check

    assert hashed == [dest]
