"""Sandboxed SQL over the tables of a dataset revision, with DuckDB in-process.

Every query gets a fresh in-memory DuckDB database whose only content is one view per table over the
revision's derived Parquet files (and, for cross-dataset joins, one schema `"owner/name"` per referenced
dataset holding views of its tables). Before the user's SQL runs the database is locked down:

- `allowed_paths` is exactly those Parquet files and `enable_external_access` is off, so nothing else on
  disk or on the network can be read or written (no `read_csv('/etc/passwd')`, no `FROM 'file'`, no
  URLs, no COPY, no ATTACH, no INSTALL);
- extensions are neither auto-installed nor auto-loaded, and `lock_configuration` forbids any SET;
- spilling to disk is disabled (`temp_directory = ''`), so `memory_limit` is a hard cap;
- the statement is parsed by DuckDB's own parser first: exactly one statement, of type SELECT (which
  covers WITH, VALUES, FROM-first, DESCRIBE and SUMMARIZE), and its syntax tree (`json_serialize_sql`)
  may only name the revision's tables, CTEs, referenced datasets' tables and a few harmless table
  functions (`range`, `unnest` …) — which also hides DuckDB's catalog views and settings (they would
  reveal server paths).

A timer interrupts the connection when the time limit passes (`con.interrupt()`), during execution and
while a streamed result is being read. DuckDB releases the GIL, so callers run `run()` and the result
iterators in a worker thread and the event loop keeps answering other requests.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import decimal
import io
import json
import math
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from opensci.data.formats import exact_column
from opensci.errors import InvalidInput, OpenSciError, PayloadTooLarge

# Defaults of the limits; the server reads them from Settings (see `opensci.data.query.limits`).
TIMEOUT_SECONDS = 30.0
MEMORY_LIMIT = "1GB"
THREADS = min(4, os.cpu_count() or 1)
JSON_ROW_LIMIT = 1000
VOTABLE_ROW_LIMIT = 1_000_000
BATCH_ROWS = 65_536

# Table functions a query may call: they compute, they never read anything.
ALLOWED_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest", "json_each", "json_tree"})
# Scalar functions that reveal the server's configuration, environment or paths.
DENIED_FUNCTIONS = frozenset(
    {"current_setting", "getenv", "current_schemas", "current_database", "current_catalog", "query"}
)
DENIED_PREFIXES = ("duckdb_", "pragma_", "sqlite_", "pg_", "information_schema")
ALLOWED_SHOWS = frozenset({"DESCRIBE", "SUMMARY"})
DATASET_SCHEMA = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[^\s\"]+)?$")


class QueryTimeout(InvalidInput):
    code = "query_timeout"


class QueryTooLarge(PayloadTooLarge):
    code = "query_too_large"


TAKE_MAX_BYTES = 64 * 2**20  # Arrow bytes of an answer built in memory (JSON, VOTable, web console)


class SqlNotAllowed(InvalidInput):
    code = "sql_not_allowed"


@dataclass(frozen=True)
class Limits:
    timeout_seconds: float = TIMEOUT_SECONDS
    memory_limit: str = MEMORY_LIMIT
    threads: int = THREADS
    json_rows: int = JSON_ROW_LIMIT
    votable_rows: int = VOTABLE_ROW_LIMIT


# --- parsing ---------------------------------------------------------------------------------------------

_parser_lock = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None


def _parse_tree(sql: str) -> dict[str, Any]:
    """DuckDB's syntax tree of `sql`, which must be exactly one SELECT statement."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise InvalidInput(_clean(str(exc)), code="invalid_sql") from exc
    if len(statements) != 1:
        raise SqlNotAllowed(f"send exactly one SQL statement, not {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise SqlNotAllowed(f"only queries (SELECT, WITH, VALUES …) are allowed, not {kind.name}")
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = duckdb.connect(":memory:", config={"autoload_known_extensions": False})
            _parser.execute("SET enable_external_access = false")
            _parser.execute("SET lock_configuration = true")
        row = _parser.execute("SELECT json_serialize_sql($1::VARCHAR)", [sql]).fetchone()
    tree = json.loads(row[0]) if row else {"error": True}
    if tree.get("error"):
        message = tree.get("error_message", "cannot parse the query")
        raise SqlNotAllowed(f"only plain queries are allowed: {message}")
    return tree


@dataclass
class _Names:
    tables: list[tuple[str, str, str]] = field(default_factory=list)  # (catalog, schema, name)
    ctes: set[str] = field(default_factory=set)
    table_functions: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    shows: list[tuple[str, str]] = field(default_factory=list)  # (show_type, name)


def _walk(node: Any, names: _Names) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, names)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind == "BASE_TABLE":
        names.tables.append((node.get("catalog_name", ""), node.get("schema_name", ""), node["table_name"]))
    elif kind == "TABLE_FUNCTION":
        names.table_functions.add(str(node.get("function", {}).get("function_name", "")).lower())
    elif kind == "SHOW_REF":
        names.shows.append((str(node.get("show_type")), str(node.get("table_name", ""))))
    if node.get("class") == "FUNCTION":
        names.functions.add(str(node.get("function_name", "")).lower())
    cte_map = node.get("cte_map")
    if isinstance(cte_map, dict):
        for entry in cte_map.get("map", []):
            names.ctes.add(str(entry.get("key", "")).lower())
    for value in node.values():
        if isinstance(value, dict | list):
            _walk(value, names)


