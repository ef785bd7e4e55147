"""Galaxy10-format data: the real h5, a synthetic h5, or the listing of a labelled folder or catalogue.

Everything downstream reads one format (the Galaxy10 DECaLS h5 layout). A labelled folder or
catalogue is not copied into it: its listing h5 holds ``file_loc`` (the image files) in place of
``images``, and its pixels are decoded from the files straight into the model-size cache
(``galaxylib.data.decoded_files``). The 2.5 GB real file is never loaded whole: images are read
in chunks and resized into a uint8 cache.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from galaxylib.classes import CLASS_NAMES
from galaxylib.files import atomic_path, file_sha256
from galaxylib.preprocessing import ImageError, decode_image, preprocess_uint8

CUTOUT_SIZE = 256
FILES_DATASET = "file_loc"  # a listing h5's image files, in place of "images"


class DatasetError(ValueError):
    """A dataset that is missing, malformed or not in the Galaxy10 layout."""


@dataclass(frozen=True)
class Galaxy10File:
    """A validated Galaxy10-format h5 file; images stay on disk."""

    path: Path
    n_images: int
    synthetic: bool
    class_names: tuple[str, ...] = CLASS_NAMES  # the file's class_names attribute, else Galaxy10's
    image_files: bool = False  # a listing: the pixels live in the files named by ``file_loc``

    def labels(self) -> np.ndarray:
        with h5py.File(self.path, "r") as f:
            return np.asarray(f["ans"][:], dtype=np.int64)

    def file_locations(self, indices: np.ndarray | None = None) -> list[str]:
        """A listing's image files (absolute paths), of every row or of ``indices`` only (a chunk
        of a 300,000-row listing reads its own rows, not the whole column); a path that is not
        UTF-8 comes back as ``os.fsdecode`` gives it, so that it still opens."""
        with h5py.File(self.path, "r") as f:
            column = f[FILES_DATASET]
            if indices is None:
                values = column[:]
            else:
                rows, where = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
                values = column[rows][where] if len(rows) else column[:0]
            return [os.fsdecode(v) if isinstance(v, bytes) else str(v) for v in values]

    def read_images(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Raw uint8 cutouts (256x256) for the given indices (h5py wants them sorted)."""
        idx = np.asarray(indices, dtype=np.int64)
        if self.image_files:
            files = self.file_locations(idx)
            out = np.empty((len(idx), CUTOUT_SIZE, CUTOUT_SIZE, 3), np.uint8)
            for j, (i, file) in enumerate(zip(idx, files)):
                try:
                    out[j] = preprocess_uint8(decode_image(Path(file)), CUTOUT_SIZE)
                except (OSError, ImageError) as exc:
                    raise DatasetError(f"{file} (row {i} of {self.path.name}) cannot be read: {exc}") from exc
            return out
        order = np.argsort(idx)
        with h5py.File(self.path, "r") as f:
            out = f["images"][idx[order]]
        result = np.empty_like(out)
        result[order] = out
        return result

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Raw uint8 cutouts of rows [start, stop)."""
        if self.image_files:
            return self.read_images(np.arange(start, min(stop, self.n_images)))
        with h5py.File(self.path, "r") as f:
            return f["images"][start:stop]

    def iter_chunks(self, chunk: int = 256) -> Iterator[tuple[int, np.ndarray]]:
        if self.image_files:
            for start in range(0, self.n_images, chunk):
                yield start, self.read_range(start, start + chunk)
            return
        with h5py.File(self.path, "r") as f:
            images = f["images"]
            for start in range(0, self.n_images, chunk):
                yield start, images[start : start + chunk]

    def fingerprint(self) -> str:
        """A content hash that identifies the data a split or model was made from."""
        return dataset_fingerprint(self.path)


def _dataset(f: h5py.File, key: str, path: Path) -> h5py.Dataset:
    """``f[key]``, refused unless it is a dataset (a group or named type there has no rows)."""
    item = f[key]
    if not isinstance(item, h5py.Dataset):
        kind = "a group" if isinstance(item, h5py.Group) else f"a {type(item).__name__}"
        raise DatasetError(f"{path}: {key!r} must be a dataset, found {kind}")
    return item


def open_galaxy10(path: str | os.PathLike, *, labels: bool = True) -> Galaxy10File:
    """Open and validate a Galaxy10-format h5 (real, synthetic or converted).

    Training needs the labels: ``ans`` must hold a class index for every image. Predicting
    needs none, so ``labels=False`` neither requires nor reads ``ans`` (an unlabelled survey
    h5 can be classified); the images, or a listing's ``file_loc``, are checked the same way.
    Anything that makes the file unusable is a ``DatasetError`` that says why.
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise DatasetError(f"no dataset file at {path}")
        with h5py.File(path, "r") as f:
            image_files = "images" not in f and FILES_DATASET in f
            required = ("images", "ans") if labels else ("images",)
            missing = [k for k in required if k not in f and not (k == "images" and image_files)]
            if missing:
                raise DatasetError(f"{path} is not in the Galaxy10 layout: missing {missing}")
            images = _dataset(f, FILES_DATASET if image_files else "images", path)
            if image_files and images.ndim != 1:
                raise DatasetError(f"{path}: {FILES_DATASET!r} must list one file per row, got shape {images.shape}")
            if not image_files and (images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8):
                raise DatasetError(
                    f"{path}: 'images' must be uint8 (N, H, W, 3), channels last, got {images.dtype} {images.shape}"
                )
            names = f.attrs.get("class_names")
            class_names = tuple(str(n) for n in names) if names is not None else CLASS_NAMES
            if labels:
                ans = _dataset(f, "ans", path)
                if ans.shape != (images.shape[0],):
                    raise DatasetError(f"{path}: 'ans' has shape {ans.shape} for {images.shape[0]} images")
                values = ans[:]
                if values.size and (values.min() < 0 or values.max() >= len(class_names)):
                    raise DatasetError(
                        f"{path}: labels must be 0..{len(class_names) - 1} (its {len(class_names)} classes)"
                    )
            synthetic = bool(f.attrs.get("synthetic", False))
            return Galaxy10File(path, int(images.shape[0]), synthetic, class_names, image_files)
    except DatasetError:
        raise
    except OSError as exc:
        raise DatasetError(f"{path} is not a readable HDF5 file: {exc}") from exc
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # h5py's word for a broken link, odd dtype...
        raise DatasetError(f"{path} cannot be read as a Galaxy10 h5: {exc}") from exc


