"""Which dataset a training run means: ``synthetic``, ``real``, an h5, a folder with labels.csv, or a catalogue.

A training-side step (the synthetic renderer needs SciPy): it makes or finds the Galaxy10-layout
h5 that everything downstream reads (``galaxylib.data.galaxy10``), in the run's data folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from galaxylib.config import GALAXY10_FILENAME, user_path
from galaxylib.data.galaxy10 import CUTOUT_SIZE, DatasetError, Galaxy10File, open_galaxy10
from galaxylib.data.labelled_images import CATALOGUE_SUFFIXES, convert_labelled
from galaxylib.files import sha256_file


def resolve_dataset(
    spec: str,
    *,
    workdir: Path,
    cache_dir: Path | None = None,
    image_size: int = CUTOUT_SIZE,
    crop: float = 1.0,
    seed: int = 0,
    synthetic_per_class: int = 100,
    download: bool = True,
    show_progress: bool = True,
    label_column: str = "label",
    max_unreadable: int = 0,
) -> Galaxy10File:
    """``synthetic`` | ``real`` | a path to an h5 | a folder with labels.csv | a labelled catalogue
    (.parquet or .csv with ``file_loc`` and the label column) -> an opened h5.

    Everything derived (the synthetic set, the listings of folders and catalogues, the downloaded
    real file under ``raw/``) lives in ``workdir``, the run's data folder. A folder's or
    catalogue's images are decoded straight into the ``image_size`` cache in ``cache_dir``
    (``workdir/cache`` unless given); up to ``max_unreadable`` of them may be unreadable: they are
    listed and left out.
    """
    spec = str(spec).strip()
    if spec == "synthetic":
        from galaxylib.data.synthetic import write_synthetic_h5

        path = workdir / f"synthetic_{synthetic_per_class}pc_seed{seed}.h5"
        if not path.is_file():
            write_synthetic_h5(path, n_per_class=synthetic_per_class, seed=seed, show_progress=show_progress)
        return open_galaxy10(path)
    if spec in ("real", "galaxy10", ""):
        from galaxylib.data.download import ensure_galaxy10

        return open_galaxy10(ensure_galaxy10(workdir / "raw" / GALAXY10_FILENAME, download=download))
    path = user_path(spec)
    if path.is_dir() or path.suffix.lower() in CATALOGUE_SUFFIXES and path.is_file():
        # Keyed by the folder or catalogue, its labels and the label column: editing them makes a new h5.
        kind, labels = ("folder", path / "labels.csv") if path.is_dir() else ("catalogue", path)
        key = f"{path.resolve()}|{sha256_file(labels) if labels.is_file() else ''}|{label_column}"
        out = workdir / f"{kind}_{hashlib.sha256(key.encode()).hexdigest()[:12]}.h5"
        if out.is_file():
            return open_galaxy10(out)
        return open_galaxy10(
            convert_labelled(
                path,
                out,
                image_size=image_size,
                crop=crop,
                cache_dir=cache_dir or workdir / "cache",
                show_progress=show_progress,
                label_column=label_column,
                max_unreadable=max_unreadable,
            )
        )
    if path.is_file():
        return open_galaxy10(path)
    raise DatasetError(
        f"dataset {spec!r} not found: use 'synthetic', 'real', a Galaxy10-format .h5 file, "
        "a folder of images with labels.csv, or a catalogue (.parquet or .csv with file_loc and a label column)"
    )
