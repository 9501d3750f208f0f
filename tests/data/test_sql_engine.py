"""The SQL engine on its own: real DuckDB over real Parquet files, its sandbox, limits and result formats."""

from __future__ import annotations

import csv
import decimal
import io
import json
import math
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io.votable import parse_single_table

from opensci.data import sql as engine
from opensci.data import sql_formats, sql_worker
from opensci.errors import OpenSciError


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Two Parquet files of "this revision" and one of "another commit" (must never be readable)."""
    root = tmp_path / "derived"
    (root / "this").mkdir(parents=True)
    (root / "other").mkdir()
    con = duckdb.connect()
    out = {
        "stars": root / "this" / "stars.parquet",
        "extra": root / "this" / "extra.parquet",
        "secret": root / "other" / "secret.parquet",
    }
    con.execute(
        "COPY (SELECT range AS id, range * 0.5 AS mag, 'star ' || range AS name FROM range(1000)) "
        f"TO '{out['stars']}' (FORMAT parquet)"
    )
    con.execute(
        f"COPY (SELECT range AS id, range % 7 AS grp FROM range(50)) TO '{out['extra']}' (FORMAT parquet)"
    )
    con.execute(f"COPY (SELECT 'top secret' AS s) TO '{out['secret']}' (FORMAT parquet)")
    con.close()
    return out


def tables(files: dict[str, Path]) -> dict[str, list[Path]]:
    return {"stars": [files["stars"]], "extra": [files["extra"]]}


def query(files: dict[str, Path], sql: str, **kw: object) -> tuple[pa.Table, bool]:
    with engine.run(tables(files), {}, sql, engine.Limits(**kw)) as result:  # type: ignore[arg-type]
        return result.take(100_000)


def test_tables_are_views_by_name(files: dict[str, Path]) -> None:
    table, truncated = query(files, "SELECT count(*) AS n, max(mag) AS m FROM stars")
    assert table.to_pylist() == [{"n": 1000, "m": 499.5}] and truncated is False
    table, _ = query(files, "WITH g AS (SELECT grp, count(*) c FROM extra GROUP BY grp) SELECT sum(c) FROM g")
    assert table.column(0).to_pylist() == [50]
    assert query(files, "FROM main.stars JOIN extra USING (id) SELECT count(*)")[0].column(0)[0].as_py() == 50
    assert query(files, "VALUES (1, 'a'), (2, 'b')")[0].num_rows == 2
    assert query(files, "DESCRIBE stars")[0].column("column_name").to_pylist() == ["id", "mag", "name"]
    assert query(files, "SUMMARIZE stars")[0].num_rows == 3
    assert query(files, "SELECT sum(range) FROM range(10)")[0].column(0)[0].as_py() == 45


def test_cross_dataset_schema(files: dict[str, Path]) -> None:
    extra = {"bob/catalog": {"ids": [files["extra"]]}}
    assert engine.referenced_datasets('SELECT * FROM stars JOIN "bob/catalog".ids USING (id)') == {
        "bob/catalog"
    }
    assert engine.referenced_datasets('SELECT * FROM "bob/catalog@v1".ids') == {"bob/catalog@v1"}
    with engine.run(
        tables(files), extra, 'SELECT count(*) FROM stars s JOIN "bob/catalog".ids i ON s.id = i.id'
    ) as r:
        assert r.take(10)[0].column(0)[0].as_py() == 50
    with pytest.raises(OpenSciError) as info:
        engine.run(tables(files), {}, 'SELECT * FROM "bob/catalog".ids')
    assert info.value.status == 422


def escapes(files: dict[str, Path]) -> list[str]:
    secret = files["secret"]
    this = files["stars"]
    return [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_csv_auto('/etc/passwd')",
        "SELECT * FROM '/etc/passwd'",
        "FROM '/etc/hostname'",
        f"SELECT * FROM read_parquet('{secret}')",
        f"SELECT * FROM '{secret}'",
        f"SELECT * FROM read_parquet('{this}')",  # even this revision's files: by table name only
        f"SELECT * FROM parquet_metadata('{this}')",
        "SELECT * FROM glob('/*')",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM read_blob('/etc/passwd')",
        "SELECT * FROM read_json('/proc/self/environ')",
        "SELECT * FROM stars, read_csv('/etc/passwd')",
        "WITH x AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM x",
        "SELECT (SELECT count(*) FROM read_text('/etc/passwd'))",
        "SELECT * FROM range(3) r, LATERAL (FROM glob('/*'))",
        "SUMMARIZE SELECT * FROM read_csv('/etc/passwd')",
        "DESCRIBE SELECT * FROM glob('/*')",
        "COPY (SELECT 1) TO '/tmp/opensci-escape.csv'",
        "COPY stars TO 'out.parquet' (FORMAT parquet)",
        "EXPORT DATABASE '/tmp/opensci-escape'",
        "IMPORT DATABASE '/tmp/opensci-escape'",
        "ATTACH '/tmp/opensci-escape.db' AS x",
        "ATTACH ':memory:' AS x",
        "DETACH memory",
        "USE system",
        "INSTALL httpfs",
        "LOAD httpfs",
        "LOAD '/tmp/evil.duckdb_extension'",
        "SELECT * FROM read_parquet('https://example.com/x.parquet')",
        "SELECT * FROM 'https://example.com/data.csv'",
        "SELECT * FROM 's3://bucket/key.parquet'",
        "SELECT * FROM sqlite_scan('/tmp/x.db', 't')",
        "SELECT * FROM iceberg_scan('/tmp/x')",
        "SET threads = 64",
        "SET enable_external_access = true",
        "RESET memory_limit",
        "PRAGMA threads = 64",
        "PRAGMA version",
        "CALL pragma_version()",
        "SELECT * FROM duckdb_settings()",
        "SELECT current_setting('temp_directory')",
        "SELECT getenv('HOME')",
        "SELECT * FROM duckdb_views()",
        "SELECT * FROM duckdb_secrets()",
        "SELECT * FROM duckdb_extensions()",
        "SELECT * FROM information_schema.views",
        "SELECT * FROM pg_views",
        "SELECT * FROM pg_catalog.pg_views",
        "SELECT * FROM system.main.duckdb_settings()",
        "SELECT * FROM sqlite_master",
        "SELECT * FROM query('SELECT * FROM read_csv(''/etc/passwd'')')",
        "SELECT * FROM query_table('stars')",
        "CREATE TABLE z AS SELECT 1",
        "CREATE VIEW v AS SELECT 1",
        "CREATE MACRO m(x) AS x",
        "CREATE SECRET (TYPE s3, KEY_ID 'x', SECRET 'y')",
        "INSERT INTO stars VALUES (1, 2, 'x')",
        "UPDATE stars SET mag = 0",
        "DELETE FROM stars",
        "DROP VIEW stars",
        "ALTER VIEW stars RENAME TO s",
        "CHECKPOINT",
        "VACUUM",
        "BEGIN TRANSACTION",
        "EXPLAIN SELECT 1",
        "SELECT 1; SELECT 2",
        "SELECT 1; DROP VIEW stars",
        "SHOW ALL TABLES",
        "SHOW databases",
    ]


def test_sandbox_escape_corpus(files: dict[str, Path]) -> None:
    """Each attempt is refused with a 4xx error whose message names no server path."""
    corpus = escapes(files)
    assert len(corpus) >= 25
    home = str(files["stars"].parent.parent)
    for attempt in corpus:
        with pytest.raises(OpenSciError) as info, engine.run(tables(files), {}, attempt) as result:
            result.take(10)
        assert 400 <= info.value.status < 500, attempt
        if home not in attempt:  # (echoing the caller's own text back is no leak)
            assert home not in info.value.message, (attempt, info.value.message)
    # Nothing was written, and the tables are still there.
    assert not Path("/tmp/opensci-escape.csv").exists()
    assert not Path("out.parquet").exists()
    assert query(files, "SELECT count(*) FROM stars")[0].column(0)[0].as_py() == 1000


def test_locked_connection_refuses_files_even_without_the_parser_check(files: dict[str, Path]) -> None:
    """The second wall: the database itself refuses other files, settings and extensions."""
    con = engine.connect(tables(files), {}, engine.Limits())
    try:
        assert con.execute("SELECT count(*) FROM stars").fetchone() == (1000,)
        for attempt in [
            "SELECT * FROM read_csv('/etc/passwd')",
            f"SELECT * FROM read_parquet('{files['secret']}')",
            "SELECT * FROM glob('/*')",
            "COPY (SELECT 1) TO '/tmp/opensci-escape.csv'",
            "ATTACH '/tmp/opensci-escape.db'",
            "SET enable_external_access = true",
            "SET memory_limit = '100GB'",
            "LOAD httpfs",
            "INSTALL httpfs",
        ]:
            with pytest.raises(duckdb.Error):
                con.execute(attempt).fetchall()
    finally:
        con.close()


def test_time_limit_stops_a_runaway_query(files: dict[str, Path]) -> None:
    with pytest.raises(engine.QueryTimeout) as info:
        query(
            files,
            "SELECT sum(a.range * b.range) FROM range(1000000) a, range(1000000) b",
            timeout_seconds=0.5,
        )
    assert info.value.status == 422 and info.value.code == "query_timeout"


def test_time_limit_also_while_a_result_streams(files: dict[str, Path]) -> None:
    limits = engine.Limits(timeout_seconds=0.5)
    sql = "SELECT md5(range::VARCHAR) FROM range(1000000000)"
    with engine.run(tables(files), {}, sql, limits) as result, pytest.raises(engine.QueryTimeout):
        for _ in result.batches():
            pass


def test_memory_limit(files: dict[str, Path]) -> None:
    with pytest.raises(engine.QueryTooLarge) as info:
        query(files, "SELECT list(range) FROM range(200000000)", memory_limit="100MB")
    assert info.value.status == 413 and info.value.code == "query_too_large"


def test_errors_are_4xx_without_paths(files: dict[str, Path]) -> None:
    for bad, code in [
        ("SELEC 1", "invalid_sql"),
        ("SELECT nope FROM stars", "invalid_sql"),
        ("SELECT * FROM nope", "table_not_found"),
        ("", "invalid_sql"),
        ("SELECT 1/0::INTEGER, 'x'::INTEGER", "invalid_sql"),
    ]:
        with pytest.raises(OpenSciError) as info:
            query(files, bad)
        assert info.value.status == 422 and info.value.code == code, bad
        assert str(files["stars"].parent) not in info.value.message


TYPED = """
SELECT 1::TINYINT AS i8, 2::HUGEINT AS big, 1.5::DOUBLE AS f, 'nan'::DOUBLE AS nan,
       12.25::DECIMAL(6,2) AS dec,
       DATE '2024-01-02' AS d, TIMESTAMP '2024-01-02 03:04:05' AS ts, 'héllo' AS s, NULL::INTEGER AS n,
       true AS b, [1, 2] AS l, {'a': 1} AS st, '\\x01\\x02'::BLOB AS bl, INTERVAL 90 SECOND AS iv
