"""Galaxy10-format data: the real h5, a synthetic h5, or a folder with labels.csv.

Everything downstream reads one format (the Galaxy10 DECaLS h5 layout), so a
folder of cutouts is converted once into that layout. The 2.5 GB real file is
never loaded whole: images are read in chunks and resized into a uint8 cache.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
from tqdm import tqdm

from galaxylib.classes import NUM_CLASSES
from galaxylib.config import CACHE_DIR
from galaxylib.preprocessing import decode_image, preprocess_uint8

CUTOUT_SIZE = 256


class DatasetError(ValueError):
    """A dataset that is missing, malformed or not in the Galaxy10 layout."""


@dataclass(frozen=True)
class Galaxy10File:
    """A validated Galaxy10-format h5 file; images stay on disk."""

    path: Path
    n_images: int
    synthetic: bool

    def labels(self) -> np.ndarray:
        with h5py.File(self.path, "r") as f:
            return np.asarray(f["ans"][:], dtype=np.int64)

    def read_images(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Raw uint8 cutouts for the given indices (h5py wants them sorted)."""
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx)
        with h5py.File(self.path, "r") as f:
            out = f["images"][idx[order]]
        result = np.empty_like(out)
        result[order] = out
        return result

    def iter_chunks(self, chunk: int = 256) -> Iterator[tuple[int, np.ndarray]]:
        with h5py.File(self.path, "r") as f:
            images = f["images"]
            for start in range(0, self.n_images, chunk):
                yield start, images[start:start + chunk]

    def fingerprint(self) -> str:
        """A content hash that identifies the data a split or model was made from."""
        return dataset_fingerprint(self.path)


def open_galaxy10(path: str | os.PathLike) -> Galaxy10File:
    """Open and validate a Galaxy10-format h5 (real, synthetic or converted)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"no dataset file at {path}")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("images", "ans") if k not in f]
            if missing:
                raise DatasetError(f"{path} is not in the Galaxy10 layout: missing {missing}")
            images, ans = f["images"], f["ans"]
            if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
                raise DatasetError(
                    f"{path}: 'images' must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
            if ans.shape != (images.shape[0],):
                raise DatasetError(f"{path}: 'ans' has {ans.shape[0]} labels for {images.shape[0]} images")
            labels = ans[:]
            if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
                raise DatasetError(f"{path}: labels must be 0..{NUM_CLASSES - 1}")
            synthetic = bool(f.attrs.get("synthetic", False))
            return Galaxy10File(path=path, n_images=int(images.shape[0]), synthetic=synthetic)
    except OSError as exc:
        raise DatasetError(f"{path} is not a readable HDF5 file: {exc}") from exc


def dataset_fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 of the file, cached beside it by size and mtime (the real file is 2.5 GB)."""
    path = Path(path)
    stat = path.stat()
    marker = path.with_name(path.name + ".sha256")
    if marker.is_file():
        try:
            saved = json.loads(marker.read_text())
            if saved.get("size") == stat.st_size and saved.get("mtime") == stat.st_mtime:
                return saved["sha256"]
        except (ValueError, KeyError):
            pass
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    try:
        marker.write_text(json.dumps({"sha256": value, "size": stat.st_size, "mtime": stat.st_mtime}))
    except OSError:
        pass  # read-only location: just recompute next time
    return value


def read_labels_csv(folder: Path) -> list[tuple[str, int]]:
    """``labels.csv`` with columns filename,label (extra columns are ignored)."""
    csv_path = folder / "labels.csv"
    if not csv_path.is_file():
        raise DatasetError(f"{folder} has no labels.csv (columns: filename,label)")
    rows: list[tuple[str, int]] = []
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"filename", "label"} <= set(reader.fieldnames):
            raise DatasetError(f"{csv_path} needs the columns filename,label")
        for line, row in enumerate(reader, start=2):
            try:
                label = int(row["label"])
            except (TypeError, ValueError):
                raise DatasetError(f"{csv_path}:{line}: label {row['label']!r} is not an integer")
            if not 0 <= label < NUM_CLASSES:
                raise DatasetError(f"{csv_path}:{line}: label {label} is not in 0..{NUM_CLASSES - 1}")
            rows.append((row["filename"], label))
    if not rows:
        raise DatasetError(f"{csv_path} lists no images")
    return rows


