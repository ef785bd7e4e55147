"""``./predict.sh``: classify files, folders or a Galaxy10 h5; write a CSV; log to the database.

Usage: python -m galaxylib.apps.predict_cli --model models/<run> INPUT ... [--out predictions.csv]
       python -m galaxylib.apps.predict_cli --model models/<run> --catalog CATALOG --out OUT_DIR
           [--shard K/N] [--dask local:N | --dask tcp://HOST:PORT] [--to-database]

With ``--catalog`` it runs survey-scale catalogue inference into a Parquet dataset
(``galaxylib.catalog``, docs/catalog.md); without it, it behaves as it always has.

A broken file gets a CSV line with an ``error`` and no database row; it never stops the
batch. So does anything else named, or found in a folder under an image's suffix, that is not a
regular file (a FIFO is never opened), and an h5 that is not in the Galaxy10 layout (one line).
A file is named by its path, written as ``classify.path_name`` says when it is not UTF-8. Rows go to the database one transaction per batch, and the CSV appears (atomically)
only when the whole run has finished.
"""

from __future__ import annotations

if __name__ == "__main__":  # run as predict.sh; importing this module changes nothing
    from galaxylib.inference.threads import limit_native_threads

    limit_native_threads()  # before numpy: the interpreter's threads are the only ones that should spin

import argparse  # noqa: E402
import csv  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import stat  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

from tqdm import tqdm  # noqa: E402

from galaxylib.artifact import ArtifactError  # noqa: E402
from galaxylib.config import user_path  # noqa: E402
from galaxylib.files import atomic_path  # noqa: E402
from galaxylib.inference.classify import Classified, ImageInput, classify, path_name, printable  # noqa: E402
from galaxylib.inference.predictor import TOP_K  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
H5_SUFFIXES = {".h5", ".hdf5"}
CSV_FIELDS = (
    ["filename", "predicted_class", "class_index", "confidence", "decision_rule"]
    + [f"top{k}{suffix}" for k in range(1, TOP_K + 1) for suffix in ("", "_p")]
    + ["in_distribution", "ood_score", "model_version", "prediction_id", "error"]
)

SYNTHETIC_NOTE = (
    "predict.sh: note: {model} was trained on synthetic galaxies (the offline quick start): "
    "it shows the plumbing; its classes and confidences mean little on real cutouts"
)


def exiting_on_ctrl_c() -> None:
    """Stopping after Ctrl-C takes a moment (worker processes, the database): a second, impatient
    Ctrl-C then would only print tracebacks from the exit code, so it is ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _mode(path: Path) -> int:
    """The ``st_mode`` of what ``path`` names (links followed); 0 when it cannot be stat'ed."""
    try:
        return os.stat(path).st_mode
    except (OSError, ValueError):  # missing, a dead link, no permission; ValueError: a NUL in the name
        return 0


def _is_dir(path: Path) -> bool:
    return stat.S_ISDIR(_mode(path))


def _is_h5(path: Path) -> bool:
    """A regular file named like an h5; anything else so named (a FIFO...) gets the file path's error line."""
    return path.suffix.lower() in H5_SUFFIXES and stat.S_ISREG(_mode(path))


def _walk_images(folder: Path) -> Iterator[Path]:
    """The images under a folder, by suffix, in walk order. Whatever bears an image's suffix and
    is not a folder is kept, a link whose target is gone or a FIFO too, so that it gets its
    error line rather than vanishing from the output (a FIFO is never opened: classify)."""
    return (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not _is_dir(p))


def folder_images(folder: Path) -> list[Path]:
    return sorted(_walk_images(folder))


H5_CHUNK_ROWS = 64  # rows of an h5 read at once, at most
H5_CHUNK_BYTES = 64 << 20  # ... and at most this many bytes of pixels (one row, if a row is bigger)


