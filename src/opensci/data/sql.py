"""Sandboxed SQL over the tables of a dataset revision, with DuckDB in a worker process per query.

Every query gets a fresh in-memory DuckDB database whose only content is one view per table over the
revision's derived Parquet files (and, for cross-dataset joins, one schema `"owner/name"` per referenced
dataset holding views of its tables). Before the user's SQL runs the database is locked down:

- `allowed_paths` is exactly those Parquet files and `enable_external_access` is off, so nothing else on
  disk or on the network can be read or written (no `read_csv('/etc/passwd')`, no `FROM 'file'`, no
  URLs, no COPY, no ATTACH, no INSTALL);
- extensions are neither auto-installed nor auto-loaded, and `lock_configuration` forbids any SET;
- spilling to disk is disabled (`temp_directory = ''`);
- the statement is parsed by DuckDB's own parser first (here, in the server): exactly one statement, of
  type SELECT (which covers WITH, VALUES, FROM-first, DESCRIBE, SUMMARIZE, and PIVOT/UNPIVOT with their
  values listed), and its syntax tree (`json_serialize_sql`) may only name the revision's tables, CTEs,
  referenced datasets' tables and a few harmless table functions (`range`, `unnest` …) — which also hides
  DuckDB's catalog views and settings (they would reveal server paths).

The query then runs in a worker process (`sql_worker`, `sql_run`) whose memory is capped as a whole —
DuckDB's own `memory_limit` covers only its buffer manager — and which is killed when the time limit
passes, during execution and while a streamed result is being read. The server reads the answer from a
pipe in a worker thread, so the event loop keeps answering other requests.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from opensci.data import sql_worker
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


TIMEOUT_MESSAGE = "the query ran longer than the time limit and was stopped; narrow it down"
MEMORY_MESSAGE = "the query needs more memory than the limit allows; aggregate or filter more, or add LIMIT"


class QueryTimeout(InvalidInput):
    code = "query_timeout"


class QueryFailed(OpenSciError):
    """The worker running the query ended without an answer or an error (a crash in DuckDB, say)."""

    status, code = 500, "query_failed"


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
        written = _statement_name(statements[0].query, kind.name)
        if written in ("PIVOT", "UNPIVOT"):
            raise SqlNotAllowed(
                f"{written} without IN (…) is not available here: DuckDB first stores the column's distinct "
                "values as a new type, and queries here only read; list the values instead: "
                "PIVOT … ON column IN ('a', 'b') USING …"
            )
        raise SqlNotAllowed(f"only queries (SELECT, WITH, VALUES …) are allowed, not {written}")
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


_LEADING_WORDS = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*([A-Za-z]+)(?:\s+([A-Za-z]+))?", re.DOTALL)


def _statement_name(text: str, kind: str) -> str:
    """The statement as the user wrote it (INSTALL, RESET, USE, BEGIN …), not DuckDB's statement type,
    which groups several (LOAD for INSTALL, SET for RESET and USE); the type when the text starts with a
    WITH clause."""
    m = _LEADING_WORDS.match(text)
    if m is None or m.group(1).upper() == "WITH":
        return kind
    first, second = m.group(1).upper(), (m.group(2) or "").upper()
    return f"FORCE {second}" if first == "FORCE" and second else first


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
# Hints DuckDB adds to its errors that point at what the sandbox forbids (settings, extensions, docs).
_HINT = re.compile(
    r"\b(?:SET|RESET|PRAGMA|INSTALL|LOAD|FORCE)\s+['\"\w]"
    r"|(?<![\"'\w])(?i:extensions?|autoload\w*)(?![\"'\w])|(?i:duckdb\.org|for more information)"
)
# A suggestion naming what the sandbox hides ("Did you mean "current_setting"?").
_INTERNAL = re.compile(
    r"(?:Did you mean|Candidate).*\b(?:"
    + "|".join(re.escape(n) for n in [*DENIED_FUNCTIONS, *DENIED_PREFIXES])
    + ")",
    re.IGNORECASE,
)


def _clean(message: str) -> str:
    """A DuckDB error message that only says what is wrong with the query: without server paths, the
    LINE excerpt, "Possible solutions", hints to change settings or load extensions, and suggestions
    ("Did you mean …") that name what the sandbox hides."""
    message = _path_text.sub("<table file>", message)
    message = message.split("\n\nLINE ")[0].split("Possible solutions:")[0]
    message = re.sub(r",? but it exists in the \w+ extension\.?", "", message)
    kept: list[str] = []
    for line in (part.strip() for part in message.splitlines()):
        sentences = [
            s
            for s in re.split(r"(?<=[.!?])\s+", line)
            if s and not _HINT.search(s) and not _INTERNAL.search(s)
        ]
        if sentences:
            kept.append(" ".join(sentences))
    return "\n".join(kept) or message.strip().splitlines()[0]


def error_of(exc: BaseException, timed_out: bool) -> OpenSciError:
    """The reply for a DuckDB error (also when it comes wrapped by Arrow while a result streams)."""
    text = str(exc)
    if timed_out or isinstance(exc, duckdb.InterruptException) or text.startswith("INTERRUPT"):
        return QueryTimeout(TIMEOUT_MESSAGE)
    if isinstance(exc, duckdb.OutOfMemoryException | MemoryError) or "Out of Memory" in text:
        return QueryTooLarge(MEMORY_MESSAGE)
    if isinstance(exc, duckdb.PermissionException):
        return SqlNotAllowed("the query tries to reach files, URLs or settings outside the dataset")
    return InvalidInput(_clean(str(exc)), code="invalid_sql")


def _wire_error(payload: bytes) -> OpenSciError:
    """An error the worker sent back, as the exception it stands for."""
    data = json.loads(payload)
    kinds: dict[str, type[OpenSciError]] = {
        "query_timeout": QueryTimeout,
        "query_too_large": QueryTooLarge,
        "sql_not_allowed": SqlNotAllowed,
    }
    kind = kinds.get(data["code"])
    return kind(data["message"]) if kind else InvalidInput(data["message"], code=data["code"])


class Result:
    """A running query: column names and types, then its rows as Arrow batches (see `sql_formats` for
    JSON, CSV, Parquet and VOTable).

    Always `close()` it (also a context manager); closing cancels the time limit and ends the worker.
    """

    def __init__(self, worker: sql_worker.Worker, deadline: _Deadline, limits: Limits) -> None:
        self._worker = worker
        self._deadline = deadline
        self._stream_bytes = sql_worker.size_bytes(limits.memory_limit) + sql_worker.HEADROOM_BYTES
        self._done = False
        self._closed = False
        self.schema = pa.schema([])
        self.columns: list[str] = []
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
        if self._closed:
            return
        self._closed = True
        self._deadline.cancel()
        sql_worker.done(self._worker)
        callbacks, self._on_close = self._on_close, []
        for fn in callbacks:
            fn()

    def _start(self) -> None:
        """Read the schema (or the query's error)."""
        kind, payload = self._message(self._stream_bytes, MEMORY_MESSAGE)
        if kind == sql_worker.KIND_ERROR:
            raise _wire_error(payload)
        self.schema = pa.ipc.open_stream(payload).schema
        self.columns = list(self.schema.names)

    def _message(self, max_bytes: int, too_large: str) -> tuple[bytes, bytes]:
        try:
            return self._worker.read(max_bytes)
        except sql_worker.MessageTooLarge:
            raise QueryTooLarge(too_large) from None
        except sql_worker.WorkerGone:
            raise self._gone() from None

    def _gone(self) -> OpenSciError:
        """Why the worker ended early: the time limit, memory (the kernel kills with SIGKILL), or else."""
        if self._deadline.fired:
            return QueryTimeout(TIMEOUT_MESSAGE)
        code = self._worker.exit_code()
        if code in (sql_worker.MEMORY_EXIT, -signal.SIGKILL):
            return QueryTooLarge(MEMORY_MESSAGE)
        if code == -signal.SIGALRM:
            return QueryTimeout(TIMEOUT_MESSAGE)
        return QueryFailed(f"the query stopped unexpectedly (its process ended with code {code}); try again")

    def prefetch(self) -> None:
        """Read the first batch now, so that errors of a streaming query surface before a reply starts."""
        batch = self._next()
        if batch is not None:
            self._pending.append(batch)

    def _next(self, max_bytes: int | None = None, too_large: str = MEMORY_MESSAGE) -> pa.RecordBatch | None:
        if self._pending:
            return self._pending.pop(0)
        if self._done:
            return None
        limit = self._stream_bytes if max_bytes is None else min(max_bytes, self._stream_bytes)
        kind, payload = self._message(limit, too_large)
        if kind == sql_worker.KIND_BATCH:
            return pa.ipc.open_stream(payload).read_next_batch()
        if kind == sql_worker.KIND_ERROR:
            raise _wire_error(payload)
        self._done = True
        return None

    def _batches(self, max_bytes: int | None, too_large: str) -> Iterator[pa.RecordBatch]:
        while (batch := self._next(max_bytes, too_large)) is not None:
            if batch.num_rows:
                yield batch

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The rows, batch by batch, as the worker sends them."""
        return self._batches(None, MEMORY_MESSAGE)

    def take(self, limit: int, max_bytes: int = TAKE_MAX_BYTES) -> tuple[pa.Table, bool]:
        """Up to `limit` rows as an Arrow table, and whether more rows were left out. Answers held in
        memory (JSON, VOTable, the web console) are also capped in bytes: beyond `max_bytes`,
        QueryTooLarge (413) says to download CSV or Parquet, which stream."""
        too_large = (
            f"the answer holds more than {max_bytes // 2**20} MiB; download it as CSV or Parquet "
            "(they stream), or select fewer or shorter values"
        )
        got: list[pa.RecordBatch] = []
        count = 0
        size = 0
        truncated = False
        for batch in self._batches(max_bytes, too_large):
            part = batch.slice(0, limit - count) if count + batch.num_rows > limit else batch
            size += part.nbytes
            if size > max_bytes:
                raise QueryTooLarge(too_large)
            got.append(part)
            if part is not batch:
                truncated = True
                break
            count += batch.num_rows
        return pa.Table.from_batches(got, schema=self.schema), truncated


class _Deadline:
    """Kills the worker when the time limit passes."""

    def __init__(self, worker: sql_worker.Worker, seconds: float) -> None:
        self.fired = False
        self._worker = worker
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        self._worker.kill()

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
    """Run one read-only query over `tables` ({name: Parquet files}) and `extra` ({"owner/name": tables})
    in a worker process (see `sql_worker`).

    Blocking: call it in a worker thread. Raises `InvalidInput` (invalid SQL, unknown table),
    `SqlNotAllowed`, `QueryTimeout` or `QueryTooLarge`; the returned `Result` streams the rows and must be
    closed.
    """
    limits = limits or Limits()
    if not sql.strip():
        raise InvalidInput("the query is empty", code="invalid_sql")
    _check(_names(sql), tables, extra)
    sql_worker.size_bytes(limits.memory_limit)  # a bad setting fails here, not in the worker
    request = {
        "tables": {name: [str(p) for p in paths] for name, paths in tables.items()},
        "extra": {
            schema: {name: [str(p) for p in paths] for name, paths in its.items()}
            for schema, its in extra.items()
        },
        "sql": sql,
        "limits": asdict(limits),
    }
    worker = sql_worker.take()
    try:
        worker.send(request)
    except sql_worker.WorkerGone:  # an idle worker that just ended: one more try with a fresh one
        sql_worker.done(worker)
        worker = sql_worker.take()
        try:
            worker.send(request)
        except sql_worker.WorkerGone as exc:
            sql_worker.done(worker)
            raise QueryFailed("no worker process could start the query; try again") from exc
    result = Result(worker, _Deadline(worker, limits.timeout_seconds), limits)
    try:
        result._start()
    except sql_worker.WorkerGone:
        error = result._gone()
        result.close()
        raise error from None
    except BaseException:
        result.close()
        raise
    return result
