"""galaxylib.files: a file is replaced whole or not at all, and a hash is remembered beside it."""

import json
import os

import pytest

from galaxylib import files


def test_an_atomic_write_replaces_the_file_in_one_step(tmp_path):
    target = tmp_path / "metrics.json"
    files.atomic_write_json(target, {"accuracy": 0.5})
    files.atomic_write_json(target, {"accuracy": 0.9})

    assert json.loads(target.read_text()) == {"accuracy": 0.9}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary left behind


def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial_one(tmp_path):
    target = tmp_path / "predictions.csv"
    target.write_text("old,complete\n")

    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as tmp:
            tmp.write_text("new,half-writ")
            raise RuntimeError("the process dies mid-write")

    assert target.read_text() == "old,complete\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]


def test_the_sidecar_vouches_for_a_hash_only_while_size_and_mtime_hold(tmp_path):
    data = tmp_path / "big.h5"
    data.write_bytes(b"galaxies" * 1000)

    assert files.trusted_sha256(data) is None
    digest = files.file_sha256(data)
    assert digest == files.sha256_bytes(b"galaxies" * 1000)
    assert files.trusted_sha256(data) == digest

    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert files.trusted_sha256(data) is None


def test_a_read_only_folder_just_means_hashing_again(tmp_path, monkeypatch):
    data = tmp_path / "big.h5"
    data.write_bytes(b"x" * 10)
    monkeypatch.setattr(files, "atomic_write_text", lambda *a, **k: (_ for _ in ()).throw(PermissionError("read-only")))

    assert files.file_sha256(data) == files.sha256_bytes(b"x" * 10)
    assert not files.sidecar_path(data).exists()