def _h5_rows(src: Path) -> Iterator[ImageInput]:
    """The rows of an h5, each named ``FILE[i]``: an h5 that cannot be used is one error line
    saying why, and a row that cannot be read is that row's error line.

    No labels are needed (``labels=False``). A listing h5 (``file_loc`` in place of ``images``)
    gives its files, each read, and refused if need be, on its own.
    """
    import h5py

    from galaxylib.data.galaxy10 import DatasetError, open_galaxy10

    name = path_name(src)
    try:
        data = open_galaxy10(src, labels=False)
        files = data.file_locations() if data.image_files else None
    except (DatasetError, OSError, KeyError, ValueError) as exc:
        yield ImageInput.unusable(name, str(exc).replace(str(src), name))
        return
    if data.n_images == 0:
        yield ImageInput.unusable(name, f"{name}: holds no images (0 rows)")
        return
    if files is not None:
        for i, loc in enumerate(files):
            yield ImageInput.from_path(loc, name=f"{name}[{i}]")
        return
    from galaxylib.preprocessing import MAX_IMAGE_PIXELS

    try:
        with h5py.File(src, "r") as f:
            images = f["images"]
            height, width = images.shape[1:3]
            if height * width > MAX_IMAGE_PIXELS:  # as a file that big is refused; nor is it read into memory
                yield ImageInput.unusable(
                    name, f"{name}: its {width}x{height} images are over the limit of {MAX_IMAGE_PIXELS:,} pixels"
                )
                return
            rows = max(1, min(H5_CHUNK_ROWS, H5_CHUNK_BYTES // max(1, height * width * 3)))
            for start in range(0, data.n_images, rows):
                stop = min(start + rows, data.n_images)
                try:
                    chunk = images[start:stop]
                except (OSError, ValueError, KeyError, RuntimeError) as exc:  # a corrupt chunk
                    for i in range(start, stop):
                        yield ImageInput.unusable(f"{name}[{i}]", f"{name}[{i}]: cannot be read from the file ({exc})")
                    continue
                for j, img in enumerate(chunk):
                    yield ImageInput.from_array(img, f"{name}[{start + j}]")
    except (OSError, KeyError) as exc:  # replaced or removed since it was checked
        yield ImageInput.unusable(name, f"{name}: can no longer be read ({exc})")


def iter_inputs(inputs: list[Path]) -> Iterator[ImageInput]:
    """Every image named by the command line: files, the images in folders, the rows of h5 files."""
    for src in inputs:
        if _is_dir(src):
            for p in folder_images(src):
                yield ImageInput.from_path(p)
        elif _is_h5(src):
            yield from _h5_rows(src)
        else:
            yield ImageInput.from_path(src)  # a missing or odd file gets its error line


def count_inputs(inputs: list[Path]) -> int:
    """The lines ``iter_inputs`` will give (for the progress bar): an h5 that cannot be used, or
    holds no rows, counts one, as does any file."""
    total = 0
    for src in inputs:
        if _is_dir(src):
            total += len(folder_images(src))
        elif _is_h5(src):
            from galaxylib.data.galaxy10 import DatasetError, open_galaxy10

            try:
                total += max(1, open_galaxy10(src, labels=False).n_images)
            except DatasetError:
                total += 1
        else:
            total += 1
    return total


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="predict.sh",
        # both modes in the first line a user reads; the catalogue mode's options: --catalog --help
        usage=(
            "predict.sh --model MODEL [--out CSV] [options] INPUT [INPUT ...]\n"
            "       predict.sh --model MODEL --catalog CATALOG --out DIR [options]   "
            "(predict.sh --catalog --help)"
        ),
        description="Classify galaxy cutouts with a trained model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.fill("The CSV, one line per input: " + ", ".join(CSV_FIELDS) + ".", 86, subsequent_indent="  ")
        + "\n"
        "  confidence and topK_p are calibrated probabilities; decision_rule is most_probable\n"
        "  (predicted_class is top1) or balanced (a model trained to find rare classes: its own\n"
        "  decision, which can differ from top1; docs/trust.md); in_distribution is false when\n"
        "  ood_score is above the model's threshold (model.json: ood.threshold); both are empty\n"
        "  for a model without the check; error is set, and the rest empty, for a file that\n"
        "  could not be read. filename is the path (an h5 row: FILE[i]); bytes of it that are\n"
        "  not UTF-8 are written \\xHH, and a backslash \\\\, as in the database.\n"
        "Exit status: 0 when at least one image was classified, 1 when every input failed,\n"
        "  2 for bad arguments, an unusable model or database, or nothing to classify,\n"
        "  130 after Ctrl-C (the CSV is then not written).\n"
        "For a whole survey catalogue (Parquet dataset out, sharded, resumable, Slurm or\n"
        "  Dask): predict.sh --model M --catalog CATALOG --out DIR (see docs/catalog.md).",
    )
    parser.add_argument("--model", required=True, type=Path, help="a models/<run> folder from train.sh")
    parser.add_argument(
        "inputs", nargs="+", type=Path, help="jpg/png files, folders of them, or a Galaxy10 .h5 (labels not needed)"
    )
    parser.add_argument("--out", default="predictions.csv", help="CSV to write (default predictions.csv)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--database-url", default=None, help="overrides DATABASE_URL (default: an SQLite file in data/)"
    )
    parser.add_argument("--no-db", action="store_true", help="do not log predictions to the database")
    args = parser.parse_args(argv)
    named_as_folder = args.out.endswith(("/", os.sep))  # Path() would drop the slash
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    args.model, args.out = user_path(args.model), user_path(args.out)
    args.inputs = [user_path(p) for p in args.inputs]
    problem = csv_destination_problem(args.out, named_as_folder)
    if problem:
        parser.error(problem)
    return args


def csv_destination_problem(out: Path, named_as_folder: bool = False) -> str | None:
    """Why the CSV cannot be written at ``out``, found before anything is classified or logged to
    the database (a rerun after a late failure would log every row twice); None when it can. A
    missing folder above it is created, as the CSV's would be."""
    if named_as_folder or out.is_dir():
        return f"--out {out} names a folder; name the CSV file, e.g. --out {out / 'predictions.csv'}"
    folder = out.parent
    for above in (folder, *folder.parents):
        if above.exists():
            if not above.is_dir():
                return f"--out {out}: {above} is a file, not a folder"
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=f".{out.name}.probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        return f"--out {out}: cannot write in {folder} ({exc.strerror or exc})"
    return None


def csv_line(item: Classified, model_version: str, prediction_id: int | None) -> dict[str, str]:
    """One CSV line; every text in it is valid UTF-8 (``printable``), whatever the names it quotes."""
    if not item.ok:
        return {"filename": printable(item.name), "model_version": model_version, "error": printable(str(item.error))}
    p = item.prediction
    line = {
        "filename": printable(item.name),
        "predicted_class": p.predicted_class,
        "class_index": str(p.class_index),
        "confidence": f"{p.confidence:.6f}",
        "decision_rule": p.decision_rule,
        "model_version": p.model_version,
        "prediction_id": "" if prediction_id is None else str(prediction_id),
        "error": "",
        # empty for a model without an out-of-distribution check
        "in_distribution": "" if p.in_distribution is None else str(p.in_distribution).lower(),
        "ood_score": "" if p.ood_score is None else f"{p.ood_score:.6g}",
    }
    for k, (name, prob) in enumerate(p.top_classes, start=1):
        line[f"top{k}"], line[f"top{k}_p"] = name, f"{prob:.6f}"
    return line


def parse_catalog_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="predict.sh --catalog",
        description="Classify a whole catalogue into a Parquet dataset, one file per "
        "work shard; resumable (see docs/catalog.md).",
    )
    parser.add_argument("--model", required=True, type=Path, help="a models/<run> folder from train.sh")
    parser.add_argument(
        "--catalog",
        required=True,
        help="a .parquet or .csv with id_str and file_loc, a folder of cutouts, a Galaxy10 .h5, or "
        "WebDataset .tar shards (a tar, a folder of them, or a pattern like s-{000..009}.tar)",
    )
    parser.add_argument("--out", required=True, type=Path, help="the output folder (a Parquet dataset)")
    parser.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="do only task K of N (1-based), e.g. --shard ${SLURM_ARRAY_TASK_ID}/N",
    )
    parser.add_argument(
        "--dask",
        default=None,
        metavar="local:N|tcp://HOST:PORT",
        help="run the shards on Dask: N local worker processes, or an existing scheduler",
    )
    parser.add_argument(
        "--to-database",
        action="store_true",
        help="also bulk-load the predictions into the predictions table (idempotent per shard)",
    )
    parser.add_argument(
        "--database-url", default=None, help="overrides DATABASE_URL (default: an SQLite file in data/)"
    )
    parser.add_argument("--shard-rows", type=int, default=None, help="rows per work shard (default 2048)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default 8)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="LiteRT threads in all (default: all cores; 1 per worker with --dask local:N)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="worker processes sharing --threads (default: one per thread; 1 = this process only, "
        "which a catalogue under 512 rows uses anyway)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the results of another run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    from galaxylib.catalog.dask_runner import parse_dask
    from galaxylib.catalog.shards import parse_shard
    from galaxylib.catalog.sources import CatalogError

    try:
        args.shard_k_n = parse_shard(args.shard)
        if args.dask is not None:
            parse_dask(args.dask)
    except CatalogError as exc:
        parser.error(str(exc))
    for name in ("shard_rows", "batch_size", "threads", "processes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    args.model, args.out = user_path(args.model), user_path(args.out)
    if not any(c in args.catalog for c in "*?[{"):
        args.catalog = str(user_path(args.catalog))
    return args


def catalog_main(argv: list[str]) -> int:
    """``predict.sh --catalog``: one summary line, a clear message (exit 2) for bad input."""
    if any(a in ("-h", "--help") for a in argv):
        # "--catalog --help" asks for this mode's options; argparse would read --help as the catalogue
        parse_catalog_args(["--help"])
    args = parse_catalog_args(argv)
    from galaxylib.catalog.run import DEFAULT_SHARD_ROWS, predict_catalog
    from galaxylib.catalog.shard_runner import DEFAULT_BATCH
    from galaxylib.catalog.sources import CatalogError

    try:
        result = predict_catalog(
            args.model,
            args.catalog,
            args.out,
            shard=args.shard_k_n,
            dask=args.dask,
            to_database=args.to_database,
            database_url=args.database_url,
            shard_rows=args.shard_rows or DEFAULT_SHARD_ROWS,
            batch_size=args.batch_size or DEFAULT_BATCH,
            threads=args.threads,
            processes=args.processes,
            overwrite=args.overwrite,
            show_progress=not args.no_progress,
        )
    except ArtifactError as exc:
        print(f"predict.sh: cannot load the model: {exc}", file=sys.stderr)
        return 2
    except CatalogError as exc:
        print(f"predict.sh: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        exiting_on_ctrl_c()
        print(
            f"\npredict.sh: interrupted. The shards finished so far are kept in {args.out}; run the same "
            "command again to do the rest.",
            file=sys.stderr,
        )
        return 130
    except OSError as exc:  # a full disk, a folder gone read-only, an input that vanished mid-run
        print(
            f"predict.sh: stopped by an I/O error: {exc}. The shards finished so far are kept in {args.out}; "
            "fix the cause and run the same command again.",
            file=sys.stderr,
        )
        return 2
    for line in result.failed:
        print(f"  FAILED {line}", file=sys.stderr)
    if result.trained_on_synthetic:
        print(SYNTHETIC_NOTE.format(model=args.model), file=sys.stderr)
    workers = f" on {result.processes} worker processes" if result.processes > 1 else ""
    task = f" (task {args.shard_k_n[0]}/{args.shard_k_n[1]}: {result.selected} shards)" if args.shard else ""
    print(
        f"Catalogue: {result.shards} shard(s){task}; {result.skipped} already finished, {result.processed} done now: "
        f"{result.rows} row(s), {result.errors} unreadable; {result.seconds:.1f} s{workers}. Parquet dataset: {args.out}"
    )
    if result.failed:
        print(f"{len(result.failed)} shard(s) failed; run the same command again to redo them.", file=sys.stderr)
        return 1
    if result.rows and result.errors == result.rows:
        print(
            "predict.sh: no image could be read (see the error column): is file_loc relative to the "
            "catalogue's folder?",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--catalog" or a.startswith("--catalog=") for a in argv):
        return catalog_main(argv)
    args = parse_args(argv)
    empty = [src for src in args.inputs if _is_dir(src) and next(_walk_images(src), None) is None]  # stops at one
    if empty and len(empty) == len(args.inputs):
        print(
            f"predict.sh: nothing to classify: {', '.join(map(str, empty))} holds no "
            f"{'/'.join(sorted(s.lstrip('.') for s in IMAGE_SUFFIXES))} images (searched with subfolders)",
            file=sys.stderr,
        )
        return 2
    for src in empty:
        print(f"predict.sh: {src} holds no images; going on with the other inputs", file=sys.stderr)
    from galaxylib.inference.predictor import Predictor

    try:
        predictor = Predictor(args.model, quiet=True)
    except (ArtifactError, OSError, ValueError) as exc:
        print(f"predict.sh: cannot load the model: {exc}", file=sys.stderr)
        return 2
    if predictor.artifact.synthetic:
        print(SYNTHETIC_NOTE.format(model=args.model), file=sys.stderr)
    store = None
    if not args.no_db:
        from galaxylib.store.database import PredictionStore

        try:
            store = PredictionStore(args.database_url)
        except Exception as exc:
            print(
                f"predict.sh: cannot open the predictions database: {exc}\n"
                "  (set DATABASE_URL, pass --database-url, or use --no-db)",
                file=sys.stderr,
            )
            return 2
    try:
        n_ok, n_err, errors, unlogged = _classify_into_csv(args, predictor, store)
    except KeyboardInterrupt:  # the CSV is written whole or not at all (atomic_path)
        exiting_on_ctrl_c()
        logged = f"; the predictions made so far are in {store.url}" if store is not None else ""
        print(f"\npredict.sh: interrupted; {args.out} was not written{logged}.", file=sys.stderr)
        return 130
    for line in errors:
        print(f"  skipped {line}", file=sys.stderr)
    if unlogged:
        from galaxylib.store.table import FILENAME_MAX_LENGTH

        for name in unlogged:
            print(
                f"  not logged to the database (a name over {FILENAME_MAX_LENGTH} characters; the CSV has it): {name}",
                file=sys.stderr,
            )
    where = f"; {n_ok - len(unlogged)} rows logged to {store.url}" if store is not None else ""
    print(f"Classified {n_ok} image(s), {n_err} could not be read{where}. CSV: {path_name(args.out)}")
    return 0 if n_ok or not n_err else 1


def _classify_into_csv(args: argparse.Namespace, predictor, store) -> tuple[int, int, list[str], list[str]]:
    """Every input into ``args.out`` (atomically) and the database: (classified, unreadable, why,
    the names classified but not logged). The CSV is UTF-8 whatever the locale. A name longer than
    the database's filename column is classified and in the CSV, but not logged: PostgreSQL would
    refuse the whole batch for it."""
    from galaxylib.store.records import prediction_row
    from galaxylib.store.table import FILENAME_MAX_LENGTH

    n_ok = n_err = 0
    errors: list[str] = []
    unlogged: list[str] = []
    with atomic_path(args.out) as tmp_out, open(tmp_out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        pending: list[ImageInput] = []

        def flush() -> None:
            nonlocal n_ok, n_err
            results = classify(predictor, pending, forward_batch=args.batch_size)
            good = [r for r in results if r.ok]
            to_log = [r for r in good if len(r.name) <= FILENAME_MAX_LENGTH] if store else []
            if store:
                unlogged.extend(printable(r.name) for r in good if len(r.name) > FILENAME_MAX_LENGTH)
            records = store.add_many([prediction_row(r, "predict.sh") for r in to_log]) if to_log else []
            ids = {id(item): rec.id for item, rec in zip(to_log, records)}
            for item in results:
                writer.writerow(csv_line(item, predictor.model_version, ids.get(id(item))))
                if not item.ok:
                    errors.append(printable(str(item.error)))
            n_ok += len(good)
            n_err += len(results) - len(good)
            pending.clear()

        for item in tqdm(
            iter_inputs(args.inputs), total=count_inputs(args.inputs), desc="Classifying", unit="img", file=sys.stderr
        ):
            pending.append(item)
            if len(pending) >= args.batch_size:
                flush()
        if pending:
            flush()
    return n_ok, n_err, errors, unlogged


if __name__ == "__main__":
    sys.exit(main())
