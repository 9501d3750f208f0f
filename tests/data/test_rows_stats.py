"""Rows (paging, stable order, JSON-safe values) and statistics (exact against numpy, cached)."""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from opensci.data.catalog import Table
from opensci.data.service import read_rows
from opensci.settings import Settings
from tests.api_helpers import API, committed, create_repo, error_code
from tests.conftest import Account
from tests.data import table_files as tf


def dataset(client: TestClient, who: Account, files: dict[str, bytes | str]) -> tuple[str, str]:
    create_repo(client, who, "ds", kind="dataset")
    return "alice/ds", committed(client, who, "alice/ds", files)


def get_rows(client: TestClient, full: str, table: str, **params: Any) -> dict[str, Any]:
    r = client.get(f"{API}/datasets/{full}/tables/{table}/rows", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_paging_is_stable_across_files_and_row_groups(client: TestClient, alice: Account) -> None:
    shards = {
        f"data/train-{i:05d}-of-00003.parquet": tf.parquet_bytes(
            pa.table({"k": np.arange(i * 1000, (i + 1) * 1000)}), row_group_size=170
        )
        for i in range(3)
    }
    full, _ = dataset(client, alice, shards)
    assert get_rows(client, full, "train", limit=0) == {
        "rows": [],
        "num_rows": 3000,
        "offset": 0,
        "limit": 0,
        "commit": get_rows(client, full, "train")["commit"],
    }
    seen: list[int] = []
    for offset in range(0, 3000, 333):
        page = get_rows(client, full, "train", offset=offset, limit=333)
        assert page["num_rows"] == 3000
        seen.extend(r["k"] for r in page["rows"])
    assert seen == list(range(3000))
    assert [r["k"] for r in get_rows(client, full, "train", offset=995, limit=10)["rows"]] == list(
        range(995, 1005)
    )
    assert len(get_rows(client, full, "train", limit=1000)["rows"]) == 1000
    assert get_rows(client, full, "train", offset=2999, limit=5)["rows"] == [{"k": 2999}]
    assert get_rows(client, full, "train", offset=10_000)["rows"] == []
    assert len(get_rows(client, full, "train")["rows"]) == 100  # the default limit


@pytest.mark.parametrize("params", [{"limit": 1001}, {"limit": -1}, {"offset": -1}, {"offset": "x"}])
def test_bad_paging_is_422(client: TestClient, alice: Account, params: dict[str, Any]) -> None:
    full, _ = dataset(client, alice, {"t.csv": "a\n1\n"})
    assert (
        error_code(client.get(f"{API}/datasets/{full}/tables/t/rows", params=params), 422) == "invalid_input"
    )


def test_unknown_table_is_404(client: TestClient, alice: Account) -> None:
    full, _ = dataset(client, alice, {"t.csv": "a\n1\n"})
    for what in ("rows", "stats"):
        r = client.get(f"{API}/datasets/{full}/tables/nope/{what}")
        assert error_code(r, 404) == "table_not_found"


def test_values_are_json_safe(client: TestClient, alice: Account) -> None:
    t = pa.table(
        {
            "f": pa.array([float("nan"), float("inf"), -float("inf"), 1.25]),
            "b": pa.array([b"text", b"\xff\x00", None, b""], pa.binary()),
            "ts": pa.array([dt.datetime(2024, 1, 2, 3, 4, 5, 6)] * 4, pa.timestamp("us")),
            "tz": pa.array([dt.datetime(2024, 1, 2, tzinfo=dt.UTC)] * 4, pa.timestamp("ns", tz="UTC")),
            "d": pa.array([dt.date(2020, 2, 29)] * 4),
            "dec": pa.array([decimal.Decimal("1.10")] * 4, pa.decimal128(5, 2)),
            "dur": pa.array([dt.timedelta(seconds=90)] * 4, pa.duration("s")),
            "l": pa.array([[1.0, float("nan")], None, [], [2.0]]),
            "st": pa.array([{"x": 1, "y": "a"}] * 4),
            "big": pa.array([2**63 - 1] * 4, pa.int64()),
        }
    )
    full, _ = dataset(client, alice, {"t.parquet": tf.parquet_bytes(t)})
    r = client.get(f"{API}/datasets/{full}/tables/t/rows")
    assert r.status_code == 200
    got = json.loads(r.text)["rows"]  # strict JSON: no NaN
    assert [x["f"] for x in got] == [None, None, None, 1.25]
    assert [x["b"] for x in got] == ["text", "base64:/wA=", None, ""]
    assert got[0]["ts"] == "2024-01-02T03:04:05.000006"
    assert got[0]["tz"].startswith("2024-01-02T00:00:00") and got[0]["tz"].endswith("+00:00")
    assert got[0]["d"] == "2020-02-29" and got[0]["dec"] == "1.10" and got[0]["dur"] == 90.0
    assert got[0]["l"] == [1.0, None] and got[1]["l"] is None and got[0]["st"] == {"x": 1, "y": "a"}
    assert got[0]["big"] == 2**63 - 1
    s = client.get(f"{API}/datasets/{full}/tables/t/stats")
    assert s.status_code == 200, s.text
    cols = {c["name"]: c for c in s.json()["columns"]}
    assert cols["f"]["non_finite"] == 3 and cols["f"]["min"] == cols["f"]["max"] == 1.25
    assert cols["ts"]["min"] == "2024-01-02T03:04:05.000006"


def numpy_histogram(values: np.ndarray) -> tuple[list[float], list[int]]:
    counts, edges = np.histogram(values, bins=20)
    return [float(e) for e in edges], [int(c) for c in counts]


def test_stats_match_numpy(client: TestClient, alice: Account) -> None:
    rng = np.random.default_rng(7)
    n = 50_000
    x = rng.normal(3.0, 2.5, n)
    x_nulls = rng.random(n) < 0.05
    x[rng.random(n) < 0.01] = np.nan
    ints = rng.integers(-1000, 1000, n)
    words = rng.choice(["alpha", "beta", "gamma", "delta", "eps"], n, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    flag = rng.random(n) < 0.3
    const = np.full(n, 7)
    table = pa.table(
        {
            "x": pa.array(x, mask=x_nulls),
            "i": pa.array(ints),
            "w": pa.array(words),
            "flag": pa.array(flag),
            "const": pa.array(const),
        }
    )
    half = n // 2
    full, sha = dataset(
        client,
        alice,
        {
            "data/train-00000-of-00002.parquet": tf.parquet_bytes(table.slice(0, half), row_group_size=4000),
            "data/train-00001-of-00002.csv".replace(".csv", ".parquet"): tf.parquet_bytes(table.slice(half)),
        },
    )
    r = client.get(f"{API}/datasets/{full}/tables/train/stats")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["num_rows"] == n and body["commit"] == sha and body["table"] == "train"
    cols = {c["name"]: c for c in body["columns"]}

    valid = x[~x_nulls]
    finite = valid[np.isfinite(valid)]
    cx = cols["x"]
    assert cx["type"] == "double" and cx["count"] == n
    assert cx["nulls"] == int(x_nulls.sum())
    assert cx["non_finite"] == int(np.isnan(valid).sum())
    assert cx["min"] == finite.min() and cx["max"] == finite.max()
    assert cx["mean"] == pytest.approx(finite.mean(), rel=1e-12)
    assert cx["std"] == pytest.approx(finite.std(), rel=1e-9)
    assert (cx["histogram"]["edges"], cx["histogram"]["counts"]) == numpy_histogram(finite)
    assert abs(cx["distinct"] - len(np.unique(finite))) < 0.05 * len(np.unique(finite))

    ci = cols["i"]
    assert ci["nulls"] == 0 and (ci["min"], ci["max"]) == (int(ints.min()), int(ints.max()))
    assert ci["mean"] == pytest.approx(ints.mean(), rel=1e-12)
    assert ci["std"] == pytest.approx(ints.std(), rel=1e-9)
    assert (ci["histogram"]["edges"], ci["histogram"]["counts"]) == numpy_histogram(ints)

    assert (cols["const"]["histogram"]["edges"], cols["const"]["histogram"]["counts"]) == numpy_histogram(
        const
    )

    values, counts = np.unique(words, return_counts=True)
    expected = sorted(zip(values.tolist(), counts.tolist(), strict=True), key=lambda vc: (-vc[1], vc[0]))
    assert [(t["value"], t["count"]) for t in cols["w"]["top"]] == expected
    assert cols["w"]["min"] == "alpha" and cols["w"]["max"] == "gamma" and cols["w"]["distinct"] == 5
    assert {t["value"]: t["count"] for t in cols["flag"]["top"]} == {
        True: int(flag.sum()),
        False: int((~flag).sum()),
    }


def test_stats_and_tables_name_column_types_alike(client: TestClient, alice: Account) -> None:
    table = pa.table(
        {
            "i": pa.array([1, 2], pa.int64()),
            "f": pa.array([1.5, 2.5], pa.float32()),
            "s": pa.array(["a", "b"]),
            "ts": pa.array([dt.datetime(2024, 1, 2)] * 2, pa.timestamp("us")),
            "dec": pa.array([decimal.Decimal("1.10")] * 2, pa.decimal128(5, 2)),
            "l": pa.array([[1], [2]]),
            "b": pa.array([True, False]),
        }
    )
    full, _ = dataset(client, alice, {"t.parquet": tf.parquet_bytes(table)})
    listed = client.get(f"{API}/datasets/{full}/tables").json()["tables"][0]["columns"]
    stats = client.get(f"{API}/datasets/{full}/tables/t/stats").json()["columns"]
    assert [(c["name"], c["type"]) for c in stats] == [(c["name"], c["type"]) for c in listed]
    assert [c["type"] for c in listed] == [
        "int64",
        "float",
        "string",
        "timestamp[us]",
        "decimal128(5, 2)",
        "list<element: int64>",
        "bool",
    ]
    by_name = {c["name"]: c for c in stats}
    assert by_name["f"]["histogram"] and by_name["s"]["top"] and by_name["dec"]["min"] == "1.10"


def test_stats_are_computed_once_per_commit(
    client: TestClient, alice: Account, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opensci.data import stats

    full, sha = dataset(client, alice, {"t.csv": "a,b\n1,x\n2,y\n"})
    first = client.get(f"{API}/datasets/{full}/tables/t/stats").json()
    files = list((settings.home / "derived" / sha / "stats").glob("*.json"))
    assert len(files) == 1

    def fail(*_: Any) -> Any:
        raise AssertionError("statistics computed again")

    monkeypatch.setattr(stats, "compute", fail)
    assert client.get(f"{API}/datasets/{full}/tables/t/stats", params={"rev": sha}).json() == first
    committed(client, alice, full, {"t.csv": "a,b\n3,z\n"})
    r = client.get(f"{API}/datasets/{full}/tables/t/stats")  # a new commit: computed for it
    assert error_code(r, 500) == "internal_error"


def test_parquet_is_read_in_place_until_duckdb_needs_a_copy(
    client: TestClient, alice: Account, settings: Settings
) -> None:
    """The first rows of a (large, LFS) Parquet file come straight from the blob store: only statistics
    and SQL, which read files by path, copy it to the derived area, once."""
    settings.lfs_threshold_bytes = 1000
    table = pa.table({"x": np.arange(50_000), "y": np.arange(50_000) * 0.5})
    full, sha = dataset(client, alice, {"data/big.parquet": tf.parquet_bytes(table, row_group_size=10_000)})
    copy = settings.home.resolve() / "derived" / sha / "tables" / "data" / "big.parquet.parquet"
    tables = client.get(f"{API}/datasets/{full}/tables").json()["tables"]
    assert tables[0]["num_rows"] == 50_000
    assert get_rows(client, full, "big", offset=25_000, limit=2)["rows"] == [
        {"x": 25_000, "y": 12_500.0},
        {"x": 25_001, "y": 12_500.5},
    ]
    assert not copy.exists()
    stats = client.get(f"{API}/datasets/{full}/tables/big/stats").json()
    assert stats["columns"][0]["max"] == 49_999 and copy.exists()
    r = client.post(f"{API}/datasets/{full}/sql", json={"sql": "SELECT sum(x) AS s FROM big"})
    assert r.json()["rows"] == [[sum(range(50_000))]]


def test_nanosecond_timestamps_are_rows_not_errors(client: TestClient, alice: Account) -> None:
    stamps = pa.array([1_577_934_245_123_456_789, None], pa.timestamp("ns"))
    table = pa.table({"t": stamps, "d": pa.array([1_500, None], pa.duration("ns"))})
    full, _ = dataset(client, alice, {"events.parquet": tf.parquet_bytes(table)})
    rows = get_rows(client, full, "events")["rows"]
    assert rows[0]["t"].startswith("2020-01-02") and rows[0]["t"].endswith(".123456789")
    assert rows[0]["d"] == 1.5e-6 and rows[1] == {"t": None, "d": None}
    assert client.get(f"{API}/datasets/{full}/tables/events/stats").status_code == 200


class _CountingFile(io.BytesIO):
    """A file that counts the bytes read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        out = super().read(size)
        self.bytes_read += len(out)
        return out

    def readinto(self, buffer: Any) -> int:
        n = super().readinto(buffer)
        self.bytes_read += n
        return n


def test_first_rows_of_a_big_row_group_read_its_first_pages_only() -> None:
    """The viewer's first page of a 1 GiB file must not fetch whole 128 MB row groups: columns are
    read page by page, so the bytes read are a small part of the row group."""
    rng = np.random.default_rng(3)
    table = pa.table({f"c{i}": rng.random(1_000_000) for i in range(2)})
    data = tf.parquet_bytes(table, row_group_size=1_000_000, use_dictionary=False)  # 16 MB, 1 MB pages
    files: list[_CountingFile] = []

    def opener(_: int) -> _CountingFile:
        files.append(_CountingFile(data))
        return files[-1]

    t = Table("t", 1_000_000, [], ["t.parquet"], ["unused"], [1_000_000])
    rows = read_rows(t, 0, 100, opener)
    assert [r["c0"] for r in rows] == table.column("c0").to_pylist()[:100]
    assert files[0].bytes_read < len(data) / 4, (files[0].bytes_read, len(data))
    deep = read_rows(t, 999_990, 10, opener)  # the last rows: every page decoded on the way
    assert [r["c1"] for r in deep] == table.column("c1").to_pylist()[999_990:]
