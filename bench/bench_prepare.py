"""Benchmark: preparing a labelled folder for training, straight from the files to the model-size cache.

The real GZ1 folder (``../shared/gz1_coarse``, 3,348 JPEG cutouts of 256 px), or N copies of its
files under new names (``--copies N``, to see scale), prepared for a 128 px model the way
``01_prepare_data`` does it (``resolve_dataset`` then ``resized_cache``), with one worker process
and with every core, in alternating rounds in one run. Prints images/s for each, their ratio
(the median over rounds), and the bytes the preparation left on disk per image (the listing h5
and the cache; no 256 px copy).

    python bench/bench_prepare.py                  # GZ1 once, 3 rounds
    python bench/bench_prepare.py --copies 4 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from galaxylib.config import GZ1_DIR
from galaxylib.data import decoded_files, labelled_images
from galaxylib.data.galaxy10 import resized_cache
from galaxylib.data.resolve import resolve_dataset

SIZE = 128


def replicate(copies: int, into: Path) -> Path:
    """The GZ1 folder ``copies`` times, as hard links (or copies) under new names, with its labels."""
    images = into / "images"
    images.mkdir(parents=True)
    lines = (GZ1_DIR / "labels.csv").read_text().splitlines()
    out = [lines[0]]
    for k in range(copies):
        for line in lines[1:]:
            name, rest = line.split(",", 1)
            new = f"c{k}_{name}"
            try:
                os.link(GZ1_DIR / "images" / name, images / new)
            except OSError:
                shutil.copyfile(GZ1_DIR / "images" / name, images / new)
            out.append(f"{new},{rest}")
    (into / "labels.csv").write_text("\n".join(out) + "\n")
    return into


def prepare(folder: Path, workers: int) -> tuple[float, int, int]:
    """Seconds, images, and bytes left on disk by one preparation into a fresh data folder."""
    work = Path(tempfile.mkdtemp(prefix="prepare-"))
    real_decode = decoded_files.decode_files
    # the worker count is not a training setting (all cores); set here for the comparison
    labelled_images.decode_files = lambda *a, **k: real_decode(*a, **{**k, "workers": workers})
    try:
        start = time.perf_counter()
        data = resolve_dataset(
            str(folder),
            workdir=work,
            cache_dir=work / "cache",
            image_size=SIZE,
            label_column="coarse",
            show_progress=False,
        )
        resized_cache(data, SIZE, work / "cache", show_progress=False)
        seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in work.rglob("*") if p.is_file())
        return seconds, data.n_images, size
    finally:
        labelled_images.decode_files = real_decode
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="gz1-copies-") as tmp:
        folder = GZ1_DIR if args.copies == 1 else replicate(args.copies, Path(tmp) / "gz1")
        rates: dict[int, list[float]] = {1: [], cores: []}
        for r in range(args.rounds):
            for workers in rates:
                seconds, n, size = prepare(folder, workers)
                rates[workers].append(n / seconds)
                print(f"round {r + 1}, {workers} worker(s): {n} images in {seconds:.1f} s, {n / seconds:.0f} images/s")
    one, all_cores = statistics.median(rates[1]), statistics.median(rates[cores])
    print(f"\n{n} images to a {SIZE} px cache on {cores} cores (medians over {args.rounds} rounds):")
    print(f"  1 worker         {one:8.0f} images/s")
    print(f"  {cores} workers {all_cores:13.0f} images/s   ({all_cores / one:.2f}x)")
    print(f"  on disk: {size / n / 1024:.1f} KiB per image (the {SIZE} px cache is {SIZE * SIZE * 3 / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