def dataset_fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 of the file, trusted from its sidecar while size and mtime hold (the real file is 2.5 GB)."""
    return file_sha256(path, show_progress=Path(path).stat().st_size > 256 * 1024 * 1024)


def cache_path(data: Galaxy10File, image_size: int, cache_dir: Path, crop: float = 1.0) -> Path:
    """Where the (dataset, size, crop) cache lives: named by the dataset's content hash."""
    tag = f"_crop{crop:.3f}" if crop < 1.0 else ""
    return cache_dir / f"{data.fingerprint()[:16]}_{image_size}px{tag}.npy"


def resized_cache(
    data: Galaxy10File, image_size: int, cache_dir: Path, show_progress: bool = True, crop: float = 1.0
) -> np.ndarray:
    """All images through the one preprocessing path, as a uint8 memmap on disk.

    Built once per (dataset, size, crop) in chunks, so memory stays small even for the real
    17,736-image file; later runs reuse it. A listing's files are decoded straight to this size
    on every core; a file that can no longer be read (changed or removed since the data was
    prepared) is an error naming it.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_path(data, image_size, cache_dir, crop)
    shape = (data.n_images, image_size, image_size, 3)
    if target.is_file():
        arr = np.load(target, mmap_mode="r")
        if arr.shape == shape and arr.dtype == np.uint8:
            return arr
    if data.image_files:
        from galaxylib.data.decoded_files import decode_files, decoding_lock, discard_partial

        partial = target.with_name(target.stem + ".partial")
        with decoding_lock(partial):
            if not target.is_file():  # else another process made it while this one waited
                files = data.file_locations()
                decoded, unreadable = decode_files(
                    files, image_size, crop, partial, show_progress=show_progress, desc=f"Decoding to {image_size}px"
                )
                if unreadable:
                    shown = "; ".join(f"{files[i]} ({why})" for i, why in list(unreadable.items())[:3])
                    raise DatasetError(
                        f"{len(unreadable)} image file(s) of {data.path.name} can no longer be read, though they could "
                        f"when the data was prepared: {shown}. Restore them, or prepare the data again"
                    )
                os.replace(decoded, target)
                discard_partial(partial)
        return np.load(target, mmap_mode="r")
    # a temporary file of this process's own: workers of a cluster may build the same cache at once
    with atomic_path(target) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        with tqdm(total=data.n_images, desc=f"Resizing to {image_size}px", disable=not show_progress) as bar:
            for start, chunk in data.iter_chunks():
                for j, img in enumerate(chunk):
                    out[start + j] = preprocess_uint8(img, image_size, crop)
                bar.update(len(chunk))
        out.flush()
        del out
    return np.load(target, mmap_mode="r")
