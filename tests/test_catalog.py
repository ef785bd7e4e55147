"""Survey-scale catalogue inference (galaxylib.catalog, ./predict.sh --catalog) on real cutouts.

Catalogues in CSV and Parquet with pass-through columns and broken rows, a folder, a Galaxy10
h5 and WebDataset tars; resuming from the manifest (and distrusting files it does not vouch
for); SIGKILL at random moments; a real Dask LocalCluster; --to-database idempotency on SQLite
and PostgreSQL; the provenance in the Parquet schema metadata.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from support import add_trust_check, default_ctrl_c, row_count

from galaxylib.artifact import add_to_artifact
from galaxylib.catalog.run import predict_catalog
from galaxylib.catalog.shards import read_provenance
from galaxylib.catalog.sources import CatalogError
from galaxylib.config import PROJECT_ROOT
from galaxylib.inference.predictor import Predictor


def write_catalog_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def cutouts(tmp_path, sample_files) -> Path:
    """A survey-like folder: 12 real cutouts in images/, plus one text file posing as a JPEG."""
    folder = tmp_path / "survey" / "images"
    folder.mkdir(parents=True)
    for src in sample_files[:12]:
        (folder / src.name).write_bytes(src.read_bytes())
    (folder / "broken.jpg").write_text("not an image")
    return folder


@pytest.fixture
def csv_catalog(cutouts) -> Path:
    """id_str, file_loc relative to the catalogue's folder, ra/dec/mag to pass through, a broken and a missing image."""
    rows = [
        {
            "id_str": f"DESI-{i:03d}",
            "file_loc": f"images/{p.name}",
            "ra": 150.0 + i / 10,
            "dec": 2.0 - i / 20,
            "mag_r": 17.5 + i / 7,
        }
        for i, p in enumerate(sorted(p for p in cutouts.glob("*.jpg") if p.name != "broken.jpg"))
    ]
    rows.append({"id_str": "DESI-broken", "file_loc": "images/broken.jpg", "ra": 1.0, "dec": 1.0, "mag_r": 20.0})
    rows.append({"id_str": "DESI-missing", "file_loc": "images/nowhere.jpg", "ra": 2.0, "dec": 2.0, "mag_r": 21.0})
    return write_catalog_csv(cutouts.parent / "catalog.csv", rows)


def read_out(out: Path) -> pa.Table:
    return pq.read_table(out).sort_by("id_str")


def run(model, catalog, out, **kwargs):
    kwargs.setdefault("show_progress", False)
    return predict_catalog(model, catalog, out, **kwargs)


def test_a_csv_catalogue_gives_one_row_per_input_with_pass_through_and_errors(tiny_artifact, csv_catalog, tmp_path):
    out = tmp_path / "out"
    result = run(tiny_artifact, csv_catalog, out, shard_rows=5, batch_size=4)
    assert result.ok and result.shards == 3 and result.rows == 14 and result.errors == 2
    table = read_out(out)
    names = list(Predictor(tiny_artifact).class_names)
    assert table.column_names == ["id_str", "ra", "dec", "mag_r", "predicted_class", "confidence", *names, "error"]
    assert table.num_rows == 14 and len(set(table.column("id_str").to_pylist())) == 14
    rows = {r["id_str"]: r for r in table.to_pylist()}
    assert "not a JPEG or PNG" in rows["DESI-broken"]["error"] and rows["DESI-broken"]["predicted_class"] is None
    assert "no such file" in rows["DESI-missing"]["error"] and rows["DESI-missing"]["ra"] == 2.0
    # The same answer as the Predictor itself, file by file, and the pass-through values as given.
    predictor = Predictor(tiny_artifact)
    with open(csv_catalog, newline="") as fh:
        for line in csv.DictReader(fh):
            row = rows[line["id_str"]]
            assert row["ra"] == pytest.approx(float(line["ra"])) and row["mag_r"] == pytest.approx(float(line["mag_r"]))
            if row["error"] is None:
                expected = predictor.predict(csv_catalog.parent / line["file_loc"])
                assert row["predicted_class"] == expected.predicted_class
                assert row["confidence"] == pytest.approx(expected.confidence, abs=1e-12)
                assert [row[n] for n in names] == pytest.approx([expected.probabilities[n] for n in names], abs=1e-12)


def test_a_parquet_catalogue_with_absolute_paths_and_its_provenance(tiny_artifact, cutouts, tmp_path):
    files = sorted(p for p in cutouts.glob("*.jpg") if p.name != "broken.jpg")
    catalog = tmp_path / "catalog.parquet"
    pq.write_table(
        pa.table(
            {
                "id_str": pa.array([f"g{i}" for i in range(len(files))]),
                "file_loc": pa.array([str(p.resolve()) for p in files]),
                "ra": pa.array(np.linspace(0, 10, len(files))),
                "survey": pa.array(["DECaLS"] * len(files)),
            }
        ),
        catalog,
    )
    out = tmp_path / "out"
    result = run(tiny_artifact, catalog, out, shard_rows=8)
    assert result.ok and result.shards == 2 and result.errors == 0
    table = read_out(out)
    assert table.num_rows == len(files) and set(table.column("survey").to_pylist()) == {"DECaLS"}
    assert table.column("error").null_count == len(files)
    from galaxylib.artifact import read_artifact
    from galaxylib.catalog.sources import canonical_checksum

    artifact = read_artifact(tiny_artifact)
    for index in (0, 1):
        meta = read_provenance(out / f"part-{index:05d}.parquet")
        assert meta["model_version"] == artifact.model_version
        assert meta["model_sha256"] == artifact.sidecar["files"]["model.tflite"]
        assert meta["galaxylib_version"] == __import__("galaxylib").__version__
        from galaxylib.config import git_commit

        assert meta["git_commit"] == (git_commit() or "unknown")
        assert json.loads(meta["preprocessing"]) == artifact.sidecar["preprocessing"]
        assert meta["orientation_views"] == "1"  # the tiny artifact does not average orientations
        # the input checksum is that of the shard's own rows (as normalised: paths resolved)
        normalised = next((out / "_plan").glob("input-*.parquet"))
        shard_rows = pq.ParquetFile(normalised).read_row_group(index)
        assert meta["input_checksum"] == canonical_checksum(shard_rows, {"shard": index, "start": index * 8})
    assert (
        read_provenance(out / "part-00000.parquet")["input_checksum"]
        != read_provenance(out / "part-00001.parquet")["input_checksum"]
    )


