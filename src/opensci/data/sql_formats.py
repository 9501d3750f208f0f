"""The answer formats of an SQL query: JSON rows, CSV, Parquet and VOTable, from Arrow batches.

Numbers keep every digit. In JSON, integers of any width (HUGEINT, UHUGEINT, UBIGINT, and DECIMAL(p, 0))
are numbers and decimals with a fractional part are strings (`"12.25"`), as `/rows` writes them
(`formats.json_value`); CSV prints every number exactly; Parquet keeps decimals as decimals (UHUGEINT as
decimal256(39, 0)); VOTable, which has no decimal type, keeps small decimals as doubles and writes the
rest, like unsigned 64-bit integers, as text.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import io
import json
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from opensci.data.formats import exact_column, json_decimal

if TYPE_CHECKING:
    from opensci.data.sql import Result


def _jsonable(value: Any) -> Any:
    """A JSON-safe form of a DuckDB value: NaN/inf as null, decimals exact (see the module docstring),
    times as ISO text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return json_decimal(value)
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
    """Nested and binary columns as JSON / base64 text, for writers that only take flat columns; decimals
    with fractional digits as text in plain notation (Arrow would write 1E-18)."""
    kind = array.type
    if (
        pa.types.is_union(kind)
        or pa.types.is_interval(kind)
        or pa.types.is_duration(kind)
        or _nanoseconds(kind)
        or (pa.types.is_decimal(kind) and kind.scale != 0)
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


def _as_votable_text(kind: pa.DataType) -> bool:
    """Types VOTable cannot hold, written as text: wide decimals, intervals, durations, nanosecond times."""
    return (
        pa.types.is_decimal(kind)
        or pa.types.is_interval(kind)
        or pa.types.is_duration(kind)
        or (_nanoseconds(kind))
    )


def _votable_column(column: pa.ChunkedArray) -> Any:
    from astropy.table import MaskedColumn

    kind = column.type
    widen = {pa.int8(): pa.int16(), pa.uint8(): pa.int16(), pa.uint16(): pa.int32(), pa.uint32(): pa.int64()}
    if kind in widen:  # VOTable has no signed byte nor unsigned integers beyond unsignedByte
        column = column.cast(widen[kind])
    elif pa.types.is_uint64(kind):
        column = _as_text(column)
    elif pa.types.is_decimal(kind) and kind.scale == 0 and kind.precision <= 18:
        column = column.cast(pa.int64())
    elif pa.types.is_decimal(kind) and kind.precision <= 15:  # a double holds 15 digits exactly
        column = column.cast(pa.float64())
    elif _as_votable_text(kind):
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
