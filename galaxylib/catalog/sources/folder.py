"""A folder of JPEG/PNG cutouts, listed once into the normalised table: the id is the file's
path under the folder."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from galaxylib.catalog.sources.base import ID_COLUMN, PATH_COLUMN, CatalogError, list_images, listing_fingerprint
from galaxylib.catalog.sources.table import TableSource, pyarrow_modules


class FolderSource(TableSource):
    kind = "folder"

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = listing_fingerprint(list_images(self.path))
        return self._fingerprint

    def _batches(self) -> Iterator[Any]:
        pa, _, _ = pyarrow_modules()
        files = list_images(self.path)
        if not files:
            raise CatalogError(f"{self.path} holds no .jpg, .jpeg or .png files")
        for start in range(0, len(files), 65536):
            part = files[start : start + 65536]
            yield pa.record_batch(
                {
                    ID_COLUMN: pa.array([p.relative_to(self.path).as_posix() for p in part], pa.string()),
                    PATH_COLUMN: pa.array([str(p) for p in part], pa.string()),
                }
            )
