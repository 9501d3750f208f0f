"""Inside a worker process (`sql_worker`): run one query in the locked-down database and send its answer.

Exactness: DuckDB hands UHUGEINT to Arrow as decimal128(38, 0), which wraps values from 2^127 up to
negative numbers; such columns are sent as decimal256(39, 0), with their true values.
"""

from __future__ import annotations

import contextlib
import decimal
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from opensci.data import sql, sql_worker
from opensci.errors import OpenSciError

Send = Callable[..., None]
_U128 = pa.decimal256(39, 0)
_TWO_128 = pa.scalar(decimal.Decimal(2**128), _U128)
_ZERO = pa.scalar(decimal.Decimal(0), _U128)


def _stream(schema: pa.Schema, batches: list[pa.RecordBatch]) -> pa.Buffer:
    """Batches as a small Arrow IPC stream (with the schema, so dictionaries travel too)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return sink.getvalue()


def _unsigned_128(array: pa.Array) -> pa.Array:
    wide = array.cast(_U128)
    return pc.if_else(pc.less(wide, _ZERO), pc.add(wide, _TWO_128), wide).cast(_U128)


def _exact_schema(schema: pa.Schema, kinds: list[str]) -> pa.Schema:
    for i, kind in enumerate(kinds):
        if kind == "UHUGEINT" and pa.types.is_decimal128(schema.field(i).type):
            schema = schema.set(i, schema.field(i).with_type(_U128))
    return schema


def _exact(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if batch.schema.equals(schema):
        return batch
    columns = [
        _unsigned_128(column) if column.type != field.type else column
        for column, field in zip(batch.columns, schema, strict=True)
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _slices(batch: pa.RecordBatch) -> list[pa.RecordBatch]:
    """The batch cut into pieces of about sql_worker.MESSAGE_BYTES (a piece holds at least one row)."""
    if batch.nbytes <= sql_worker.MESSAGE_BYTES or batch.num_rows <= 1:
        return [batch]
    rows = max(1, batch.num_rows * sql_worker.MESSAGE_BYTES // batch.nbytes)
    return [batch.slice(start, rows) for start in range(0, batch.num_rows, rows)]


def _paths(tables: dict[str, list[str]]) -> dict[str, list[Path]]:
    return {name: [Path(p) for p in paths] for name, paths in tables.items()}


def serve(request: dict[str, Any], send: Send) -> tuple[bytes, dict[str, Any]]:
    """Run `request` ({tables, extra, sql, limits}), send its schema and batches, and return the message
    that ends the answer: (KIND_END, {}) or (KIND_ERROR, {"code", "message"}) (see `sql_worker`)."""
    limits = sql.Limits(**request["limits"])
    # A backstop: the server kills the worker at its deadline; this stops one the server forgot.
    signal.alarm(int(limits.timeout_seconds) + 30)
    con = None
    try:
        sql_worker.cap_memory(sql_worker.size_bytes(limits.memory_limit) + sql_worker.HEADROOM_BYTES)
        extra = {schema: _paths(tables) for schema, tables in request["extra"].items()}
        con = sql.connect(_paths(request["tables"]), extra, limits)
        relation = con.sql(request["sql"])
        kinds = [str(kind) for kind in relation.types]
        reader = relation.to_arrow_reader(sql.BATCH_ROWS)
        schema = _exact_schema(reader.schema, kinds)
        send(sql_worker.KIND_SCHEMA, _stream(schema, []))
        for batch in reader:
            for part in _slices(_exact(batch, schema)):
                send(sql_worker.KIND_BATCH, _stream(schema, [part]))
        return sql_worker.KIND_END, {}
    except BrokenPipeError:
        raise
    except OpenSciError as exc:
        return sql_worker.KIND_ERROR, {"code": exc.code, "message": exc.message}
    except (duckdb.Error, pa.ArrowException, OSError, MemoryError) as exc:
        error = sql.error_of(exc, timed_out=False)
        return sql_worker.KIND_ERROR, {"code": error.code, "message": error.message}
    finally:
        signal.alarm(0)
        if con is not None:
            with contextlib.suppress(duckdb.Error):
                con.close()