def test_a_folder_an_h5_and_webdataset_tars_are_inputs_too(tiny_artifact, cutouts, sample_files, tmp_path):
    import webdataset as wds

    predictor = Predictor(tiny_artifact)
    # a folder: id_str is the path inside it; the text file gets an error row
    out = tmp_path / "folder-out"
    assert run(tiny_artifact, cutouts, out, shard_rows=4).ok
    table = read_out(out)
    assert table.num_rows == 13 and "broken.jpg" in table.column("id_str").to_pylist()
    assert table.column("error").null_count == 12

    # a Galaxy10 h5, read in chunks: its ra/dec/ans datasets pass through
    h5 = tmp_path / "g10.h5"
    from PIL import Image

    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sample_files[:7]])
    with h5py.File(h5, "w") as f:
        f.create_dataset("images", data=images)
        f.create_dataset("ans", data=np.arange(7, dtype=np.uint8))
        f.create_dataset("ra", data=np.linspace(10, 11, 7))
        f.create_dataset("dec", data=np.linspace(-1, 1, 7))
    out = tmp_path / "h5-out"
    assert run(tiny_artifact, h5, out, shard_rows=3, batch_size=2).ok
    table = pq.read_table(out)
    assert table.column("id_str").to_pylist() == [f"g10.h5[{i}]" for i in range(7)]
    assert table.column("ra").to_pylist() == pytest.approx(list(np.linspace(10, 11, 7)))
    assert table.column("ans").to_pylist() == list(range(7))
    expected = predictor.predict_arrays(np.stack([predictor.preprocess(a) for a in images]))
    assert table.column("confidence").to_pylist() == pytest.approx(list(expected.max(1)), abs=1e-6)

    # WebDataset tars in galaxy-datasets' layout (__key__ = id_str, image.jpg, labels.json)
    shards = tmp_path / "wds"
    shards.mkdir()
    for s in range(2):
        with wds.TarWriter(str(shards / f"shard-{s:03d}.tar")) as sink:
            for i, p in enumerate(sample_files[s * 4 : (s + 1) * 4]):
                sink.write({"__key__": f"wds_{s}_{i}", "image.jpg": p.read_bytes(), "labels.json": '{"label": 1}'})
            sink.write({"__key__": f"wds_{s}_nopic", "labels.json": '{"label": 2}'})
    out = tmp_path / "wds-out"
    result = run(tiny_artifact, str(shards / "shard-{000..001}.tar"), out)
    assert result.ok and result.shards == 2 and result.rows == 10 and result.errors == 2
    table = read_out(out)
    rows = {r["id_str"]: r for r in table.to_pylist()}
    assert "no .jpg or .png member" in rows["wds_0_nopic"]["error"]
    assert rows["wds_1_2"]["predicted_class"] == predictor.predict(sample_files[6]).predicted_class
    assert read_provenance(out / "part-00001.parquet")["input_checksum"] == __import__(
        "galaxylib.files", fromlist=["sha256_file"]
    ).sha256_file(shards / "shard-001.tar")
    # a folder of tars is the same input
    assert run(tiny_artifact, shards, tmp_path / "wds-out2").rows == 10


def test_a_rerun_skips_what_the_manifest_vouches_for_and_redoes_the_rest(tiny_artifact, csv_catalog, tmp_path):
    out = tmp_path / "out"
    first = run(tiny_artifact, csv_catalog, out, shard_rows=4)
    assert first.processed == 4
    before = read_out(out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}

    again = run(tiny_artifact, csv_catalog, out, shard_rows=4)
    assert (again.skipped, again.processed) == (4, 0)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")} == stamps

    # a file without its manifest entry (a crash between the rename and the entry) is redone
    (out / "_manifest" / "part-00002.json").unlink()
    # a file that changed since its entry was written is not trusted either
    part3 = out / "part-00003.parquet"
    part3.write_bytes(part3.read_bytes() + b"\0")
    third = run(tiny_artifact, csv_catalog, out, shard_rows=4)
    assert (third.skipped, third.processed) == (2, 2)
    assert read_out(out).equals(before)

    # Slurm-style tasks: 1/2 and 2/2 each do their own shards
    out2 = tmp_path / "out2"
    a = run(tiny_artifact, csv_catalog, out2, shard_rows=4, shard="1/2")
    b = run(tiny_artifact, csv_catalog, out2, shard_rows=4, shard="2/2")
    assert (a.selected, a.processed, b.selected, b.processed) == (2, 2, 2, 2)
    assert sorted(p.name for p in out2.glob("part-*.parquet")) == [f"part-0000{i}.parquet" for i in range(4)]
    assert read_out(out2).equals(before)


