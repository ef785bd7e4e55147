"""A survey-like catalogue from a Galaxy10-format set, and the sky map of a catalogue run.

notebooks/05_catalog_inference.ipynb runs a catalogue end to end without a survey at hand: the
cutouts of a (synthetic or real) h5 written as PNG files, with made-up sky positions on a
DECaLS-like patch, listed in a Parquet catalogue as a survey would hand it over.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from galaxylib.data.galaxy10 import Galaxy10File
from galaxylib.files import atomic_path

SKY_PATCH = ((150.0, 160.0), (0.0, 8.0))  # ra, dec ranges in degrees


def write_demo_catalog(
    data: Galaxy10File, folder: str | os.PathLike, n: int | None = None, seed: int = 0, missing: int = 1
) -> Path:
    """PNG cutouts in ``folder/cutouts/`` and ``folder/catalog.parquet`` (id_str, file_loc relative to
    the catalogue, ra, dec uniform on the sphere within :data:`SKY_PATCH`, true_class). ``missing``
    extra rows name files that do not exist, to show what an unreadable image gives."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    folder = Path(folder)
    cutouts = folder / "cutouts"
    cutouts.mkdir(parents=True, exist_ok=True)
    n = data.n_images if n is None else min(int(n), data.n_images)
    rng = np.random.default_rng(seed)
    (ra0, ra1), (dec0, dec1) = SKY_PATCH
    ra = rng.uniform(ra0, ra1, n + missing)
    dec = np.degrees(np.arcsin(rng.uniform(math.sin(math.radians(dec0)), math.sin(math.radians(dec1)), n + missing)))
    labels = data.labels()[:n]
    ids, locs = [], []
    for start, chunk in data.iter_chunks(64):
        for j, image in enumerate(chunk[: max(0, n - start)]):
            name = f"demo-{start + j:06d}"
            path = cutouts / f"{name}.png"
            if not path.is_file():
                with atomic_path(path) as tmp:
                    Image.fromarray(image).save(tmp, format="PNG")
            ids.append(name)
            locs.append(f"cutouts/{name}.png")
        if start + len(chunk) >= n:
            break
    true = [data.class_names[int(k)] for k in labels] + [None] * missing
    ids += [f"demo-missing-{k}" for k in range(missing)]
    locs += [f"cutouts/missing-{k}.png" for k in range(missing)]
    table = pa.table({"id_str": ids, "file_loc": locs, "ra": ra, "dec": dec, "true_class": pa.array(true, pa.string())})
    catalog = folder / "catalog.parquet"
    with atomic_path(catalog) as tmp:
        pq.write_table(table, tmp)
    return catalog


def class_counts(table: Any, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Rows per predicted class (the model's order), then the unreadable ones."""
    predicted = table.column("predicted_class").to_pylist()
    counts = [{"class": name, "galaxies": predicted.count(name)} for name in class_names]
    return counts + [{"class": "(unreadable)", "galaxies": predicted.count(None)}]


def sky_map(table: Any, class_names: Sequence[str], path: str | os.PathLike | None = None, title: str = ""):
    """ra/dec of every row coloured by predicted class (ra increasing leftwards, as on the sky);
    unreadable rows as grey crosses."""
    import matplotlib.pyplot as plt

    ra = np.asarray(table.column("ra").to_pylist(), dtype=float)
    dec = np.asarray(table.column("dec").to_pylist(), dtype=float)
    predicted = table.column("predicted_class").to_pylist()
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    colours = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for k, name in enumerate(class_names):
        rows = np.array([p == name for p in predicted], dtype=bool)
        if rows.any():
            ax.scatter(ra[rows], dec[rows], s=14, color=colours(k % colours.N), label=f"{name} ({rows.sum()})")
    bad = np.array([p is None for p in predicted], dtype=bool)
    if bad.any():
        ax.scatter(ra[bad], dec[bad], s=30, marker="x", color="0.5", label=f"unreadable ({bad.sum()})")
    ax.invert_xaxis()
    ax.set_xlabel("ra [deg]")
    ax.set_ylabel("dec [deg]")
    ax.set_title(title or "Predicted class on the sky")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig
