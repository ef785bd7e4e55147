"""WebDataset tar shards (galaxy-datasets' format: ``__key__`` is the id, ``image.jpg`` the
cutout): one tar is one work shard."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from galaxylib.catalog.sources.base import ID_COLUMN, CatalogError, ShardInput, ShardSpec, Source, listing_fingerprint
from galaxylib.files import sha256_file
from galaxylib.inference.classify import ImageInput


class WebDatasetSource(Source):
    """WebDataset tar shards; one tar is one work shard, its samples' ``__key__`` the id."""

    kind = "webdataset"

    def __init__(self, tars: list[Path], spec: str):
        if not tars:
            raise CatalogError(f"no WebDataset .tar shards match {spec}")
        missing = [t for t in tars if not t.is_file()]
        if missing:
            raise CatalogError(f"WebDataset shard {missing[0]} does not exist")
        self.tars = tars
        self.spec = spec

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "tars": [str(t) for t in self.tars], "spec": self.spec}

    def fingerprint(self) -> str:
        return listing_fingerprint(self.tars)

    def plan(self, shard_rows: int, work_dir: Path, show_progress: bool = False) -> list[ShardSpec]:
        return [ShardSpec(index=i, path=str(t)) for i, t in enumerate(self.tars)]

    def passthrough_columns(self) -> list[str]:
        return []

    def read(self, spec: ShardSpec, chunk_rows: int) -> ShardInput:
        import pyarrow as pa
        import webdataset as wds

        tar = Path(str(spec.path))
        checksum = sha256_file(tar)

        def chunks() -> Iterator[tuple[Any, list[ImageInput]]]:
            ids: list[str] = []
            items: list[ImageInput] = []
            dataset = wds.WebDataset(str(tar), shardshuffle=False, empty_check=False)
            for sample in dataset:
                key = str(sample["__key__"])
                image = next(
                    (
                        v
                        for k, v in sample.items()
                        if not k.startswith("__") and k.rsplit(".", 1)[-1].lower() in ("jpg", "jpeg", "png")
                    ),
                    None,
                )
                ids.append(key)
                items.append(
                    ImageInput.from_bytes(image, f"{tar.name}:{key}")
                    if image is not None
                    else ImageInput(name=f"{tar.name}:{key}: no .jpg or .png member")
                )
                if len(items) >= chunk_rows:
                    yield pa.table({ID_COLUMN: pa.array(ids, pa.string())}), items
                    ids, items = [], []
            if items:
                yield pa.table({ID_COLUMN: pa.array(ids, pa.string())}), items

        return ShardInput(checksum, chunks())


def expand_tars(spec: str) -> list[Path]:
    """A tar, a folder of tars, a glob or a brace pattern (``shards-{000..009}.tar``)."""
    import glob

    from braceexpand import braceexpand  # a webdataset dependency

    out: list[Path] = []
    for pattern in braceexpand(spec):
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        out.extend(Path(m) for m in matches)
    return out