def test_a_partial_temporary_file_from_a_crash_is_never_trusted(tiny_artifact, csv_catalog, tmp_path):
    out = tmp_path / "out"
    run(tiny_artifact, csv_catalog, out, shard_rows=4)
    expected = read_out(out)
    # What kill -9 in the middle of writing shard 1 leaves: half a temporary file, no final file, no entry.
    part = out / "part-00001.parquet"
    (out / ".part-00001.parquet.tmp-99999").write_bytes(part.read_bytes()[:300])
    part.unlink()
    (out / "_manifest" / "part-00001.json").unlink()
    assert pq.read_table(out).num_rows == expected.num_rows - 4  # readers ignore the temporary name
    result = run(tiny_artifact, csv_catalog, out, shard_rows=4)
    assert (result.skipped, result.processed) == (3, 1)
    assert not list(out.glob(".part-*"))
    assert read_out(out).equals(expected)


def test_bad_input_is_a_clear_error(tiny_artifact, cutouts, csv_catalog, tmp_path):
    no_path = write_catalog_csv(tmp_path / "no_path.csv", [{"id_str": "a", "ra": 1.0}])
    with pytest.raises(CatalogError, match="no column 'file_loc'"):
        run(tiny_artifact, no_path, tmp_path / "o1")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet")
    with pytest.raises(CatalogError, match="cannot read the catalogue"):
        run(tiny_artifact, garbage, tmp_path / "o2")
    with pytest.raises(CatalogError, match="no catalogue at"):
        run(tiny_artifact, tmp_path / "absent.csv", tmp_path / "o3")
    with pytest.raises(CatalogError, match="K/N"):
        run(tiny_artifact, csv_catalog, tmp_path / "o4", shard="3/2")
    with pytest.raises(CatalogError, match="local:N"):
        run(tiny_artifact, csv_catalog, tmp_path / "o4", dask="local:zero")
    clash = write_catalog_csv(tmp_path / "clash.csv", [{"id_str": "a", "file_loc": "x.jpg", "confidence": 1}])
    with pytest.raises(CatalogError, match="clash"):
        run(tiny_artifact, clash, tmp_path / "o5")
    assert not (tmp_path / "o5").exists(), "a refused catalogue left its normalised copy behind"
    (tmp_path / "o7").mkdir()  # a folder the user made: kept, and left as it was
    with pytest.raises(CatalogError, match="clash"):
        run(tiny_artifact, clash, tmp_path / "o7")
    assert not list((tmp_path / "o7").iterdir())
    # another catalogue into the same folder is refused, not mixed in
    run(tiny_artifact, csv_catalog, tmp_path / "o6", shard_rows=8)
    with pytest.raises(CatalogError, match="another run"):
        run(tiny_artifact, csv_catalog, tmp_path / "o6", shard_rows=4)
    assert run(tiny_artifact, csv_catalog, tmp_path / "o6", shard_rows=4, overwrite=True).processed == 4
    assert sorted(p.name for p in (tmp_path / "o6").glob("part-*")) == [f"part-0000{i}.parquet" for i in range(4)]
    # the same model file with its calibration refitted is another run too: no mixing of two calibrations
    refit = tmp_path / "refit"
    shutil.copytree(tiny_artifact, refit)
    run(refit, csv_catalog, tmp_path / "o9", shard_rows=4)
    add_to_artifact(refit, {"calibration": {"method": "temperature", "temperature": 0.7, "bias": None}})
    with pytest.raises(CatalogError, match="another run"):
        run(refit, csv_catalog, tmp_path / "o9", shard_rows=4)

    env = {**os.environ, "PYTHON": sys.executable}
    cli = subprocess.run(
        [
            str(PROJECT_ROOT / "predict.sh"),
            "--model",
            str(tiny_artifact),
            "--catalog",
            str(csv_catalog),
            "--out",
            str(tmp_path / "o7"),
            "--shard",
            "0/4",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert cli.returncode == 2 and "1 <= K <= N" in cli.stderr
    cli = subprocess.run(
        [
            str(PROJECT_ROOT / "predict.sh"),
            "--model",
            str(tiny_artifact),
            "--catalog",
            str(no_path),
            "--out",
            str(tmp_path / "o8"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert cli.returncode == 2 and "no column 'file_loc'" in cli.stderr and "Traceback" not in cli.stderr
    assert not (tmp_path / "o8").exists()  # a refused run leaves no folder behind, not even its _plan


def test_a_row_without_an_id_stops_the_run_in_a_csv_as_in_parquet(tiny_artifact, sample_files, tmp_path):
    rows = [{"id_str": i, "file_loc": str(sample_files[0])} for i in ("a", "", "c")]
    blank = write_catalog_csv(tmp_path / "blank.csv", rows)  # a blank CSV cell reads as "", not null
    with pytest.raises(CatalogError, match="data row 2 .* has no id_str"):
        run(tiny_artifact, blank, tmp_path / "o1")
    spaces = write_catalog_csv(tmp_path / "spaces.csv", [{"id_str": "  ", "file_loc": str(sample_files[0])}])
    with pytest.raises(CatalogError, match="data row 1 .* has no id_str"):
        run(tiny_artifact, spaces, tmp_path / "o2")
    null = tmp_path / "null.parquet"
    pq.write_table(pa.table({"id_str": ["a", None], "file_loc": [str(sample_files[0])] * 2}), null)
    with pytest.raises(CatalogError, match="data row 2 .* has no id_str"):
        run(tiny_artifact, null, tmp_path / "o3")
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))


def test_a_parquet_catalogue_with_floating_point_ids_is_refused(tiny_artifact, sample_files, tmp_path):
    # Two SDSS objids one apart: as float64 both become '1.237648720693756e+18'.
    ids = [1237648720693755918.0, 1237648720693755919.0]
    floats = tmp_path / "float-ids.parquet"
    pq.write_table(pa.table({"id_str": ids, "file_loc": [str(sample_files[0])] * 2}), floats)
    with pytest.raises(CatalogError, match="stores id_str as double: floating-point ids lose digits"):
        run(tiny_artifact, floats, tmp_path / "o1")
    assert not (tmp_path / "o1").exists()
    integers = tmp_path / "int-ids.parquet"  # the same ids as int64 pass, digit for digit
    pq.write_table(
        pa.table({"id_str": [1237648720693755918, 1237648720693755919], "file_loc": [str(sample_files[0])] * 2}),
        integers,
    )
    run(tiny_artifact, integers, tmp_path / "o2")
    out = read_out(tmp_path / "o2").column("id_str").to_pylist()
    assert sorted(out) == ["1237648720693755918", "1237648720693755919"]


def test_ids_written_from_floating_point_are_refused_in_a_csv_and_as_parquet_strings(
    tiny_artifact, sample_files, tmp_path
):
    # What pandas writes for a float64 objid column: the digits past the 17th are gone.
    rows = [{"id_str": i, "file_loc": str(sample_files[0])} for i in ("g1", "1.2376487206937559e+18")]
    exported = write_catalog_csv(tmp_path / "exported.csv", rows)
    with pytest.raises(CatalogError, match=r"data row 2 .* '1.2376487206937559e\+18', a number in exponent notation"):
        run(tiny_artifact, exported, tmp_path / "o1")
    strings = tmp_path / "strings.parquet"
    pq.write_table(pa.table({"id_str": ["1E+18", "g2"], "file_loc": [str(sample_files[0])] * 2}), strings)
    with pytest.raises(CatalogError, match="data row 1 .* a number in exponent notation"):
        run(tiny_artifact, strings, tmp_path / "o2")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    names = write_catalog_csv(
        tmp_path / "names.csv",
        [
            {"id_str": i, "file_loc": str(sample_files[0])}
            for i in ("NGC 1300", "1237648720693755918", "e5", "J1234+5678")
        ],
    )
    assert run(tiny_artifact, names, tmp_path / "o3").rows == 4  # names and integer ids pass


def predict_sh(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        [str(PROJECT_ROOT / "predict.sh"), *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_ids_of_any_scalar_type_become_strings_and_duplicates_pass_as_with_strings(
    tiny_artifact, sample_files, tmp_path
):
    """Integers, dates, decimals and categoricals are ids as Arrow writes them; a repeated id
    goes through as a repeated string id does (ids should be unique: docs/catalog.md)."""
    image = str(sample_files[0])
    columns = {
        "int64": pa.array([1237648720693755918, 7, 7]),
        "uint8": pa.array([1, 2, 2], pa.uint8()),
        "date": pa.array([datetime.date(2024, 5, 1), datetime.date(2024, 5, 2), datetime.date(2024, 5, 2)]),
        "decimal": pa.array([Decimal("12"), Decimal("13"), Decimal("13")], pa.decimal128(20, 0)),
        "categorical": pa.array(["NGC 1300", "M31", "M31"]).dictionary_encode(),
        "string": pa.array(["a", "b", "b"]),
    }
    expected = {
        "int64": ["1237648720693755918", "7", "7"],
        "uint8": ["1", "2", "2"],
        "date": ["2024-05-01", "2024-05-02", "2024-05-02"],
        "decimal": ["12", "13", "13"],
        "categorical": ["NGC 1300", "M31", "M31"],
        "string": ["a", "b", "b"],
    }
    for name, ids in columns.items():
        catalog = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"id_str": ids, "file_loc": [image] * 3}), catalog)
        result = run(tiny_artifact, catalog, tmp_path / f"out-{name}")
        out = pq.read_table(tmp_path / f"out-{name}")
        assert result.rows == 3 and out.schema.field("id_str").type == pa.string(), name
        assert out.column("id_str").to_pylist() == expected[name], name


def test_ids_that_are_not_one_value_per_row_are_refused_with_a_message(tiny_artifact, sample_files, tmp_path):
    """A list or struct id ended in pyarrow's ArrowNotImplementedError traceback; a boolean id
    gave five galaxies two ids between them."""
    image = str(sample_files[0])
    refused = {  # the column, and what the message says of it (a regex)
        "list": (
            pa.array([[1], [2, 3], [4], [5], [6]]),
            r"stores id_str as list<.*int64>: that is several values in a row",
        ),
        "struct": (
            pa.array([{"n": i} for i in range(5)]),
            r"stores id_str as struct<n: int64>: that is several values",
        ),
        "bool": (pa.array([True, False, True, True, False]), r"stores id_str as bool: true and false are two ids"),
        "categorical-float": (pa.array([1.5, 2.5, 1.5, 2.5, 3.5]).dictionary_encode(), r"floating-point ids lose"),
    }
    for name, (ids, message) in refused.items():
        catalog = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"id_str": ids, "file_loc": [image] * 5}), catalog)
        with pytest.raises(CatalogError, match=message):
            run(tiny_artifact, catalog, tmp_path / f"out-{name}")
        assert not (tmp_path / f"out-{name}").exists(), name
    paths = tmp_path / "list-paths.parquet"
    pq.write_table(pa.table({"id_str": ["a", "b"], "file_loc": [[image], [image, image]]}), paths)
    with pytest.raises(CatalogError, match=r"stores file_loc as list<.*string>: that is several values in a row"):
        run(tiny_artifact, paths, tmp_path / "out-paths")

    cli = predict_sh(
        "--model", str(tiny_artifact), "--catalog", str(tmp_path / "list.parquet"), "--out", str(tmp_path / "o")
    )
    assert cli.returncode == 2, cli.stderr[-2000:]
    assert "Traceback" not in cli.stderr and "ArrowNotImplementedError" not in cli.stderr
    message = [line for line in cli.stderr.splitlines() if line.startswith("predict.sh:")]
    assert len(message) == 1 and "stores id_str as list<element: int64>: that is several values" in message[0]