def _names(sql: str) -> _Names:
    names = _Names()
    try:
        tree = _parse_tree(sql)
        _walk(tree, names)
    except RecursionError:
        raise SqlNotAllowed("the query is nested too deeply; simplify it") from None
    return names


def referenced_datasets(sql: str) -> set[str]:
    """The other datasets a query names as `"owner/name".table` (or `"owner/name@rev".table`)."""
    return {schema for _, schema, _ in _names(sql).tables if "/" in schema}


def _check(names: _Names, tables: Mapping[str, Sequence[Path]], extra: Mapping[str, Any]) -> None:
    known = {t.lower() for t in tables}
    for show, target in names.shows:
        if show not in ALLOWED_SHOWS:
            raise SqlNotAllowed(f"SHOW {target.strip(chr(34))} is not available; query the tables instead")
    for fn in names.table_functions:
        if fn not in ALLOWED_TABLE_FUNCTIONS:
            raise SqlNotAllowed(
                f"table function {fn}() is not available; "
                f"query the dataset's tables or {', '.join(sorted(ALLOWED_TABLE_FUNCTIONS))}"
            )
    for fn in names.functions:
        if fn in DENIED_FUNCTIONS or fn.startswith(DENIED_PREFIXES):
            raise SqlNotAllowed(f"function {fn}() is not available")
    for catalog, schema, name in names.tables:
        low = name.lower()
        shown = f"{schema}.{name}" if schema else name
        if catalog not in ("", "memory") or low.startswith(DENIED_PREFIXES) or "/" in low:
            raise SqlNotAllowed(f"unknown table {shown}")
        if schema and "/" in schema:
            if schema not in extra:
                raise SqlNotAllowed(f"unknown dataset {schema}")
            continue
        if schema not in ("", "main") or (low not in known and (schema or low not in names.ctes)):
            raise InvalidInput(
                f"unknown table {shown}; tables of this revision: {', '.join(sorted(tables)) or 'none'}",
                code="table_not_found",
            )


# --- running ---------------------------------------------------------------------------------------------


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _views(schema: str | None, tables: Mapping[str, Sequence[Path]]) -> list[str]:
    prefix = f"{_ident(schema)}." if schema else ""
    out = []
    for table, paths in tables.items():
        if paths:
            files = ", ".join(_literal(str(Path(p).resolve())) for p in paths)
            out.append(f"CREATE VIEW {prefix}{_ident(table)} AS SELECT * FROM read_parquet([{files}])")
    return out


_path_text = re.compile(r"(/[^\s'\"]*)+\.parquet")


def _clean(message: str) -> str:
    """A DuckDB error message without server paths and without DuckDB's "Did you mean" about internals."""
    message = _path_text.sub("<table file>", message)
    return message.split("\n\nLINE ")[0].strip()


