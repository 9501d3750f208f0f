"""Tables from files: every format through the REST API, LFS content, per-file errors, grouping,
dataset-card configs, empty repositories and revisions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from opensci.settings import Settings
from tests.api_helpers import API, committed, create_repo, error_code
from tests.conftest import Account
from tests.data import table_files as tf

SAMPLE = pa.table({"a": [1, 2, 3], "s": ["x", "y", None], "f": [1.5, float("nan"), 2.0]})


def new_dataset(client: TestClient, who: Account, name: str = "ds", **kw: Any) -> str:
    create_repo(client, who, name, kind="dataset", **kw)
    return f"{who.name}/{name}"


def tables(
    client: TestClient, full: str, who: Account | None = None, rev: str | None = None
) -> dict[str, Any]:
    params = {"rev": rev} if rev else {}
    r = client.get(f"{API}/datasets/{full}/tables", params=params, headers=who.headers if who else {})
    assert r.status_code == 200, r.text
    return r.json()


def by_name(listing: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in listing["tables"]}


def rows(
    client: TestClient, full: str, table: str, who: Account | None = None, **params: Any
) -> dict[str, Any]:
    r = client.get(
        f"{API}/datasets/{full}/tables/{table}/rows", params=params, headers=who.headers if who else {}
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_every_format_becomes_a_table(client: TestClient, alice: Account, tmp_path: Path) -> None:
    full = new_dataset(client, alice)
    files = {
        "README.md": "# a dataset\n",
        ".hidden/x.csv": "a\n1\n",
        "notes.txt": "not a table",
        "meta.json": '{"not": "json lines",\n "x": 1}',  # a JSON document, not JSON Lines: not a table
        "other.xml": "<root/>",
        "t_parquet.parquet": tf.parquet_bytes(SAMPLE),
        "t_csv.csv": tf.csv_bytes(SAMPLE),
        "t_tsv.tsv": tf.csv_bytes(SAMPLE, "\t"),
        "t_jsonl.jsonl": tf.jsonl_bytes(SAMPLE.to_pylist()),
        "t_ndjson.ndjson": tf.jsonl_bytes(SAMPLE.to_pylist()),
        "t_json.json": tf.jsonl_bytes(SAMPLE.to_pylist()),
        "t_arrow.arrow": tf.arrow_file_bytes(SAMPLE),
        "t_stream.arrow": tf.arrow_stream_bytes(SAMPLE),
        "t_feather.feather": tf.feather_bytes(SAMPLE),
        "fits/bin.fits": tf.fits_bintable_bytes(tmp_path),
        "fits/ascii.fits": tf.fits_ascii_bytes(tmp_path),
        "vo/t.vot": tf.votable_bytes(tmp_path),
        "vo/t_xml.xml": tf.votable_bytes(tmp_path),
        "h5/compound.h5": tf.hdf5_compound_bytes(tmp_path),
        "h5/cols.hdf5": tf.hdf5_columns_bytes(tmp_path),
    }
    committed(client, alice, full, files)
    listing = tables(client, full)
    assert listing["errors"] == []
    t = by_name(listing)
    simple = (
        "t_parquet",
        "t_csv",
        "t_tsv",
        "t_jsonl",
        "t_ndjson",
        "t_json",
        "t_arrow",
        "t_stream",
        "t_feather",
    )
    assert set(t) == {*simple, "bin", "ascii", "t", "t_xml", "compound", "cols"}
    for name in simple:
        assert t[name]["num_rows"] == 3
        assert [c["name"] for c in t[name]["columns"]] == ["a", "s", "f"]
        got = rows(client, full, name)["rows"]
        assert [r["a"] for r in got] == [1, 2, 3]
        assert [r["s"] for r in got] == ["x", "y", None]
        assert got[0]["f"] == 1.5 and got[1]["f"] is None  # NaN (or an empty CSV field) is null in JSON
    assert t["t_csv"]["sources"] == ["t_csv.csv"]
    assert dict((c["name"], c["type"]) for c in t["t_parquet"]["columns"]) == {
        "a": "int64",
        "s": "string",
        "f": "double",
    }

    fits_rows = rows(client, full, "bin")["rows"]
    assert [r["flux"] for r in fits_rows] == [10.0, 10.5, 11.0, 11.5, 12.0]  # TSCAL/TZERO applied
    assert [r["count"] for r in fits_rows] == [0, 1, 40000, 65535, 7]  # unsigned via TZERO=32768
    assert [r["quality"] for r in fits_rows] == [1, None, 3, None, 5]  # TNULL
    assert [r["name"] for r in fits_rows] == ["alpha", "beta", "gamma", "delta", "eps"]
    assert fits_rows[1]["vec"] == [3.0, 4.0, 5.0]
    assert [r["ok"] for r in fits_rows] == [True, False, True, True, False]
    assert "cube" not in fits_rows[0]
    assert any("cube" in n and "left out" in n for n in t["bin"]["notes"])
    assert rows(client, full, "ascii")["rows"] == [
        {"ra": 10.5, "n": 1, "label": "a"},
        {"ra": 20.25, "n": 2, "label": "bb"},
        {"ra": 30.125, "n": 3, "label": "ccc"},
    ]
    for name in ("t", "t_xml"):
        vo = rows(client, full, name)["rows"]
        assert [r["mag"] for r in vo] == [15, None, 17]
        assert [r["name"] for r in vo] == ["x", "y", "z"]
    assert rows(client, full, "compound")["rows"][1] == {"x": 1.5, "n": 2, "tag": "cd"}
    cols = rows(client, full, "cols")["rows"]
    assert len(cols) == 6 and cols[5] == {"a": 5, "b": 1.0, "name": "s5", "pos": [10.0, 11.0]}


def test_lfs_files_are_read_from_the_blob_store(
    client: TestClient, app: Any, alice: Account, tmp_path: Path
) -> None:
    app.state.settings.lfs_threshold_bytes = 1024
    full = new_dataset(client, alice)
    n = 20_000
    big = pa.table({"i": np.arange(n), "x": np.linspace(0, 1, n)})
    committed(
        client,
        alice,
        full,
        {
            "big.parquet": tf.parquet_bytes(big, row_group_size=3000),
            "big_csv.csv": tf.csv_bytes(big),
            "big_fits.fits": _big_fits(tmp_path, n),
        },
    )
    r = client.get(f"{API}/repos/{full}/raw/main/big.parquet", headers={"Range": "bytes=0-3"})
    assert r.content == b"PAR1"
    g = client.get(f"{API}/repos/{full}/tree/main", headers=alice.headers).json()
    assert all(e["lfs"] for e in g["entries"] if e["name"] != ".gitattributes"), g  # all three in LFS
    t = by_name(tables(client, full))
    assert {k: v["num_rows"] for k, v in t.items()} == {"big": n, "big_csv": n, "big_fits": n}
    for name in t:
        got = rows(client, full, name, offset=12_345, limit=3)["rows"]
        assert [r["i"] for r in got] == [12_345, 12_346, 12_347]


def _big_fits(tmp: Path, n: int) -> bytes:
    from astropy.io import fits

    cols = [
        fits.Column(name="i", format="K", array=np.arange(n)),
        fits.Column(name="x", format="D", array=np.linspace(0, 1, n)),
    ]
    path = tmp / "big_fits.fits"
    fits.BinTableHDU.from_columns(cols).writeto(path)
    return path.read_bytes()


def test_unreadable_files_are_reported_and_the_rest_works(
    client: TestClient, app: Any, alice: Account, tmp_path: Path
) -> None:
    full = new_dataset(client, alice)
    good = tf.parquet_bytes(SAMPLE)
    committed(
        client,
        alice,
        full,
        {
            "good.parquet": good,
            "corrupt.parquet": good[:-60] + b"\xff" * 52 + good[-8:],  # a damaged footer
            "truncated.parquet": good[: len(good) // 2],
            "garbage.csv": b"a,b\n1,2\n3,4,5,6\n\x00\xff,zz\n",
            "image.fits": tf.fits_image_only_bytes(tmp_path),
            "broken.h5": b"\x89HDF\r\n\x1a\n" + b"\x00" * 100,
            "bad.jsonl": b'{"a": 1}\n{"a": \n',
            "bad.vot": b"<?xml version='1.0'?><VOTABLE><RESOURCE><TABLE><FIELD name='x'",
            "odd.vot": b"<VOTABLE><RESOURCE><TABLE><FIELD name='a' datatype='bogus'/>"
            b"</TABLE></RESOURCE></VOTABLE>",
        },
    )
    listing = tables(client, full)
    assert [t["name"] for t in listing["tables"]] == ["good"]
    errors = {e["path"]: e["reason"] for e in listing["errors"]}
    assert set(errors) == {
        "corrupt.parquet",
        "truncated.parquet",
        "garbage.csv",
        "image.fits",
        "broken.h5",
        "bad.jsonl",
        "bad.vot",
        "odd.vot",
    }, errors
    assert "Parquet" in errors["truncated.parquet"]
    assert "no table HDU" in errors["image.fits"]
    assert "CSV" in errors["garbage.csv"]
    assert all(reason for reason in errors.values())
    for path, reason in errors.items():  # sentences people can read: no raw bytes, no server paths
        assert reason.isprintable() and "b'" not in reason and "\\x" not in reason, (path, reason)
        assert "/tmp" not in reason and "derived" not in reason, (path, reason)
    assert errors["corrupt.parquet"].startswith("not a valid Parquet file: ")
    assert "line 1" in errors["bad.vot"] and "datatype" in errors["odd.vot"]
    assert rows(client, full, "good")["num_rows"] == 3


def test_reasons_are_sentences_without_raw_bytes_or_paths() -> None:
    from opensci.data.reasons import readable

    assert readable("Couldn't deserialize thrift: don't know what type: \x0f") == (
        "its metadata (the footer) is damaged"
    )
    assert readable("invalid literal b'\\x00\\xffab' in row 3") == "invalid literal '??ab' in row 3"
    assert readable("/srv/opensci/derived/abc/tmp/src-x1:3:14: E06: Unknown datatype") == (
        "line 3, column 14: Unknown datatype"
    )
    assert readable("CSV parse error: Expected 2 columns, got 4: 3,4,\x00\ufffd") == (
        "a row has 4 fields where the header has 2: 3,4,??"
    )


def test_shards_and_split_folders_group_into_one_table(client: TestClient, alice: Account) -> None:
    full = new_dataset(client, alice)
    part = [pa.table({"k": list(range(i * 10, i * 10 + 10)), "v": [float(i)] * 10}) for i in range(4)]
    other = pa.table({"z": ["a", "b"]})
    committed(
        client,
        alice,
        full,
        {
            "data/train-00000-of-00002.parquet": tf.parquet_bytes(part[0]),
            "data/train-00001-of-00002.parquet": tf.parquet_bytes(part[1]),
            "data/test-00000-of-00001.parquet": tf.parquet_bytes(part[2]),
            "validation/a.csv": tf.csv_bytes(part[2]),
            "validation/b.csv": tf.csv_bytes(part[3]),
            "shards/0.jsonl": tf.jsonl_bytes(part[0].to_pylist()),
            "shards/1.jsonl": tf.jsonl_bytes(part[1].to_pylist()),
            "mixed/obs-1.csv": tf.csv_bytes(part[0]),
            "mixed/obs-2.csv": tf.csv_bytes(other),
            "a/table.csv": tf.csv_bytes(other),
            "b/table.csv": tf.csv_bytes(other),
        },
    )
    t = by_name(tables(client, full))
    assert set(t) == {"train", "test", "validation", "shards", "obs-1", "obs-2", "a_table", "b_table"}
    assert t["train"]["sources"] == ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    assert t["train"]["num_rows"] == 20
    assert [r["k"] for r in rows(client, full, "train", limit=1000)["rows"]] == list(range(20))
    assert [r["k"] for r in rows(client, full, "validation")["rows"]] == list(range(20, 40))
    assert [r["k"] for r in rows(client, full, "shards")["rows"]] == list(range(20))
    assert any("differ in schema" in n for n in t["obs-1"]["notes"])


def test_dataset_card_configs_name_the_tables(client: TestClient, alice: Account) -> None:
    full = new_dataset(client, alice)
    card = """---