def test_a_stray_quote_in_a_plain_field_and_a_quoted_line_break_later_are_read_as_pyarrow_reads_them(
    tiny_artifact, sample_files, tmp_path
):
    """RFC 4180-lenient CSV, as pyarrow (and Excel, and pandas) read it: a quote opens a quoted
    field only at the start of a field, so images/g"1.jpg is a plain path. The block reader
    counted quotes, cut inside the quoted note further down, and the run stopped with "CSV parse
    error: Row #2: Expected 4 columns, got 1" and a hint about column types. The catalogue is
    larger than the first block (1 MiB), so the file is read in several."""
    folder = tmp_path / "survey"
    (folder / "images").mkdir(parents=True)
    shutil.copy(sample_files[0], folder / "images" / 'g"1.jpg')
    lines = ["id_str,file_loc,ra,note", 'a1,images/g"1.jpg,150.1,plain']
    lines += [
        f"b{i:05d},images/missing-{i}.jpg,{i / 100:.2f},a note that pads the row out a little" for i in range(20_000)
    ]
    lines += ['c1,images/missing-c.jpg,151.0,"seen twice,', 'see the ""log"""', "d1,images/missing-d.jpg,151.5,last"]
    catalog = folder / "catalog.csv"
    catalog.write_text("\n".join(lines) + "\n")
    assert catalog.stat().st_size > 1024 * 1024

    result = run(tiny_artifact, catalog, tmp_path / "out", shard_rows=8192)

    whole = pcsv.read_csv(catalog, parse_options=pcsv.ParseOptions(newlines_in_values=True))
    assert result.rows == whole.num_rows == 20_003
    rows = {r["id_str"]: r for r in read_out(tmp_path / "out").to_pylist()}
    assert rows["a1"]["error"] is None and rows["a1"]["predicted_class"]  # the real cutout behind the quote
    assert rows["c1"]["note"] == 'seen twice,\nsee the "log"' and rows["d1"]["note"] == "last"


