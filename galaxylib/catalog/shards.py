"""The plan of a catalogue run, its manifest, and the one way a shard's Parquet file is written.

``OUT_DIR`` is a Parquet dataset: ``part-00000.parquet`` ... one file per work shard, each
written under a temporary name (``.part-....tmp-PID``) and renamed into place. Beside them,
ignored by Parquet readers because of the leading underscore:
- ``_plan/plan.json``: the plan key (input, shard size, model), the shard list, and the
  normalised copy of a catalogue;
- ``_manifest/part-00000.json``: written after the shard's file is in place (and its rows are
  in the database with ``--to-database``). A rerun skips a shard only when its manifest entry
  names this plan and the file still has the recorded size: a file alone (a crash between the
  rename and the manifest) or a temporary file is never trusted, the shard is simply redone.
One small file per shard, not one shared manifest, so that Slurm tasks and Dask workers on
different machines never write the same file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from galaxylib.artifact import TFLITE_FILE, Artifact
from galaxylib.catalog.sources import (
    ID_COLUMN,
    NORMALISED_GLOB,
    CatalogError,
    ShardSpec,
    Source,
    open_source,
    reopen_source,
)
from galaxylib.files import atomic_path, atomic_write_json, sha256_file

PLAN_FORMAT = 1
PLAN_DIR = "_plan"
MANIFEST_DIR = "_manifest"
PART_RE = re.compile(r"^part-(\d{5,})\.parquet$")
RESULT_COLUMNS = ("predicted_class", "confidence")
TAIL_COLUMNS = ("in_distribution", "ood_score", "error")


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def orientation_views(artifact: Artifact) -> int:
    """8 when the exported graph averages the 8 rotations and flips (the whole classifier, or a
    fused start's CNN branch), else 1 (one decode either way)."""
    params = artifact.sidecar.get("params") or {}
    model = params.get("model") if isinstance(params.get("model"), dict) else {}
    fused_cnn = "+" in str(params.get("start", "")) and "scratch-small" in str(params.get("start", ""))
    return 8 if bool(params.get("average_orientations") or model.get("average_orientations") or fused_cnn) else 1


def model_sha256(artifact: Artifact) -> str:
    return str(artifact.sidecar["files"].get(TFLITE_FILE) or sha256_file(artifact.tflite_path))


def trust_sha256(artifact: Artifact) -> str:
    """What else shapes a row besides the TFLite file: the calibration (T, class bias) and the
    OOD check (method, threshold, statistics). A refit of either is another run's results."""
    calibration = artifact.sidecar.get("calibration") or {}
    ood = artifact.sidecar.get("ood") or {}
    fields = {
        "temperature": calibration.get("temperature"),
        "bias": calibration.get("bias"),
        "ood_method": ood.get("method"),
        "ood_threshold": ood.get("threshold"),
        "ood_file": artifact.sidecar["files"].get(ood["file"]) if ood.get("file") else None,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def output_columns(class_names: Sequence[str], has_ood: bool) -> list[str]:
    """The columns a catalogue run adds after id_str and the pass-through columns."""
    return [*RESULT_COLUMNS, *class_names, *(TAIL_COLUMNS if has_ood else TAIL_COLUMNS[2:])]


def parse_shard(text: str | None) -> tuple[int, int]:
    """``K/N`` (1-based, as ``sbatch --array=1-N`` numbers tasks) -> (K, N); None -> (1, 1)."""
    if text is None or text == "":
        return 1, 1
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise CatalogError(
            f"--shard must be K/N with 1 <= K <= N, e.g. 3/10 (K is 1-based, as "
            f"sbatch --array=1-N numbers tasks); got {text!r}"
        )
    return int(match.group(1)), int(match.group(2))


@dataclass
class Plan:
    """Everything a process needs to run any shard of this run, reloadable from ``OUT_DIR``."""

    out_dir: Path
    key: str
    source: Source
    shards: list[ShardSpec]
    model_dir: Path
    model_version: str
    model_sha256: str
    class_names: list[str]
    has_ood: bool
    shard_rows: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def plan_dir(self) -> Path:
        return self.out_dir / PLAN_DIR

    def part_path(self, index: int) -> Path:
        return self.out_dir / part_name(index)

    def manifest_path(self, index: int) -> Path:
        return self.out_dir / MANIFEST_DIR / f"part-{index:05d}.json"

    def entry(self, index: int) -> dict[str, Any] | None:
        """The shard's manifest entry if it vouches for the file now in place, else None."""
        try:
            entry = json.loads(self.manifest_path(index).read_text())
            if entry.get("plan") != self.key or entry.get("shard") != index:
                return None
            if self.part_path(index).stat().st_size != entry.get("bytes"):
                return None
            return entry
        except (OSError, ValueError, AttributeError):
            return None

    def is_done(self, index: int, database: str | None = None) -> bool:
        entry = self.entry(index)
        return entry is not None and (database is None or database in entry.get("databases", []))

    def todo(self, shard: tuple[int, int] = (1, 1), database: str | None = None) -> list[ShardSpec]:
        """This task's shards (``index % N == K - 1``) that are not finished yet."""
        k, n = shard
        return [s for s in self.shards if s.index % n == k - 1 and not self.is_done(s.index, database)]

    def write_entry(self, index: int, entry: dict[str, Any]) -> None:
        atomic_write_json(self.manifest_path(index), {"plan": self.key, "shard": index, **entry})

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "key": self.key,
            "source": self.source.describe(),
            "shards": [s.as_dict() for s in self.shards],
            "model_dir": str(self.model_dir),
            "model_version": self.model_version,
            "model_sha256": self.model_sha256,
            "class_names": self.class_names,
            "has_ood": self.has_ood,
            "shard_rows": self.shard_rows,
            **self.extra,
        }

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> Plan:
        out_dir = Path(out_dir)
        try:
            d = json.loads((out_dir / PLAN_DIR / "plan.json").read_text())
        except (OSError, ValueError) as exc:
            raise CatalogError(f"{out_dir} holds no readable plan ({exc})") from exc
        return cls(
            out_dir=out_dir,
            key=d["key"],
            source=reopen_source(d["source"]),
            shards=[ShardSpec(**s) for s in d["shards"]],
            model_dir=Path(d["model_dir"]),
            model_version=d["model_version"],
            model_sha256=d["model_sha256"],
            class_names=list(d["class_names"]),
            has_ood=bool(d["has_ood"]),
            shard_rows=int(d["shard_rows"]),
            extra={k: d[k] for k in ("orientation_views", "preprocessing", "created_at") if k in d},
        )


def make_plan(
    catalog: str | os.PathLike,
    artifact: Artifact,
    out_dir: str | os.PathLike,
    *,
    shard_rows: int,
    overwrite: bool = False,
    show_progress: bool = False,
) -> Plan:
    """Open the input, cut it into shards and record the plan in ``OUT_DIR/_plan``.

    A rerun with the same input, model and shard size finds the same plan key, so the
    manifest's entries still count; anything else in ``OUT_DIR`` is refused unless
    ``overwrite``, which clears the old results first (never mixed into one dataset)."""
    if shard_rows < 1:
        raise CatalogError(f"--shard-rows must be at least 1, got {shard_rows}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CatalogError(f"--out {out_dir} is a file; it must be a folder (the Parquet dataset)")
    source = open_source(catalog)
    names = list(artifact.class_names)
    has_ood = bool(artifact.sidecar.get("ood"))
    key_fields = {
        "format": PLAN_FORMAT,
        "source": source.kind,
        "fingerprint": source.fingerprint(),
        "shard_rows": int(shard_rows),
        "model_sha256": model_sha256(artifact),
        "classes": names,
        "trust_sha256": trust_sha256(artifact),
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()
    plan_file = out_dir / PLAN_DIR / "plan.json"
    reuse = False
    if plan_file.is_file():
        try:
            old = json.loads(plan_file.read_text())
        except ValueError:
            old = {}
        reuse = old.get("key") == key
        if not reuse:
            if not overwrite:
                raise CatalogError(
                    f"{out_dir} holds the results of another run (a different catalogue, model, "
                    "calibration or shard size): pass another --out, or --overwrite to replace them"
                )
            clear_results(out_dir)
    elif any(PART_RE.match(p.name) for p in out_dir.glob("part-*.parquet")):
        if not overwrite:
            raise CatalogError(f"{out_dir} holds Parquet parts without a plan: pass another --out, or --overwrite")
        clear_results(out_dir)
    made = [d for d in (out_dir, out_dir / PLAN_DIR) if not d.exists()]  # removed again if planning fails
    copies_before = set((out_dir / PLAN_DIR).glob(NORMALISED_GLOB))
    try:
        if not reuse:  # a finished run's folder may be read-only now: a rerun that has nothing to do still says so
            _make_writable_folder(out_dir / PLAN_DIR)
        # Cheap when nothing changed: the normalised copy is found by its stamp, not rebuilt.
        specs = source.plan(int(shard_rows), out_dir / PLAN_DIR, show_progress=show_progress)
        clash = sorted(set(source.passthrough_columns()) & set(output_columns(names, has_ood) + [ID_COLUMN]))
        if clash:
            raise CatalogError(
                f"the catalogue's column(s) {', '.join(map(repr, clash))} would clash with the "
                "output's own columns (the prediction and one per class): rename them"
            )
    except (CatalogError, OSError) as exc:
        # A refused run leaves no OUT_DIR or _plan of its own behind: the normalised copy it made of
        # a catalogue that is then refused (a clashing column) goes, and only empty folders are removed,
        # since a concurrent task (a Slurm array) may be writing its plan in the same _plan.
        for copy in set((out_dir / PLAN_DIR).glob(NORMALISED_GLOB)) - copies_before:
            copy.unlink(missing_ok=True)
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise CatalogError(f"cannot plan the run in {out_dir / PLAN_DIR}: {exc}") from exc
        raise
    plan = Plan(
        out_dir=out_dir,
        key=key,
        source=source,
        shards=specs,
        model_dir=artifact.path,
        model_version=artifact.model_version,
        model_sha256=model_sha256(artifact),
        class_names=names,
        has_ood=has_ood,
        shard_rows=int(shard_rows),
        extra={
            "orientation_views": orientation_views(artifact),
            "preprocessing": artifact.sidecar.get("preprocessing", {}),
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
        },
    )
    if not reuse:
        atomic_write_json(plan_file, plan.as_dict())
    return plan


def _make_writable_folder(folder: Path) -> None:
    """Create ``folder`` and prove a file can be written in it, so an unwritable --out is a clear
    error before any work rather than a traceback from the first shard."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)  # unique across hosts too
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise CatalogError(
            f"cannot write to --out {folder.parent}: {exc.strerror or exc}"
            f"{f' ({exc.filename})' if exc.filename else ''}"
        ) from exc


def clear_results(out_dir: Path) -> None:
    """Remove a previous run's parts, manifest and plan (only files this code names)."""
    for p in out_dir.glob("part-*.parquet"):
        if PART_RE.match(p.name):
            p.unlink()
    for p in list((out_dir / MANIFEST_DIR).glob("*.json")) + list((out_dir / PLAN_DIR).glob("*")):
        if p.is_file():
            p.unlink()


def remove_stale_temporaries(plan: Plan, index: int) -> None:
    """A crashed writer's ``.part-NNNNN.parquet.tmp-PID``: never read, removed before the shard is redone."""
    for folder, name in ((plan.out_dir, part_name(index)), (plan.out_dir / MANIFEST_DIR, f"part-{index:05d}.json")):
        for tmp in folder.glob(f".{name}.tmp-*"):
            tmp.unlink(missing_ok=True)


def write_parquet(table: Any, path: Path, metadata: dict[str, str]) -> int:
    """Write ``table`` with ``metadata`` in its schema, atomically; returns the file's size."""
    import pyarrow.parquet as pq

    existing = dict(table.schema.metadata or {})
    existing.update({k.encode(): str(v).encode() for k, v in metadata.items()})
    table = table.replace_schema_metadata(existing)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path.stat().st_size


def read_provenance(path: str | os.PathLike) -> dict[str, str]:
    """The provenance keys a shard file carries in its Parquet schema metadata."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if not k.startswith(b"ARROW:") and k != b"pandas"}
