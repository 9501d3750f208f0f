"""`/api/v1/datasets/{owner}/{name}/sql`: formats, revisions, cross-dataset joins, permissions, the sandbox
through the API, and the limits (a runaway query is stopped while the server keeps answering)."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from astropy.io.votable import parse_single_table
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opensci.data import sql as engine
from tests.api_helpers import API, committed, create_repo, error_code
from tests.conftest import Account, LiveServer
from tests.data.test_sql_engine import escapes


def parquet_bytes(sql: str) -> bytes:
    table = duckdb.connect().sql(sql).to_arrow_table()
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


STARS = "SELECT range AS id, range / 2 AS mag, 'star ' || range AS name FROM range(2000)"


def set_limit(mp: pytest.MonkeyPatch, app: FastAPI, constant: str, setting: str, value: object) -> None:
    """Lower a limit for a test: the engine default, and the setting once Settings defines it."""
    mp.setattr(engine, constant, value)
    if setting in type(app.state.settings).model_fields:
        mp.setattr(app.state.settings, setting, value)


def url(full_name: str) -> str:
    return f"{API}/datasets/{full_name}/sql"


@pytest.fixture
def world(client: TestClient, alice: Account, bob: Account) -> dict[str, Any]:
    """alice/sky (public: stars.parquet, then a second commit adding notes.csv), bob/hidden (private)."""
    create_repo(client, alice, "sky", kind="dataset")
    first = committed(client, alice, "alice/sky", {"stars.parquet": parquet_bytes(STARS)})
    second = committed(client, alice, "alice/sky", {"notes.csv": "id,note\n1,bright\n2,variable\n"})
    create_repo(client, bob, "hidden", kind="dataset", private=True)
    committed(
        client, bob, "bob/hidden", {"ids.parquet": parquet_bytes("SELECT range * 2 AS id FROM range(10)")}
    )
    create_repo(client, bob, "pub", kind="dataset")
    committed(client, bob, "bob/pub", {"ids.parquet": parquet_bytes("SELECT range * 3 AS id FROM range(10)")})
    return {"first": first, "second": second}


def test_json_default(client: TestClient, world: dict[str, Any]) -> None:
    r = client.post(url("alice/sky"), json={"sql": "SELECT count(*) AS n, max(mag) AS m FROM stars"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"columns": ["n", "m"], "rows": [[2000, 999.5]], "truncated": False}
    r = client.post(url("alice/sky"), json={"sql": "SELECT s.id, note FROM stars s JOIN notes USING (id)"})
    assert sorted(r.json()["rows"]) == [[1, "bright"], [2, "variable"]]


def test_json_row_limit(
    app: FastAPI, client: TestClient, world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    set_limit(monkeypatch, app, "JSON_ROW_LIMIT", "sql_json_row_limit", 100)
    body = client.post(url("alice/sky"), json={"sql": "SELECT * FROM stars ORDER BY id"}).json()
    assert (
        len(body["rows"]) == 100 and body["truncated"] is True and body["rows"][99] == [99, 49.5, "star 99"]
    )
    body = client.post(url("alice/sky"), json={"sql": "SELECT * FROM stars LIMIT 100"}).json()
    assert len(body["rows"]) == 100 and body["truncated"] is False


def test_csv_parquet_votable(client: TestClient, world: dict[str, Any]) -> None:
    sql = "SELECT id, mag, name FROM stars ORDER BY id"
    r = client.post(url("alice/sky"), json={"sql": sql, "format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"].startswith('attachment; filename="sky-')
    table = pacsv.read_csv(io.BytesIO(r.content))
    assert table.num_rows == 2000 and table.column("name")[7].as_py() == "star 7"

    r = client.post(url("alice/sky"), json={"sql": sql, "format": "parquet"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.apache.parquet"
    assert r.headers["content-disposition"].endswith('.parquet"')
    table = pq.read_table(io.BytesIO(r.content))
    assert table.num_rows == 2000 and table.schema.field("mag").type == pa.float64()
    assert table.column("mag")[1999].as_py() == 999.5

    r = client.post(url("alice/sky"), json={"sql": sql, "format": "votable"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-votable+xml"
    parsed = parse_single_table(io.BytesIO(r.content)).to_table()
    assert len(parsed) == 2000 and parsed["name"][3] == "star 3" and float(parsed["mag"][3]) == 1.5


def test_get_for_links(client: TestClient, world: dict[str, Any]) -> None:
    r = client.get(url("alice/sky"), params={"sql": "SELECT id FROM stars WHERE id < 3", "format": "csv"})
    assert r.status_code == 200 and r.text.split() == ['"id"', "0", "1", "2"]
    assert client.get(url("alice/sky"), params={"sql": "SELECT 1 AS x"}).json()["rows"] == [[1]]
    assert error_code(client.get(url("alice/sky")), 422) == "invalid_sql"
    assert error_code(client.get(url("alice/sky"), params={"sql": "SELECT 1", "format": "xls"}), 422)


def test_revisions(client: TestClient, world: dict[str, Any]) -> None:
    r = client.post(url("alice/sky"), json={"sql": "SELECT count(*) FROM notes", "rev": world["first"]})
    assert error_code(r, 422) == "table_not_found"
    r = client.post(url("alice/sky"), json={"sql": "SELECT count(*) FROM notes", "rev": world["second"]})
    assert r.json()["rows"] == [[2]]
    r = client.post(url("alice/sky"), json={"sql": "SELECT 1", "rev": "no-such-branch"})
    assert r.status_code == 404


def test_private_dataset_is_not_found(
    client: TestClient, world: dict[str, Any], alice: Account, bob: Account
) -> None:
    body = {"sql": "SELECT count(*) FROM ids"}
    assert error_code(client.post(url("bob/hidden"), json=body), 404) == "repo_not_found"
    assert (
        error_code(client.post(url("bob/hidden"), json=body, headers=alice.headers), 404) == "repo_not_found"
    )
    assert (
        error_code(client.get(url("bob/hidden"), params=body, headers=alice.headers), 404) == "repo_not_found"
    )
    assert client.post(url("bob/hidden"), json=body, headers=bob.read_headers).json()["rows"] == [[10]]
    # A code repository is not a dataset, and a missing one is the same 404.
    assert error_code(client.post(url("alice/nothing"), json=body), 404) == "repo_not_found"


def test_cross_dataset_join(client: TestClient, world: dict[str, Any], alice: Account, bob: Account) -> None:
    sql = 'SELECT count(*) FROM stars JOIN "bob/pub".ids USING (id)'
    assert client.post(url("alice/sky"), json={"sql": sql}).json()["rows"] == [[10]]
    # At a revision of the other dataset, and the same answer as a shareable link.
    sql_rev = 'SELECT count(*) FROM stars s, "bob/pub@main".ids i WHERE s.id = i.id'
    assert client.get(url("alice/sky"), params={"sql": sql_rev}).json()["rows"] == [[10]]

    hidden = 'SELECT count(*) FROM stars JOIN "bob/hidden".ids USING (id)'
    assert error_code(client.post(url("alice/sky"), json={"sql": hidden}), 404) == "repo_not_found"
    r = client.post(url("alice/sky"), json={"sql": hidden}, headers=alice.headers)
    assert error_code(r, 404) == "repo_not_found"
    missing = 'SELECT * FROM "bob/nope".ids'
    assert error_code(client.post(url("alice/sky"), json={"sql": missing}), 404) == "repo_not_found"
    assert client.post(url("alice/sky"), json={"sql": hidden}, headers=bob.headers).json()["rows"] == [[10]]


def test_sandbox_escape_corpus_through_the_api(
    client: TestClient, settings: Any, world: dict[str, Any], bob: Account
) -> None:
    # Warm the derived area of both commits and of bob's private dataset: real files to try to steal.
    for rev in (world["first"], world["second"]):
        assert client.post(url("alice/sky"), json={"sql": "SELECT 1", "rev": rev}).status_code == 200
    assert client.post(url("bob/hidden"), json={"sql": "SELECT 1"}, headers=bob.headers).status_code == 200
    derived = Path(settings.home).resolve() / "derived"
    secret = next(p for p in derived.rglob("*.parquet") if "ids" in p.name)
    this = next(p for p in (derived / world["second"]).rglob("stars*.parquet"))
    corpus = escapes({"secret": secret, "stars": this})
    for attempt in corpus:
        for call in ("post", "get"):
            if call == "post":
                r = client.post(url("alice/sky"), json={"sql": attempt})
            else:
                r = client.get(url("alice/sky"), params={"sql": attempt, "format": "csv"})
            assert 400 <= r.status_code < 500, (attempt, r.status_code, r.text)
            assert set(r.json()) == {"error", "message"}, attempt
            if str(derived) not in attempt:
                assert str(derived) not in r.text, (attempt, r.text)


def test_memory_limit(
    app: FastAPI, client: TestClient, world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    set_limit(monkeypatch, app, "MEMORY_LIMIT", "sql_memory_limit", "100MB")
    r = client.post(url("alice/sky"), json={"sql": "SELECT list(range) FROM range(200000000)"})
    assert error_code(r, 413) == "query_too_large"


def test_runaway_query_is_stopped_while_the_server_keeps_answering(
    app: FastAPI, live_server: LiveServer, alice: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_limit(monkeypatch, app, "TIMEOUT_SECONDS", "sql_timeout_seconds", 3.0)
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        create_repo(http, alice, "big", kind="dataset")
        committed(
            http, alice, "alice/big", {"t.parquet": parquet_bytes("SELECT range AS x FROM range(100000)")}
        )
        answers: dict[str, httpx.Response] = {}
        heavy_sql = "SELECT sum(a.x * b.x) FROM t a, t b, range(1000) c"

        def heavy() -> None:
            answers["heavy"] = http.post(f"{API}/datasets/alice/big/sql", json={"sql": heavy_sql})

        started = time.monotonic()
        thread = threading.Thread(target=heavy)
        thread.start()
        time.sleep(0.3)
        latencies = []
        while thread.is_alive() and time.monotonic() - started < 20:
            t0 = time.monotonic()
            assert http.get("/api/health").status_code == 200
            latencies.append(time.monotonic() - t0)
            time.sleep(0.05)
        thread.join(timeout=30)
        elapsed = time.monotonic() - started
    assert len(latencies) >= 10, latencies
    assert max(latencies) < 0.5, max(latencies)
    assert error_code(answers["heavy"], 422) == "query_timeout"
    assert 2.5 < elapsed < 10, elapsed


def test_queries_beyond_the_concurrency_limit_get_503(
    app: FastAPI, live_server: LiveServer, alice: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opensci.data import query

    monkeypatch.setattr(app.state.settings, "sql_max_concurrent", 1)
    monkeypatch.setattr(app.state.settings, "sql_timeout_seconds", 3.0)
    monkeypatch.setattr(query, "SLOT_WAIT_SECONDS", 0.3)
    with httpx.Client(base_url=live_server.url, timeout=30, headers=alice.headers) as http:
        create_repo(http, alice, "busy", kind="dataset")
        committed(
            http, alice, "alice/busy", {"t.parquet": parquet_bytes("SELECT range AS x FROM range(100000)")}
        )
        answers: dict[str, httpx.Response] = {}

        def heavy() -> None:
            sql = "SELECT sum(a.x * b.x) FROM t a, t b, range(1000) c"
            answers["heavy"] = http.post(f"{API}/datasets/alice/busy/sql", json={"sql": sql})

        thread = threading.Thread(target=heavy)
        thread.start()
        # Ask until the heavy query holds the slot (under load it may take a moment to get there).
        started = time.monotonic()
        busy = http.post(f"{API}/datasets/alice/busy/sql", json={"sql": "SELECT 1"})
        while busy.status_code == 200 and thread.is_alive() and time.monotonic() - started < 10:
            time.sleep(0.05)
            busy = http.post(f"{API}/datasets/alice/busy/sql", json={"sql": "SELECT 1"})
        assert error_code(busy, 503) == "too_many_queries" and busy.headers["retry-after"] == "5"
        thread.join(timeout=30)
        assert error_code(answers["heavy"], 422) == "query_timeout"
        # The slot is free again once the heavy query ended.
        assert http.post(f"{API}/datasets/alice/busy/sql", json={"sql": "SELECT 1 AS one"}).status_code == 200


ODD_TYPES = (
    "SELECT TIMESTAMP_NS '2020-01-02 03:04:05.123456789' AS t, 1::TINYINT AS i8, 2::UTINYINT AS u8, "
    "3::USMALLINT AS u16, 4::UINTEGER AS u32, 5::UBIGINT AS u64, INTERVAL 3 DAY AS gap, "
    "union_value(k := 1) AS u"
)


def test_every_format_answers_types_python_and_writers_lack(
    client: TestClient, world: dict[str, Any]
) -> None:
    """Nanosecond times, small and unsigned integers, intervals and unions: never a 500 nor a cut-off
    download; values the format cannot hold are written as text."""
    r = client.post(url("alice/sky"), json={"sql": ODD_TYPES})
    assert r.status_code == 200, r.text
    row = r.json()["rows"][0]
    assert row[0] == "2020-01-02T03:04:05.123456789" and row[1:6] == [1, 2, 3, 4, 5]
    for fmt in ("csv", "parquet", "votable"):
        r = client.post(url("alice/sky"), json={"sql": ODD_TYPES, "format": fmt})
        assert r.status_code == 200, (fmt, r.text[:300])
        if fmt == "csv":
            assert "2020-01-02T03:04:05.123456789" in r.text
        elif fmt == "parquet":
            back = pq.read_table(io.BytesIO(r.content))
            assert back.num_rows == 1 and back.column("u8").to_pylist() == [2]
        else:
            table = parse_single_table(io.BytesIO(r.content)).to_table()
            assert int(table["i8"][0]) == 1 and str(table["u64"][0]) == "5"


def test_an_answer_held_in_memory_is_capped_in_bytes(
    client: TestClient, world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "TAKE_MAX_BYTES", 1_000_000)
    monkeypatch.setattr(engine.Result.take, "__defaults__", (1_000_000,))
    r = client.post(url("alice/sky"), json={"sql": "SELECT repeat('x', 100000) AS s FROM range(50)"})
    assert error_code(r, 413) == "query_too_large" and "CSV or Parquet" in r.json()["message"]
    r = client.post(
        url("alice/sky"), json={"sql": "SELECT repeat('x', 100000) AS s FROM range(50)", "format": "csv"}
    )
    assert r.status_code == 200 and len(r.content) > 5_000_000


def test_deeply_nested_queries_are_refused_not_crashed(client: TestClient, world: dict[str, Any]) -> None:
    sql = "SELECT * FROM " + "(SELECT * FROM " * 400 + "stars" + ")" * 400
    r = client.post(url("alice/sky"), json={"sql": sql})
    assert r.status_code == 422, r.text[:300]