def test_a_malformed_csv_is_a_one_line_message_about_quoting(tiny_artifact, tmp_path):
    """A row short of a column, far down the file: the parse error, where, and what to check,
    on one line, not a hint about column types."""
    catalog = tmp_path / "catalog.csv"
    lines = ["id_str,file_loc,note"] + [f"g{i},missing-{i}.jpg,fine" for i in range(60_000)]
    catalog.write_text("\n".join([*lines, 'bad,"missing.jpg', '"', "g,x.jpg,y"]) + "\n")
    with pytest.raises(CatalogError) as caught:
        run(tiny_artifact, catalog, tmp_path / "out")
    message = str(caught.value)
    assert "at data row" in message and "CSV parse error: " in message and "Expected 3 columns, got 2" in message
    assert "\n" not in message and 'missing.jpg\\n"' in message  # the row as pyarrow quotes it, escaped
    assert "must be quoted" in message and "type" not in message
    assert not (tmp_path / "out").exists()


def test_a_resumed_run_planned_by_older_code_is_checked_again(tiny_artifact, sample_files, tmp_path):
    # A float-id catalogue planned before the id checks existed: its _plan/ copy, stamped by the
    # older format, is not trusted, so the rerun reads the catalogue again and refuses it.
    from galaxylib.catalog.sources import open_source

    floats = tmp_path / "float-ids.parquet"
    pq.write_table(pa.table({"id_str": [1237648720693755918.0, 2.0], "file_loc": [str(sample_files[0])] * 2}), floats)
    out = tmp_path / "out"
    copy = out / "_plan" / f"input-{open_source(floats).fingerprint()[:16]}-5.parquet"
    copy.parent.mkdir(parents=True)
    pq.write_table(pa.table({"id_str": ["1.237648720693756e+18", "2"], "file_loc": [str(sample_files[0])] * 2}), copy)
    copy.with_name(copy.name + ".json").write_text(json.dumps({"format": 1, "shard_rows": 5, "rows": 2}))
    with pytest.raises(CatalogError, match="stores id_str as double"):
        run(tiny_artifact, floats, out, shard_rows=5)