def folder_to_h5(folder: str | os.PathLike, out_path: str | os.PathLike, show_progress: bool = True) -> Path:
    """Convert a folder of cutouts + labels.csv into the Galaxy10 h5 layout (256x256)."""
    folder, out_path = Path(folder), Path(out_path)
    rows = read_labels_csv(folder)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    n = len(rows)
    with h5py.File(tmp, "w") as f:
        images = f.create_dataset("images", (n, CUTOUT_SIZE, CUTOUT_SIZE, 3), np.uint8,
                                  chunks=(1, CUTOUT_SIZE, CUTOUT_SIZE, 3))
        for i, (name, _) in enumerate(tqdm(rows, desc="Converting images", disable=not show_progress)):
            src = folder / name
            if not src.is_file():
                tmp.unlink(missing_ok=True)
                raise DatasetError(f"labels.csv names {name}, which is not in {folder}")
            images[i] = preprocess_uint8(decode_image(src), CUTOUT_SIZE)
        f.create_dataset("ans", data=np.array([r[1] for r in rows], np.uint8))
        for key in ("ra", "dec", "redshift"):
            f.create_dataset(key, data=np.full(n, np.nan))
        f.create_dataset("pxscale", data=np.full(n, np.nan))
        f.create_dataset("filenames", data=np.array([r[0] for r in rows], dtype=h5py.string_dtype()))
        f.attrs["source_folder"] = str(folder.resolve())
    os.replace(tmp, out_path)
    return out_path


def resized_cache(data: Galaxy10File, image_size: int, cache_dir: Path = CACHE_DIR,
                  show_progress: bool = True, crop: float = 1.0) -> np.ndarray:
    """All images through the one preprocessing path, as a uint8 memmap on disk.

    Built once per (dataset, size) in chunks, so memory stays small even for
    the real 17,736-image file; later runs reuse it.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    tag = f"_crop{crop:.3f}" if crop < 1.0 else ""
    target = cache_dir / f"{data.fingerprint()[:16]}_{image_size}px{tag}.npy"
    shape = (data.n_images, image_size, image_size, 3)
    if target.is_file():
        arr = np.load(target, mmap_mode="r")
        if arr.shape == shape and arr.dtype == np.uint8:
            return arr
    tmp = target.with_name(target.name + ".tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    with tqdm(total=data.n_images, desc=f"Resizing to {image_size}px", disable=not show_progress) as bar:
        for start, chunk in data.iter_chunks():
            for j, img in enumerate(chunk):
                out[start + j] = preprocess_uint8(img, image_size, crop)
            bar.update(len(chunk))
    out.flush()
    del out
    os.replace(tmp, target)
    return np.load(target, mmap_mode="r")


def resolve_dataset(spec: str, *, workdir: Path, seed: int = 0, synthetic_per_class: int = 100,
                    download: bool = True, show_progress: bool = True) -> Galaxy10File:
    """``synthetic`` | ``real`` | a path to an h5 | a folder with labels.csv -> an opened h5."""
    spec = str(spec).strip()
    if spec == "synthetic":
        from galaxylib.synthetic import write_synthetic_h5

        path = workdir / f"synthetic_{synthetic_per_class}pc_seed{seed}.h5"
        if not path.is_file():
            write_synthetic_h5(path, n_per_class=synthetic_per_class, seed=seed, show_progress=show_progress)
        return open_galaxy10(path)
    if spec in ("real", "galaxy10", ""):
        from galaxylib.download import ensure_galaxy10

        return open_galaxy10(ensure_galaxy10(download=download))
    path = Path(spec).expanduser()
    if path.is_dir():
        out = workdir / f"folder_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}.h5"
        return open_galaxy10(folder_to_h5(path, out, show_progress=show_progress))
    if path.is_file():
        return open_galaxy10(path)
    raise DatasetError(
        f"dataset {spec!r} not found: use 'synthetic', 'real', a Galaxy10-format .h5 file, "
        "or a folder of images with labels.csv")