"""


def test_json_values_are_json_safe(files: dict[str, Path]) -> None:
    table, _ = query(files, TYPED)
    (row,) = sql_formats.json_rows(table)
    got = dict(zip(table.column_names, row, strict=True))
    assert got["i8"] == 1 and got["big"] == 2 and got["f"] == 1.5 and got["nan"] is None
    assert got["dec"] == "12.25" and got["d"] == "2024-01-02" and got["ts"] == "2024-01-02T03:04:05"
    assert got["s"] == "héllo" and got["n"] is None and got["b"] is True
    assert got["l"] == [1, 2] and got["st"] == {"a": 1} and got["bl"] == "AQI=" and got["iv"] == "P0M0DT90S"


def test_csv_round_trip(files: dict[str, Path]) -> None:
    with engine.run(tables(files), {}, "SELECT id, mag, name, [id] AS l FROM stars ORDER BY id") as result:
        data = b"".join(sql_formats.csv_chunks(result))
    rows = list(csv.reader(io.StringIO(data.decode())))
    assert rows[0] == ["id", "mag", "name", "l"] and len(rows) == 1001
    assert rows[3] == ["2", "1.0", "star 2", "[2]"]
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(io.BytesIO(data))
    assert table.column("mag").to_pylist()[:3] == [0.0, 0.5, 1.0]


def test_csv_of_no_rows_has_a_header(files: dict[str, Path]) -> None:
    with engine.run(tables(files), {}, "SELECT id, name FROM stars WHERE id < 0") as result:
        assert b"".join(sql_formats.csv_chunks(result)).decode().strip() == '"id","name"'


def test_parquet_streams_batch_by_batch(files: dict[str, Path]) -> None:
    sql = "SELECT range AS i, range * 2.0 AS x FROM range(300000)"
    with engine.run(tables(files), {}, sql) as result:
        chunks = list(sql_formats.parquet_chunks(result))
    assert len([c for c in chunks if c]) >= 3  # more than one piece: written as the rows arrive
    table = pq.read_table(io.BytesIO(b"".join(chunks)))
    assert table.num_rows == 300000 and table.column("x")[7].as_py() == 14.0


def test_votable_round_trip(files: dict[str, Path]) -> None:
    with engine.run(
        tables(files), {}, "SELECT id, mag, name, mag > 10 AS bright FROM stars ORDER BY id"
    ) as r:
        table, truncated = r.take(100)
    data = sql_formats.votable_bytes(table, truncated)
    parsed = parse_single_table(io.BytesIO(data)).to_table()
    assert len(parsed) == 100 and list(parsed.colnames) == ["id", "mag", "name", "bright"]
    assert parsed["name"][5] == "star 5" and math.isclose(float(parsed["mag"][5]), 2.5)
    assert b"OVERFLOW" in data


def test_votable_masks_nulls(files: dict[str, Path]) -> None:
    with engine.run(tables(files), {}, "SELECT NULL::DOUBLE AS x, 1 AS y UNION ALL SELECT 2.0, NULL") as r:
        table, truncated = r.take(10)
    parsed = parse_single_table(io.BytesIO(sql_formats.votable_bytes(table, truncated))).to_table()
    assert len(parsed) == 2 and bool(parsed["x"].mask[0]) and not bool(parsed["x"].mask[1])


EXACT = (
    "SELECT 170141183460469231731687303715884105727::HUGEINT AS h, "
    "-170141183460469231731687303715884105727::HUGEINT AS hn, "
    "340282366920938463463374607431768211455::UHUGEINT AS uh, 18446744073709551615::UBIGINT AS u, "
    "9007199254740993::BIGINT AS b, 12345678901234567890.123456789012345678::DECIMAL(38,18) AS d, "
    "-0.000000000000000001::DECIMAL(38,18) AS tiny, 123456789012345678::DECIMAL(18,0) AS d0, "
    "1.50::DECIMAL(5,2) AS small, [1.50::DECIMAL(5,2)] AS l, [9007199254740993::HUGEINT] AS hl"
)
EXACT_TEXT = {
    "h": "170141183460469231731687303715884105727",
    "hn": "-170141183460469231731687303715884105727",
    "uh": "340282366920938463463374607431768211455",
    "u": "18446744073709551615",
    "b": "9007199254740993",
    "d": "12345678901234567890.123456789012345678",
    "tiny": "-0.000000000000000001",
    "d0": "123456789012345678",
    "small": "1.50",
}


def test_json_keeps_every_digit_of_big_integers_and_decimals(files: dict[str, Path]) -> None:
    """Integers of any width (HUGEINT, UHUGEINT, UBIGINT, DECIMAL(p,0)) are JSON numbers with every
    digit; decimals with a fractional part are strings with every digit, as in `/rows`."""
    table, _ = query(files, EXACT)
    (row,) = json.loads(json.dumps(sql_formats.json_rows(table)))
    got = dict(zip(table.column_names, row, strict=True))
    for name in ("h", "hn", "uh", "u", "b", "d0"):
        assert got[name] == int(EXACT_TEXT[name]) and isinstance(got[name], int), name
    for name in ("d", "tiny", "small"):
        assert got[name] == EXACT_TEXT[name], name
    assert got["l"] == ["1.50"] and got["hl"] == [9007199254740993]


def test_csv_parquet_and_votable_keep_every_digit(files: dict[str, Path]) -> None:
    with engine.run(tables(files), {}, EXACT) as result:
        data = b"".join(sql_formats.csv_chunks(result))
    header, row = list(csv.reader(io.StringIO(data.decode())))
    got = dict(zip(header, row, strict=True))
    assert {k: got[k] for k in EXACT_TEXT} == EXACT_TEXT
    assert json.loads(got["l"]) == ["1.50"] and json.loads(got["hl"]) == [9007199254740993]

    with engine.run(tables(files), {}, EXACT) as result:
        back = pq.read_table(io.BytesIO(b"".join(sql_formats.parquet_chunks(result))))
    assert pa.types.is_decimal(back.schema.field("d").type) and back.schema.field("d").type.scale == 18
    values = back.to_pylist()[0]
    assert {k: decimal.Decimal(values[k]) for k in EXACT_TEXT} == {
        k: decimal.Decimal(text) for k, text in EXACT_TEXT.items()
    }

    with engine.run(tables(files), {}, EXACT) as result:
        table, truncated = result.take(10)
    parsed = parse_single_table(io.BytesIO(sql_formats.votable_bytes(table, truncated))).to_table()
    # VOTable has no decimals: small ones are doubles (1.5 for 1.50), wide ones text with every digit.
    assert {k: decimal.Decimal(str(parsed[k][0])) for k in EXACT_TEXT} == {
        k: decimal.Decimal(text) for k, text in EXACT_TEXT.items()
    }
    assert str(parsed["d"][0]) == EXACT_TEXT["d"] and str(parsed["tiny"][0]) == EXACT_TEXT["tiny"]


def error_message(files: dict[str, Path], sql: str) -> str:
    with pytest.raises(OpenSciError) as info:
        query(files, sql)
    assert 400 <= info.value.status < 500, sql
    return info.value.message


def test_duckdb_hints_about_settings_and_extensions_are_left_out(files: dict[str, Path]) -> None:
    for sql, kept in [
        ("SELECT (SELECT range FROM range(3))", "More than one row returned by a subquery"),
        ("SELECT st_point(1, 2)", 'Scalar Function with name "st_point"'),
        ("SELECT 1 ORDER BY 'a'", "ORDER BY non-integer literal has no effect"),
        ("SELECT list_transform([1], x -> x + 1)", "Deprecated lambda arrow"),
        ("SELECT current_settin('threads')", "current_settin does not exist"),
    ]:
        message = error_message(files, sql)
        assert kept in message, (sql, message)
        for hint in ("SET ", "INSTALL", "LOAD", "extension", "PRAGMA", "autoload", "current_setting"):
            assert hint not in message, (sql, message)


def test_refusals_name_the_statement_the_user_wrote(files: dict[str, Path]) -> None:
    for sql, word in [
        ("INSTALL httpfs", "INSTALL"),
        ("FORCE INSTALL httpfs", "FORCE INSTALL"),
        ("LOAD httpfs", "LOAD"),
        ("RESET threads", "RESET"),
        ("USE memory", "USE"),
        ("BEGIN TRANSACTION", "BEGIN"),
        ("/* a comment */ CALL pragma_version()", "CALL"),
        ("CREATE TABLE z AS SELECT 1", "CREATE"),
    ]:
        message = error_message(files, sql)
        assert message.endswith(f"not {word}"), (sql, message)


def test_pivot_and_unpivot_are_queries(files: dict[str, Path]) -> None:
    table, _ = query(files, "PIVOT (SELECT grp FROM extra) ON grp IN (0, 1) USING count(*)")
    assert table.column_names == ["0", "1"] and table.to_pylist() == [{"0": 8, "1": 7}]
    table, _ = query(
        files, "SELECT sum(v) FROM (UNPIVOT (SELECT 1 AS a, 2 AS b) ON a, b INTO NAME k VALUE v)"
    )
    assert table.column(0).to_pylist() == [3]
    message = error_message(files, "PIVOT extra ON grp USING count(*)")
    assert "PIVOT" in message and "IN (" in message and "statement" not in message, message


def test_workers_serve_query_after_query_and_a_stopped_query_leaves_no_process(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[sql_worker.Worker] = []
    real_take = sql_worker.take

    def take() -> sql_worker.Worker:
        taken.append(real_take())
        return taken[-1]

    monkeypatch.setattr(sql_worker, "take", take)
    for _ in range(5):
        assert query(files, "SELECT count(*) FROM stars")[0].column(0)[0].as_py() == 1000
    assert len({w.proc.pid for w in taken}) <= 2  # an answer read to its end frees the worker for the next
    runaway = "SELECT sum(a.range * b.range) FROM range(10000000) a, range(10000) b"
    with pytest.raises(engine.QueryTimeout):
        query(files, runaway, timeout_seconds=0.5)
    assert taken[-1].proc.poll() is not None  # killed, not left computing
    with engine.run(tables(files), {}, "SELECT * FROM range(10000000)") as result:
        assert result.take(5)[1] is True
    assert taken[-1].proc.poll() is not None  # an answer closed early ends its worker
    assert query(files, "SELECT 1 AS one")[0].to_pylist() == [{"one": 1}]