license: cc-by-4.0
configs:
- config_name: default
  data_files:
  - split: train
    path: "raw/tr_*.csv"
  - split: test
    path: raw/te.csv
- config_name: stars
  data_files: "cats/**/*.parquet"
- config_name: galaxies
  data_files:
  - split: bright
    path: [gal/b1.jsonl, gal/b2.jsonl]
  - split: faint
    path: gal/f.jsonl
---
# Sky things
"""
    t1 = pa.table({"x": [1, 2]})
    committed(
        client,
        alice,
        full,
        {
            "README.md": card,
            "raw/tr_1.csv": tf.csv_bytes(t1),
            "raw/tr_2.csv": tf.csv_bytes(t1),
            "raw/te.csv": tf.csv_bytes(t1),
            "cats/north/a.parquet": tf.parquet_bytes(t1),
            "cats/south/deep/b.parquet": tf.parquet_bytes(t1),
            "gal/b1.jsonl": tf.jsonl_bytes(t1.to_pylist()),
            "gal/b2.jsonl": tf.jsonl_bytes(t1.to_pylist()),
            "gal/f.jsonl": tf.jsonl_bytes(t1.to_pylist()),
            "extra/lonely.csv": tf.csv_bytes(t1),
        },
    )
    t = by_name(tables(client, full))
    assert set(t) == {"train", "test", "stars", "galaxies_bright", "galaxies_faint", "lonely"}
    assert (
        t["train"]["num_rows"] == 4 and t["stars"]["num_rows"] == 4 and t["galaxies_bright"]["num_rows"] == 4
    )
    assert t["stars"]["sources"] == ["cats/north/a.parquet", "cats/south/deep/b.parquet"]


def test_empty_repository_and_revisions(client: TestClient, alice: Account, bob: Account) -> None:
    full = new_dataset(client, alice)
    assert tables(client, full) == {"commit": None, "tables": [], "errors": []}
    first = committed(client, alice, full, {"one.csv": "a\n1\n"})
    committed(client, alice, full, {"two.csv": "b\n2\n"})
    assert set(by_name(tables(client, full))) == {"one", "two"}
    old = tables(client, full, rev=first[:10])
    assert old["commit"] == first and set(by_name(old)) == {"one"}
    r = client.get(f"{API}/datasets/{full}/tables", params={"rev": "nope"})
    assert error_code(r, 404) == "revision_not_found"
    # not a dataset: not found here
    create_repo(client, alice, "code")
    assert error_code(client.get(f"{API}/datasets/alice/code/tables"), 404) == "repo_not_found"


def test_private_datasets_are_not_found_for_strangers(
    client: TestClient, alice: Account, bob: Account
) -> None:
    full = new_dataset(client, alice, "secret", private=True)
    committed(client, alice, full, {"t.csv": "a\n1\n"})
    for path in ("tables", "tables/t/rows", "tables/t/stats", "tables/missing/rows"):
        for who in (None, bob):
            r = client.get(f"{API}/datasets/{full}/{path}", headers=who.headers if who else {})
            assert error_code(r, 404) == "repo_not_found", path
    assert rows(client, full, "t", alice)["rows"] == [{"a": 1}]
    assert tables(client, full, alice)["tables"][0]["name"] == "t"


def test_catalog_is_built_once_and_cached(
    client: TestClient, alice: Account, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from opensci.data import formats

    full = new_dataset(client, alice)
    sha = committed(
        client, alice, full, {"t.csv": tf.csv_bytes(SAMPLE), "u.jsonl": tf.jsonl_bytes(SAMPLE.to_pylist())}
    )
    calls: list[str] = []
    real = formats.to_parquet

    def counting(fmt: str, *a: Any, **kw: Any) -> Any:
        calls.append(fmt)
        return real(fmt, *a, **kw)

    monkeypatch.setattr(formats, "to_parquet", counting)
    with ThreadPoolExecutor(8) as pool:
        listings = list(pool.map(lambda _: tables(client, full), range(8)))
    assert all(x == listings[0] for x in listings)
    assert sorted(calls) == ["csv", "jsonl"]  # eight concurrent requests, one build
    cached = settings.home / "derived" / sha / "catalog.json"
    assert json.loads(cached.read_text())["commit"] == sha
    before = cached.stat().st_mtime_ns
    tables(client, full)
    rows(client, full, "t")
    assert sorted(calls) == ["csv", "jsonl"]
    assert cached.stat().st_mtime_ns == before
    assert (settings.home / "derived" / sha / "tables" / "t.csv.parquet").exists()


def test_files_of_different_formats_are_different_tables(client: TestClient, alice: Account) -> None:
    full = new_dataset(client, alice)
    t1 = pa.table({"x": [1, 2]})
    other = pa.table({"y": ["a"]})
    committed(
        client,
        alice,
        full,
        {
            "same.csv": tf.csv_bytes(t1),
            "same.parquet": tf.parquet_bytes(t1),
            "data/big.csv": tf.csv_bytes(other),
            "data/big.parquet": tf.parquet_bytes(t1),
        },
    )
    t = by_name(tables(client, full))
    assert set(t) == {"same_csv", "same_parquet", "data_big_csv", "data_big_parquet"}
    assert all(x["num_rows"] in (1, 2) for x in t.values()) and not any(x.get("notes") for x in t.values())
    assert t["same_csv"]["sources"] == ["same.csv"] and t["same_parquet"]["sources"] == ["same.parquet"]


def test_a_split_the_card_declares_keeps_its_name(client: TestClient, alice: Account) -> None:
    full = new_dataset(client, alice)
    card = (
        "---\nconfigs:\n- config_name: default\n  data_files:\n"
        '  - split: train\n    path: "data/a/*.csv"\n---\n'
    )
    t1 = pa.table({"x": [1, 2]})
    committed(
        client,
        alice,
        full,
        {"README.md": card, "data/a/one.csv": tf.csv_bytes(t1), "train/other.csv": tf.csv_bytes(t1)},
    )
    t = by_name(tables(client, full))
    assert t["train"]["sources"] == ["data/a/one.csv"]
    assert [x["sources"] for n, x in t.items() if n != "train"] == [["train/other.csv"]]