def _error(exc: BaseException, timed_out: bool) -> OpenSciError:
    """The reply for a DuckDB error (also when it comes wrapped by Arrow while a result streams)."""
    text = str(exc)
    if timed_out or isinstance(exc, duckdb.InterruptException) or text.startswith("INTERRUPT"):
        return QueryTimeout("the query ran longer than the time limit and was stopped; narrow it down")
    if isinstance(exc, duckdb.OutOfMemoryException) or "Out of Memory" in text:
        return QueryTooLarge(
            "the query needs more memory than the limit allows; aggregate or filter more, or add LIMIT"
        )
    if isinstance(exc, duckdb.PermissionException):
        return SqlNotAllowed("the query tries to reach files, URLs or settings outside the dataset")
    return InvalidInput(_clean(str(exc)), code="invalid_sql")


class Result:
    """A running query: column names and types, then its rows as JSON, Arrow batches, CSV or Parquet.

    Always `close()` it (also a context manager); closing cancels the time limit and frees the database.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, reader: pa.RecordBatchReader, timer: _Deadline):
        self._con = con
        self._reader = reader
        self._deadline = timer
        self.schema: pa.Schema = reader.schema
        self.columns: list[str] = list(reader.schema.names)
        self._pending: list[pa.RecordBatch] = []
        self._on_close: list[Callable[[], None]] = []

    def on_close(self, fn: Callable[[], None]) -> None:
        """Call `fn` once, when the result is closed (a concurrency slot, say)."""
        self._on_close.append(fn)

    def __enter__(self) -> Result:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._deadline.cancel()
        with contextlib.suppress(duckdb.Error):
            self._con.close()
        callbacks, self._on_close = self._on_close, []
        for fn in callbacks:
            fn()

    def prefetch(self) -> None:
        """Read the first batch now, so that errors of a streaming query surface before a reply starts."""
        batch = self._next()
        if batch is not None:
            self._pending.append(batch)

    def _next(self) -> pa.RecordBatch | None:
        if self._pending:
            return self._pending.pop(0)
        try:
            return self._reader.read_next_batch()
        except StopIteration:
            return None
        except (duckdb.Error, pa.ArrowException, OSError) as exc:
            raise _error(exc, self._deadline.fired) from exc

    def batches(self) -> Iterator[pa.RecordBatch]:
        while (batch := self._next()) is not None:
            if batch.num_rows:
                yield batch

    def take(self, limit: int, max_bytes: int = TAKE_MAX_BYTES) -> tuple[pa.Table, bool]:
        """Up to `limit` rows as an Arrow table, and whether more rows were left out. Answers held in
        memory (JSON, VOTable, the web console) are also capped in bytes: beyond `max_bytes`,
        QueryTooLarge (413) says to download CSV or Parquet, which stream."""
        got: list[pa.RecordBatch] = []
        count = 0
        size = 0
        truncated = False
        for batch in self.batches():
            part = batch.slice(0, limit - count) if count + batch.num_rows > limit else batch
            size += part.nbytes
            if size > max_bytes:
                raise QueryTooLarge(
                    f"the answer holds more than {max_bytes // 2**20} MiB; download it as CSV or Parquet "
                    "(they stream), or select fewer or shorter values"
                )
            got.append(part)
            if part is not batch:
                truncated = True
                break
            count += batch.num_rows
        return pa.Table.from_batches(got, schema=self.schema), truncated


class _Deadline:
    def __init__(self, con: duckdb.DuckDBPyConnection, seconds: float) -> None:
        self.fired = False
        self._con = con
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        with contextlib.suppress(duckdb.Error):
            self._con.interrupt()

    def cancel(self) -> None:
        self._timer.cancel()


def connect(
    tables: Mapping[str, Sequence[Path]],
    extra: Mapping[str, Mapping[str, Sequence[Path]]],
    limits: Limits,
) -> duckdb.DuckDBPyConnection:
    """A fresh, locked-down in-memory database with a view per table (see the module docstring)."""
    con = duckdb.connect(
        ":memory:",
        config={
            "autoload_known_extensions": False,
            "autoinstall_known_extensions": False,
            "allow_community_extensions": False,
            "allow_unsigned_extensions": False,
            "threads": max(1, limits.threads),
            "memory_limit": limits.memory_limit,
            "temp_directory": "",
        },
    )
    try:
        statements = _views(None, tables)
        for schema, its_tables in extra.items():
            statements.append(f"CREATE SCHEMA {_ident(schema)}")
            statements.extend(_views(schema, its_tables))
        for statement in statements:
            con.execute(statement)
        every = [tables, *extra.values()]
        files = sorted({str(Path(p).resolve()) for t in every for ps in t.values() for p in ps})
        con.execute(f"SET allowed_paths = [{', '.join(_literal(f) for f in files)}]")
        con.execute("SET allowed_directories = []")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def run(
    tables: Mapping[str, Sequence[Path]],
    extra: Mapping[str, Mapping[str, Sequence[Path]]],
    sql: str,
    limits: Limits | None = None,
) -> Result:
    """Run one read-only query over `tables` ({name: Parquet files}) and `extra` ({"owner/name": tables}).

    Blocking: call it in a worker thread. Raises `InvalidInput` (invalid SQL, unknown table),
    `SqlNotAllowed`, `QueryTimeout` or `QueryTooLarge`; the returned `Result` streams the rows and must be
    closed.
    """
    limits = limits or Limits()
    if not sql.strip():
        raise InvalidInput("the query is empty", code="invalid_sql")
    _check(_names(sql), tables, extra)
    con = connect(tables, extra, limits)
    deadline = _Deadline(con, limits.timeout_seconds)
    try:
        reader = con.sql(sql).to_arrow_reader(BATCH_ROWS)
    except (duckdb.Error, pa.ArrowException, OSError) as exc:
        deadline.cancel()
        con.close()
        raise _error(exc, deadline.fired) from exc
    except BaseException:
        deadline.cancel()
        con.close()
        raise
    return Result(con, reader, deadline)


# --- result formats --------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """A JSON-safe form of a DuckDB value: NaN/inf as null, decimals as floats, times as ISO text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, pa.MonthDayNano):  # an interval, as ISO 8601
        return f"P{value.months}M{value.days}DT{value.nanoseconds / 1e9:g}S"
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if value and all(isinstance(item, tuple) and len(item) == 2 for item in value):  # Arrow maps
            return {str(k): _jsonable(v) for k, v in value}
        return [_jsonable(item) for item in value]
    return str(value)


