"""A Galaxy10-format h5: shards are row ranges, images read a chunk at a time, and the file's
other per-row datasets (``ra``, ``dec``, ``ans``, ...) pass through."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from galaxylib.catalog.sources.base import ID_COLUMN, CatalogError, ShardInput, ShardSpec, Source, canonical_checksum
from galaxylib.inference.classify import ImageInput, path_name


class H5Source(Source):
    """A Galaxy10-format h5: work shard i is rows [i * shard_rows, ...), read a chunk at a time.
    Labels (``ans``) are not needed to predict; when present they pass through like any column."""

    kind = "h5"

    def __init__(self, path: Path):
        from galaxylib.data.galaxy10 import DatasetError, open_galaxy10

        self.path = Path(path)
        try:
            self.data = open_galaxy10(self.path, labels=False)
        except DatasetError as exc:
            raise CatalogError(str(exc)) from exc
        self._columns = self._find_columns()

    def _find_columns(self) -> list[str]:
        """Every other per-row dataset (ra, dec, redshift, ans, filenames...) passes through."""
        import h5py

        from galaxylib.data.galaxy10 import FILES_DATASET

        with h5py.File(self.path, "r") as f:
            return sorted(
                k
                for k, v in f.items()
                if k not in ("images", FILES_DATASET)
                and isinstance(v, h5py.Dataset)
                and v.shape == (self.data.n_images,)
                and k != ID_COLUMN
            )

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path)}

    def fingerprint(self) -> str:
        return self.data.fingerprint()

    def plan(self, shard_rows: int, work_dir: Path, show_progress: bool = False) -> list[ShardSpec]:
        n = self.data.n_images
        if n == 0:
            raise CatalogError(f"{self.path} holds no images")
        return [ShardSpec(index=i, start=s, rows=min(shard_rows, n - s)) for i, s in enumerate(range(0, n, shard_rows))]

    def passthrough_columns(self) -> list[str]:
        return list(self._columns)

    def read(self, spec: ShardSpec, chunk_rows: int) -> ShardInput:
        import h5py
        import pyarrow as pa

        stop = spec.start + int(spec.rows or 0)
        with h5py.File(self.path, "r") as f:
            columns: dict[str, Any] = {
                ID_COLUMN: pa.array([f"{path_name(self.path.name)}[{i}]" for i in range(spec.start, stop)], pa.string())
            }
            for name in self._columns:
                values = f[name][spec.start : stop]
                if values.dtype.kind in "SO":
                    values = [v.decode() if isinstance(v, bytes) else str(v) for v in values]
                columns[name] = pa.array(values)
        table = pa.table(columns)
        checksum = canonical_checksum(table, {"file": self.fingerprint(), "start": spec.start, "stop": stop})

        def chunks() -> Iterator[tuple[Any, list[ImageInput]]]:
            for a in range(spec.start, stop, chunk_rows):
                b = min(a + chunk_rows, stop)
                part = table.slice(a - spec.start, b - a)
                names = part.column(ID_COLUMN).to_pylist()
                pixels = self.data.read_range(a, b)
                yield part, [ImageInput.from_array(img, name) for img, name in zip(pixels, names)]

        return ShardInput(checksum, chunks())