def test_an_unwritable_out_folder_is_a_message_not_a_traceback(tiny_artifact, csv_catalog, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    env = {**os.environ, "PYTHON": sys.executable}
    cli = subprocess.run(
        [
            str(PROJECT_ROOT / "predict.sh"),
            "--model",
            str(tiny_artifact),
            "--catalog",
            str(csv_catalog),
            "--out",
            str(a_file / "results"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert cli.returncode == 2, cli.stderr[-2000:]
    assert f"cannot write to --out {a_file / 'results'}" in cli.stderr and "Traceback" not in cli.stderr


def test_ctrl_c_stops_with_a_message_and_the_same_command_resumes(tiny_artifact, sample_files, tmp_path):
    rows = [{"id_str": f"g{i:04d}", "file_loc": str(sample_files[i % len(sample_files)])} for i in range(600)]
    catalog = write_catalog_csv(tmp_path / "catalog.csv", rows)
    out = tmp_path / "out"
    command = [
        str(PROJECT_ROOT / "predict.sh"),
        "--model",
        str(tiny_artifact),
        "--catalog",
        str(catalog),
        "--out",
        str(out),
        "--shard-rows",
        "3",
        "--batch-size",
        "2",
        "--processes",
        "2",
        "--no-progress",
    ]
    env = {**os.environ, "PYTHON": sys.executable}
    # its own process group, as a terminal's foreground job: Ctrl-C signals the run and its workers
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=default_ctrl_c,
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and len(list(out.glob("_manifest/*.json"))) < 5:
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before Ctrl-C"
    workers = worker_pids(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "run the same command again" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert not wait_gone(workers), "worker processes outlived the interrupted run"
    done = len(list(out.glob("_manifest/*.json")))
    assert 5 <= done < 200 and not list(out.glob(".part-*"))  # nothing half-written left behind
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and f"{done} already finished, {200 - done} done now" in again.stdout
    assert "trained on synthetic galaxies" in again.stderr  # the tiny artifact is saved as synthetic
    ids = read_out(out).column("id_str").to_pylist()
    assert sorted(ids) == sorted(r["id_str"] for r in rows)


@pytest.mark.slow
def test_a_second_ctrl_c_while_stopping_still_ends_the_run_and_its_workers(tiny_artifact, sample_files, tmp_path):
    """An impatient user presses Ctrl-C twice. The second one lands while the run stops its worker
    processes; the run still exits 130 with its message and no traceback, and no worker is left.
    (An orderly pool shutdown interrupted there left the workers waiting for work, and the run
    waiting for them, for good.)"""
    rows = [{"id_str": f"g{i:04d}", "file_loc": str(sample_files[i % len(sample_files)])} for i in range(3000)]
    catalog = write_catalog_csv(tmp_path / "catalog.csv", rows)
    env = {**os.environ, "PYTHON": sys.executable}
    for attempt, gap in enumerate((0.002, 0.01, 0.03)):
        out = tmp_path / f"out-{attempt}"
        command = [
            str(PROJECT_ROOT / "predict.sh"),
            "--model",
            str(tiny_artifact),
            "--catalog",
            str(catalog),
            "--out",
            str(out),
            "--shard-rows",
            "500",
            "--batch-size",
            "64",
            "--processes",
            "2",
            "--no-progress",
        ]
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=default_ctrl_c,
        )
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and not list(out.glob("_manifest/*.json")):
            time.sleep(0.005)
        assert proc.poll() is None, "the run finished before Ctrl-C"
        workers = worker_pids(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(gap)
        os.killpg(proc.pid, signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"a second Ctrl-C {gap * 1e3:g} ms after the first left the run hanging")
        assert proc.returncode == 130, stderr[-2000:]
        assert "interrupted" in stderr and "Traceback" not in stderr, stderr[-2000:]
        assert not wait_gone(workers), "worker processes outlived the interrupted run"


def test_a_dask_scheduler_that_does_not_answer_is_a_clear_error(tiny_artifact, csv_catalog, tmp_path):
    import dask

    with socket.socket() as s:  # a port with nothing listening on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        with pytest.raises(CatalogError, match=f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}"):
            run(tiny_artifact, csv_catalog, tmp_path / "o", dask=f"tcp://127.0.0.1:{port}")


def test_an_artifact_with_an_ood_check_adds_in_distribution_and_ood_score(tiny_artifact, csv_catalog, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_artifact, model)
    add_trust_check(model, tmp_path / "trust", methods=("max_softmax",))
    predictor = Predictor(model)
    assert predictor.has_ood
    out = tmp_path / "out"
    assert run(model, csv_catalog, out).ok
    table = read_out(out)
    assert table.column_names[-3:] == ["in_distribution", "ood_score", "error"]
    first = table.to_pylist()[0]  # DESI-000: the first cutout
    expected = predictor.predict(
        sorted(p for p in (csv_catalog.parent / "images").glob("*.jpg") if p.name != "broken.jpg")[0]
    )
    assert isinstance(first["in_distribution"], bool) and isinstance(first["ood_score"], float)
    assert (
        first["ood_score"] == pytest.approx(expected.ood_score) and first["in_distribution"] == expected.in_distribution
    )
    broken = next(r for r in table.to_pylist() if r["id_str"] == "DESI-broken")
    assert broken["in_distribution"] is None and broken["ood_score"] is None


def test_to_database_loads_each_shard_once_even_when_resumed(tiny_artifact, csv_catalog, tmp_path, database_url):
    from galaxylib.store.database import PredictionStore
    from galaxylib.store.records import METADATA_TYPES

    out = tmp_path / "out"
    result = run(tiny_artifact, csv_catalog, out, shard_rows=4, to_database=True, database_url=database_url)
    assert result.ok and row_count(database_url) == 12  # the two unreadable images get no row
    store = PredictionStore(database_url, upgrade=False)
    try:
        rows, _ = store.list(limit=100)
        assert {r.filename for r in rows} == {f"DESI-{i:03d}" for i in range(12)}
        for r in rows:
            assert r.meta["source"] == "catalog" and set(r.meta) == set(METADATA_TYPES)
        parquet = {r["id_str"]: r for r in read_out(out).to_pylist()}
        assert all(
            r.predicted_class == parquet[r.filename]["predicted_class"]
            and r.confidence == pytest.approx(parquet[r.filename]["confidence"])
            for r in rows
        )
        # Another entry point's row with the same name is not touched by a reload.
        store.add_many(
            [
                {
                    "filename": "DESI-000",
                    "predicted_class": "Merging",
                    "confidence": 0.5,
                    "metadata": {"source": "api", "model_version": rows[0].meta["model_version"]},
                }
            ]
        )
    finally:
        store.close()
    # A crash after the database commit and before the manifest entry: the rerun loads the shard again.
    for entry in (out / "_manifest").glob("*.json"):
        entry.unlink()
    again = run(tiny_artifact, csv_catalog, out, shard_rows=4, to_database=True, database_url=database_url)
    assert again.processed == 4 and row_count(database_url) == 13
    # Finished for this database: nothing to do; and no duplicates from a plain rerun.
    assert (
        run(tiny_artifact, csv_catalog, out, shard_rows=4, to_database=True, database_url=database_url).processed == 0
    )
    assert row_count(database_url) == 13
    # A run that wrote only Parquet first, then --to-database: only the database part is caught up.
    out2 = tmp_path / "out2"
    run(tiny_artifact, csv_catalog, out2, shard_rows=4)
    assert (
        run(tiny_artifact, csv_catalog, out2, shard_rows=4, to_database=True, database_url=database_url).processed == 4
    )
    assert row_count(database_url) == 13


CRASH_SCRIPT = """
import os, signal, sys
from pathlib import Path

import pyarrow.parquet as pq

import galaxylib.catalog.shard_runner as shard_runner
from galaxylib.catalog.run import predict_catalog
from galaxylib.catalog.shards import Plan

# Fault injection from the test alone: "POINT:SHARD" in argv[5] kills this process there, so the
# worst instants are hit every time while the production code writes its files as it always does.
point, _, shard = (sys.argv[5] if len(sys.argv) > 5 else "").partition(":")
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if point == "mid-write":  # half of the shard's rows in its temporary file, then death
    def write_half(table, where, **kwargs):
        if Path(where).name.startswith(f".part-{int(shard):05d}.parquet.tmp"):
            writer = pq.ParquetWriter(where, table.schema)
            writer.write_table(table.slice(0, table.num_rows // 2))
            die()
        return write_table(table, where, **kwargs)
    write_table, pq.write_table = pq.write_table, write_half
elif point == "after-rename":  # the file in place, not yet loaded or recorded
    def write_then_die(table, path, metadata):
        size = write_parquet(table, path, metadata)
        if path.name == f"part-{int(shard):05d}.parquet":
            die()
        return size
    write_parquet, shard_runner.write_parquet = shard_runner.write_parquet, write_then_die
elif point == "after-database":  # loaded into the database, not recorded in the manifest
    def die_before_entry(self, index, entry):
        if index == int(shard):
            die()
        return write_entry(self, index, entry)
    write_entry, Plan.write_entry = Plan.write_entry, die_before_entry
predict_catalog(sys.argv[1], sys.argv[2], sys.argv[3], shard_rows=3, batch_size=2, show_progress=False,
                to_database=True, database_url=sys.argv[4], threads=2, processes=2)
"""


def worker_pids(pid: int) -> set[int]:
    import psutil

    try:
        return {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def wait_gone(pids: set[int], seconds: float = 10.0) -> set[int]:
    """The pids still alive after ``seconds`` (zombies count as gone)."""
    import psutil

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:  # gone between the listing and the look
            return False

    deadline = time.monotonic() + seconds
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if running(p)}
        time.sleep(0.05)
    return alive


@pytest.mark.slow
def test_sigkill_at_random_moments_then_a_rerun_gives_every_row_once(tiny_artifact, sample_files, tmp_path):
    """The crash test on a small catalogue: kill -9 three times, rerun, compare with a run never interrupted."""
    rows = [
        {"id_str": f"g{i:04d}", "file_loc": str(sample_files[i % len(sample_files)]), "ra": float(i)}
        for i in range(600)
    ]
    catalog = write_catalog_csv(tmp_path / "catalog.csv", rows)
    reference = tmp_path / "reference"
    run(tiny_artifact, catalog, reference, shard_rows=3, batch_size=2)
    out = tmp_path / "out"
    manifest = out / "_manifest"
    db = f"sqlite:///{tmp_path / 'predictions.db'}"
    command = [sys.executable, "-c", CRASH_SCRIPT, str(tiny_artifact), str(catalog), str(out), db]
    # First the worst instants, every time: half a file written, the file renamed but not recorded,
    # the database loaded but the manifest not written.
    for point in ("mid-write:2", "after-rename:5", "after-database:8"):
        # (a timeout, not a hang, if a worker outlived its run and kept the pipes open)
        killed = subprocess.run([*command, point], capture_output=True, timeout=180)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-2000:])
        shard = int(point.split(":")[1])
        assert not (manifest / f"part-{shard:05d}.json").exists(), point
        if point.startswith("mid-write"):
            assert (
                list(out.glob(f".part-{shard:05d}.parquet.tmp-*")) and not (out / f"part-{shard:05d}.parquet").exists()
            )
        else:
            assert (out / f"part-{shard:05d}.parquet").is_file()
    # Then kill -9 at random moments.
    rng = random.Random(0)
    for _ in range(3):
        done_before = len(list(manifest.glob("*.json")))
        target = done_before + rng.randint(1, 12)  # a few more shards, then a random instant
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if len(list(manifest.glob("*.json"))) >= target:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.03))  # anywhere: mid-decode, mid-write, between rename and manifest
        assert proc.poll() is None, "the run finished before it could be killed"
        workers = worker_pids(proc.pid)
        assert len(workers) >= 2, workers  # the run's own worker processes (spawn adds a resource tracker)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # its workers die with it: none goes on to finish a shard the rerun is redoing
        assert not wait_gone(workers), "worker processes outlived the killed run"
    assert len(list(manifest.glob("*.json"))) < 200
    final = run(tiny_artifact, catalog, out, shard_rows=3, batch_size=2, to_database=True, database_url=db)
    assert final.ok and final.skipped + final.processed == 200 and final.processed > 0
    assert row_count(db) == 600  # one database row per image too
    table = read_out(out)
    ids = table.column("id_str").to_pylist()
    assert len(ids) == 600 and len(set(ids)) == 600
    assert table.equals(read_out(reference))


def test_worker_processes_write_exactly_what_one_process_writes(tiny_artifact, csv_catalog, tmp_path):
    """The default on a multi-core machine for a real catalogue: one single-thread interpreter per core."""
    one = run(tiny_artifact, csv_catalog, tmp_path / "one", shard_rows=4, processes=1)
    two = run(tiny_artifact, csv_catalog, tmp_path / "two", shard_rows=4, threads=2, processes=2, batch_size=3)
    assert (one.processes, two.processes) == (1, 2)
    assert one.worker_peak_rss_mb is None and 50 < two.worker_peak_rss_mb < 600
    assert (two.rows, two.errors) == (14, 2)
    assert read_out(tmp_path / "two").equals(read_out(tmp_path / "one"))
    with pytest.raises(CatalogError, match="--processes must be at least 1"):
        run(tiny_artifact, csv_catalog, tmp_path / "three", processes=0)


UNGUARDED_SCRIPT = """
import sys
from galaxylib.artifact import add_to_artifact
from galaxylib.catalog.run import predict_catalog
result = predict_catalog(sys.argv[1], sys.argv[2], sys.argv[3], shard_rows=4, threads=2, processes=2,
                         show_progress=False)
print("processes", result.processes, "rows", result.rows)
"""


def test_worker_processes_work_from_a_plain_script_without_a_main_guard(tiny_artifact, csv_catalog, tmp_path):
    """Spawned workers would re-run such a script; they are started without importing it."""
    script = tmp_path / "classify_my_survey.py"
    script.write_text(UNGUARDED_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tiny_artifact), str(csv_catalog), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("processes 2 rows 14") == 1  # printed once: the workers did not run the script
    assert read_out(tmp_path / "out").num_rows == 14


@pytest.mark.slow
def test_a_real_local_cluster_of_two_worker_processes(tiny_artifact, csv_catalog, tmp_path):
    reference = tmp_path / "reference"
    run(tiny_artifact, csv_catalog, reference, shard_rows=4)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    cli = subprocess.run(
        [
            str(PROJECT_ROOT / "predict.sh"),
            "--model",
            str(tiny_artifact),
            "--catalog",
            str(csv_catalog),
            "--out",
            str(out),
            "--shard-rows",
            "4",
            "--dask",
            "local:2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "4 done now: 14 row(s), 2 unreadable" in cli.stdout
    hosts = {json.loads(p.read_text())["host"] for p in (out / "_manifest").glob("*.json")}
    assert hosts  # written by the workers
    assert read_out(out).equals(read_out(reference))


@pytest.mark.slow
def test_the_catalogue_notebook_runs_the_models_own_run_over_a_users_catalogue(cropped_artifact, samples_dir, tmp_path):
    """notebooks/05 with ``catalog`` set classifies that catalogue, not its demo: one row per
    catalogue row (the missing file an error row), the user's columns passed through, and a plain
    note instead of the sky map when there are no ra and dec columns."""
    import nbformat
    import papermill as pm

    from galaxylib.config import NOTEBOOKS_DIR

    with open(samples_dir / "labels.csv", newline="") as fh:
        labels = list(csv.DictReader(fh))
    rows = [
        {
            "id_str": Path(r["filename"]).stem,
            "file_loc": str(samples_dir / r["filename"]),
            "true_class": r["class_name"],
            "survey": "DECaLS",
        }
        for r in labels
    ]
    rows.append({"id_str": "gone", "file_loc": str(tmp_path / "gone.jpg"), "true_class": "", "survey": "DECaLS"})
    catalog = write_catalog_csv(tmp_path / "my_survey.csv", rows)
    reports = tmp_path / "reports"
    executed = tmp_path / "05_executed.ipynb"
    pm.execute_notebook(
        NOTEBOOKS_DIR / "05_catalog_inference.ipynb",
        executed,
        cwd=str(NOTEBOOKS_DIR),
        progress_bar=False,
        kernel_name="python3",
        parameters={
            "run_name": cropped_artifact.name,
            "models_root": str(cropped_artifact.parent),
            "reports_root": str(reports),
            "data_root": str(tmp_path / "data"),
            "config_path": str(PROJECT_ROOT / "configs" / "tiny.yaml"),
            "catalog": str(catalog),
            "show_progress": False,
        },
    )

    table = pq.read_table(reports / cropped_artifact.name / "catalog-my_survey").sort_by("id_str")
    assert sorted(table.column("id_str").to_pylist()) == sorted(r["id_str"] for r in rows)
    by_id = {r["id_str"]: r for r in table.to_pylist()}
    assert by_id["gone"]["error"] and by_id["gone"]["predicted_class"] is None
    assert all(by_id[r["id_str"]]["predicted_class"] and not by_id[r["id_str"]]["error"] for r in rows[:-1])
    assert set(table.column("survey").to_pylist()) == {"DECaLS"}
    assert not (tmp_path / "data").exists(), "the demo catalogue was written although a catalogue was given"
    printed = "".join(
        out.get("text", "") for cell in nbformat.read(executed, as_version=4).cells for out in cell.get("outputs", [])
    )
    assert "no ra and dec columns in this catalogue: no sky map" in printed
    assert not list((reports / cropped_artifact.name / "figures").glob("*sky_map*"))
    assert "agreement with the catalogue's true_class: " in printed and "over 40 galaxies" in printed
    assert "the demo mixes" not in printed
    assert "Catalogue checks passed." in printed