def _nanoseconds(kind: pa.DataType) -> bool:
    """Temporal types Python cannot hold exactly (datetime has microseconds): written as ISO text."""
    return (pa.types.is_timestamp(kind) or pa.types.is_time64(kind) or pa.types.is_duration(kind)) and (
        getattr(kind, "unit", "") == "ns"
    )


def _as_text(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Any column as text: ISO for nanosecond times, JSON for nested values, str() for the rest."""
    if _nanoseconds(array.type) and not pa.types.is_duration(array.type):
        exact = exact_column(pa.chunked_array(array))
        if pa.types.is_string(exact.type):
            return exact.combine_chunks()
        array = exact
    if pa.types.is_duration(array.type):
        seconds = pa.chunked_array(array).cast(pa.int64()).to_pylist()
        unit = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[array.type.unit]
        return pa.array([None if v is None else f"PT{v / unit:.9g}S" for v in seconds], pa.string())
    out = []
    for v in array.to_pylist():
        value = _jsonable(v) if v is not None else None
        out.append(
            None if value is None else json.dumps(value) if isinstance(value, dict | list) else str(value)
        )
    return pa.array(out, pa.string())


def json_rows(table: pa.Table) -> list[list[Any]]:
    columns = [exact_column(column).to_pylist() for column in table.columns]
    return [[_jsonable(v) for v in row] for row in zip(*columns, strict=True)] if columns else []


def _flat(array: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Nested and binary columns as JSON / base64 text, for writers that only take flat columns."""
    kind = array.type
    if (
        pa.types.is_union(kind)
        or pa.types.is_interval(kind)
        or pa.types.is_duration(kind)
        or _nanoseconds(kind)
    ):
        return _as_text(array)
    if pa.types.is_nested(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        values = [None if v is None else json.dumps(_jsonable(v)) for v in array.to_pylist()]
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            values = [None if v is None else json.loads(v) for v in values]
        return pa.array(values, pa.string())
    return array


def _flat_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([_flat(c) for c in batch.columns], names=batch.schema.names)


class _Sink(io.RawIOBase):
    """A write-only file whose bytes are taken out after each batch, so a reply streams."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        return len(chunk)

    def drain(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def csv_chunks(result: Result) -> Iterator[bytes]:
    """The whole result as CSV with a header row, written batch by batch."""
    sink = _Sink()
    writer: pacsv.CSVWriter | None = None
    for batch in result.batches():
        flat = _flat_batch(batch)
        if writer is None:
            writer = pacsv.CSVWriter(sink, flat.schema)
        writer.write_batch(flat)
        yield sink.drain()
    if writer is None:  # no rows: the header alone
        header = pa.schema([pa.field(n, pa.string()) for n in result.columns])
        writer = pacsv.CSVWriter(sink, header)
    writer.close()
    yield sink.drain()


def _parquet_ready(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Columns Parquet cannot hold (unions, intervals) as text; everything else as it is."""
    columns = [
        _as_text(c) if pa.types.is_union(c.type) or pa.types.is_interval(c.type) else c for c in batch.columns
    ]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def parquet_chunks(result: Result) -> Iterator[bytes]:
    """The whole result as one Parquet file, one row group per batch."""
    sink = _Sink()
    writer: pq.ParquetWriter | None = None
    for batch in result.batches():
        ready = _parquet_ready(batch)
        if writer is None:
            writer = pq.ParquetWriter(sink, ready.schema, compression="zstd")
        writer.write_batch(ready)
        yield sink.drain()
    if writer is None:  # no rows: the schema alone
        empty = pa.RecordBatch.from_pylist([], schema=result.schema)
        writer = pq.ParquetWriter(sink, _parquet_ready(empty).schema, compression="zstd")
    writer.close()
    yield sink.drain()


def _votable_column(column: pa.ChunkedArray) -> Any:
    from astropy.table import MaskedColumn

    kind = column.type
    widen = {pa.int8(): pa.int16(), pa.uint8(): pa.int16(), pa.uint16(): pa.int32(), pa.uint32(): pa.int64()}
    if kind in widen:  # VOTable has no signed byte nor unsigned integers beyond unsignedByte
        column = column.cast(widen[kind])
    elif pa.types.is_uint64(kind):
        column = _as_text(column)
    elif pa.types.is_decimal(kind):
        column = column.cast(pa.float64())
    elif pa.types.is_interval(kind) or pa.types.is_duration(kind) or _nanoseconds(kind):
        column = _as_text(column)
    elif pa.types.is_temporal(kind):
        column = column.cast(pa.string())
    elif not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        column = _flat(column).cast(pa.string())
    mask = column.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        values = np.array(column.fill_null("").to_pylist(), dtype=str)
    elif pa.types.is_boolean(column.type):
        values = np.array(column.fill_null(False).to_pylist(), dtype=bool)
    else:
        values = column.fill_null(0).to_numpy()
    return MaskedColumn(values, mask=mask)


def votable_bytes(table: pa.Table, truncated: bool) -> bytes:
    """The rows as a VOTable (astropy); a truncated answer says so with INFO QUERY_STATUS=OVERFLOW."""
    from astropy.io.votable import from_table
    from astropy.io.votable.tree import Info
    from astropy.table import Table

    names = [name or f"col{i}" for i, name in enumerate(table.column_names)]
    at = Table([_votable_column(c) for c in table.columns], names=names)
    votable = from_table(at)
    status = "OVERFLOW" if truncated else "OK"
    votable.resources[0].infos.append(Info(name="QUERY_STATUS", value=status))
    out = io.BytesIO()
    votable.to_xml(out)
    return out.getvalue()
