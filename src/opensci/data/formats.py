"""Table formats: recognize a data file and convert it to Parquet, streaming where the format allows.

Recognized (by extension, confirmed by content where an extension is ambiguous):

- Parquet (`.parquet`, `.pq`): copied as is (validated by reading its footer);
- CSV and TSV (`.csv`, `.tsv`, `.tab`): `pyarrow.csv.open_csv`, block by block; when a later block does
  not fit the types inferred from the first, the file is read again with every column as text;
- JSON Lines (`.jsonl`, `.ndjson`, and `.json` when its first line is a JSON object on its own):
  `pyarrow.json.open_json`, block by block;
- Arrow IPC and Feather v2 (`.arrow`, `.feather`, `.ipc`): file or stream format, batch by batch;
- FITS (`.fits`, `.fit`, `.fts`): the first binary or ASCII table HDU, memory-mapped and read in row
  chunks; scaled columns (TSCAL/TZERO) come out scaled, unsigned columns unsigned, TNULL values as
  nulls, strings as text, 2-D cells as fixed-size lists and variable-length arrays as lists; cells of
  more dimensions and complex numbers are left out, with the reason in the notes;
- VOTable (`.vot`, `.votable`, and `.xml` with a VOTABLE root): the first table, through astropy
  (VOTable is XML: it is parsed in memory);
- HDF5 (`.h5`, `.hdf5`, `.hdf`, `.he5`): the first clear table, breadth first from the root: a 1-D
  compound dataset (fields become columns), else a group's datasets of one common length (1-D, or 2-D
  as fixed-size lists), read in row chunks.

Every conversion writes to a temporary file next to the destination and renames it into place, so a
reader never sees half a file.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute
import pyarrow.parquet as pq

from opensci.data.reasons import first_line as _first_line

FORMATS: dict[str, str] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",  # a table only when it is JSON Lines (see `sniff`)
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
    ".fits": "fits",
    ".fit": "fits",
    ".fts": "fits",
    ".vot": "votable",
    ".votable": "votable",
    ".xml": "xml",  # a table only when its root is VOTABLE (see `sniff`)
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".hdf": "hdf5",
    ".he5": "hdf5",
}
# Formats read through random access: a stream is first copied to a temporary file.
_RANDOM_ACCESS = {"arrow", "fits", "votable", "hdf5"}
BLOCK_BYTES = 16 * 1024 * 1024  # CSV/JSON block size: types are inferred from the first block
CHUNK_BYTES = 32 * 1024 * 1024  # FITS/HDF5 rows read at a time, in bytes
COPY_BYTES = 8 * 1024 * 1024


class ConversionError(Exception):
    """The file cannot be read as a table; the message says why, for people."""


@dataclass
class Converted:
    num_rows: int
    notes: list[str] = field(default_factory=list)  # e.g. columns left out, and why


def format_of(path: str) -> str | None:
    """The format a repository path claims by its extension (`json` and `xml` still need `sniff`)."""
    name = path.rsplit("/", 1)[-1].lower()
    dot = name.rfind(".")
    return FORMATS.get(name[dot:]) if dot > 0 else None


def sniff(fmt: str, head: bytes) -> str | None:
    """The table format of a `json` or `xml` file from its first bytes (None: not a table); other
    formats are returned as they are."""
    if fmt == "json":
        text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
        if not text.startswith(b"{"):
            return None
        line = text.split(b"\n", 1)[0]
        try:
            return "jsonl" if isinstance(json.loads(line), dict) else None
        except ValueError:
            return None
    if fmt == "xml":
        return "votable" if b"<VOTABLE" in head[:4096].upper() else None
    return fmt


# --- JSON-safe values --------------------------------------------------------------------------------


def json_decimal(d: decimal.Decimal) -> int | str | None:
    """A decimal as JSON keeps every digit of it: a whole number (the type has no fractional digits:
    DECIMAL(p, 0), HUGEINT) as an integer, else as text in plain notation ("1.50", "-0.000001")."""
    if not d.is_finite():
        return None
    exponent = d.as_tuple().exponent
    return int(d) if isinstance(exponent, int) and exponent >= 0 else format(d, "f")


def json_value(v: Any) -> Any:
    """A value of a table cell or a statistic, as JSON can carry it: NaN and infinities become null,
    bytes text (UTF-8) or else `base64:` + base64, dates and times ISO 8601, decimals as `json_decimal`
    (whole numbers as integers, others as exact text), durations seconds; lists and mappings
    recursively."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(b).decode()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, decimal.Decimal):
        return json_decimal(v)
    if isinstance(v, dict):
        return {str(k): json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        # pyarrow gives maps as lists of (key, value) pairs
        return [json_value(x) for x in v]
    if isinstance(v, np.generic):
        return json_value(v.item())
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def exact_column(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """A column Python can hold exactly: nanosecond timestamps and times as ISO text, nanosecond
    durations as seconds (float); other columns as they are (`to_pylist` would fail on the former)."""
    kind = column.type
    if getattr(kind, "unit", "") != "ns":
        return column
    micro = {
        pa.types.is_timestamp(kind): lambda: pa.timestamp("us", tz=kind.tz),
        pa.types.is_time64(kind): lambda: pa.time64("us"),
        pa.types.is_duration(kind): lambda: pa.duration("us"),
    }.get(True)
    if micro is None:
        return column
    try:
        return column.cast(micro())  # exact when no value has digits beyond the microsecond
    except pa.ArrowInvalid:
        pass
    if pa.types.is_duration(kind):
        return pa.compute.divide(column.cast(pa.int64()).cast(pa.float64()), 1e9)
    if pa.types.is_time64(kind):
        return column.cast(pa.string())
    text = pa.compute.strftime(column, format="%Y-%m-%dT%H:%M:%S" + ("%z" if kind.tz else ""))
    return pa.compute.replace_substring_regex(text, r"([+-]\d\d)(\d\d)$", r"\1:\2") if kind.tz else text


def exact_table(table: pa.Table) -> pa.Table:
    return pa.table([exact_column(c) for c in table.columns], names=table.column_names)


# --- conversion --------------------------------------------------------------------------------------


def to_parquet(fmt: str, source: Path | BinaryIO, dest: Path, *, tmp_dir: Path) -> Converted:
    """Convert `source` (a file path, or a readable binary stream read once from its start) in format
    `fmt` to Parquet at `dest`, atomically. Raises ConversionError when it is not a readable table."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=".parquet")
    os.close(fd)
    tmp = Path(tmp_name)
    spooled: Path | None = None
    try:
        if fmt == "parquet":
            out = _copy_parquet(source, tmp)
        else:
            if fmt in _RANDOM_ACCESS and not isinstance(source, Path):
                spooled = _spool(source, tmp_dir)
                source = spooled
            out = _CONVERTERS[fmt](source, tmp)
        os.replace(tmp, dest)
        return out
    except ConversionError:
        raise
    except (pa.ArrowException, ValueError, TypeError, OSError, KeyError, IndexError, UnicodeError) as exc:
        raise ConversionError(f"cannot read as {fmt}: {_first_line(exc)}") from exc
    finally:
        tmp.unlink(missing_ok=True)
        if spooled is not None:
            spooled.unlink(missing_ok=True)


def _spool(stream: BinaryIO, tmp_dir: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="src-")
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(stream, out, COPY_BYTES)
    return Path(name)


def _copy_parquet(source: Path | BinaryIO, tmp: Path) -> Converted:
    if isinstance(source, Path):
        shutil.copyfile(source, tmp)
    else:
        with open(tmp, "wb") as out:
            shutil.copyfileobj(source, out, COPY_BYTES)
    try:
        f = pq.ParquetFile(tmp)
        f.schema_arrow  # noqa: B018 - the schema must convert to Arrow
        return Converted(f.metadata.num_rows)
    except (pa.ArrowException, OSError) as exc:
        raise ConversionError(f"not a valid Parquet file: {_first_line(exc)}") from exc


class _Writer:
    """Batches to one Parquet file; the schema is the first batch's, later batches are cast to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, batch.schema, compression="zstd")
        elif not batch.schema.equals(self.writer.schema):
            batch = batch.cast(self.writer.schema)
        if isinstance(batch, pa.RecordBatch):
            self.writer.write_batch(batch)
        else:
            self.writer.write_table(batch)
        self.rows += batch.num_rows

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None and self.writer is not None:
            self.writer.close()  # the temporary file is removed by the caller

    def close(self, empty_schema: pa.Schema | None = None) -> int:
        if self.writer is None:
            if empty_schema is None:
                raise ConversionError("the file holds no table")
            pq.write_table(empty_schema.empty_table(), self.path)
        else:
            self.writer.close()
        return self.rows


def _open_text(source: Path | BinaryIO) -> Any:
    if isinstance(source, Path):
        return str(source)
    source.seek(0)
    return source


def _csv(source: Path | BinaryIO, tmp: Path, delimiter: str) -> Converted:
    import pyarrow.csv as pacsv

    def run(all_text: list[str] | None) -> int:
        read = pacsv.ReadOptions(block_size=BLOCK_BYTES)
        parse = pacsv.ParseOptions(delimiter=delimiter)
        convert = pacsv.ConvertOptions(
            column_types=dict.fromkeys(all_text, pa.string()) if all_text else None,
            strings_can_be_null=True,  # an empty field is null; a quoted "" stays the empty string
            quoted_strings_can_be_null=False,
        )
        reader = pacsv.open_csv(
            _open_text(source), read_options=read, parse_options=parse, convert_options=convert
        )
        with _Writer(tmp) as w:
            for batch in reader:
                w.write(batch)
            return w.close(reader.schema)

    try:
        return Converted(run(None))
    except pa.ArrowInvalid as exc:
        if "conversion error" not in str(exc).lower() and "in CSV column" not in str(exc):
            raise ConversionError(
                f"not a readable {'TSV' if delimiter == chr(9) else 'CSV'} file: {_first_line(exc)}"
            ) from exc
    # A later block did not fit the types inferred from the first one: everything as text.
    names = _csv_names(source, delimiter)
    return Converted(run(names), ["column types differ along the file: every column read as text"])


def _csv_names(source: Path | BinaryIO, delimiter: str) -> list[str]:
    import pyarrow.csv as pacsv

    reader = pacsv.open_csv(
        _open_text(source),
        parse_options=pacsv.ParseOptions(delimiter=delimiter),
        read_options=pacsv.ReadOptions(block_size=1 << 20),
    )
    return list(reader.schema.names)


def _jsonl(source: Path | BinaryIO, tmp: Path) -> Converted:
    import pyarrow.json as pajson

    try:
        reader = pajson.open_json(_open_text(source), read_options=pajson.ReadOptions(block_size=BLOCK_BYTES))
    except pa.ArrowInvalid as exc:
        raise ConversionError(f"not a readable JSON Lines file: {_first_line(exc)}") from exc
    with _Writer(tmp) as w:
        for batch in reader:
            w.write(batch)
        return Converted(w.close(reader.schema))


def _arrow(source: Path | BinaryIO, tmp: Path) -> Converted:
    assert isinstance(source, Path)
    with pa.memory_map(str(source)) as mm, _Writer(tmp) as w:
        try:
            try:
                fr = pa.ipc.open_file(mm)
                schema = fr.schema
                batches: Iterator[pa.RecordBatch] = (fr.get_batch(i) for i in range(fr.num_record_batches))
            except pa.ArrowInvalid:
                mm.seek(0)
                sr = pa.ipc.open_stream(mm)
                schema, batches = sr.schema, iter(sr)
            for b in batches:
                w.write(b)
        except pa.ArrowInvalid as exc:
            raise ConversionError(f"not a readable Arrow IPC/Feather file: {_first_line(exc)}") from exc
        return Converted(w.close(schema))


# --- numpy columns (FITS, VOTable, HDF5) -------------------------------------------------------------


class _Skip(Exception):
    """A column left out of the table; the message says why."""


def _native(values: np.ndarray) -> np.ndarray:
    if values.dtype.byteorder not in ("=", "|") and values.dtype.kind in "biufcmM":
        return values.astype(values.dtype.newbyteorder("="))
    return values


def _texts(values: np.ndarray) -> list[str | None]:
    out: list[str | None] = []
    for v in values.reshape(-1).tolist():
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        out.append(None if v is None else str(v).rstrip())
    return out


def np_column(values: Any, mask: Any = None) -> pa.Array:
    """One column of numpy values (optionally masked) as an Arrow array; raises _Skip for what a
    table cannot hold well."""
    if isinstance(values, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(values) if mask is None else mask
        values = values.data
    values = np.asarray(values)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim > 1:  # a cell is null only when all of it is masked
            mask = mask.reshape(mask.shape[0], -1).all(axis=1)
        if not mask.any():
            mask = None
    kind = values.dtype.kind
    if values.ndim > 2:
        raise _Skip(f"cells of shape {values.shape[1:]} (more than one dimension)")
    if kind == "c":
        raise _Skip("complex numbers")
    if kind == "V":
        raise _Skip("nested records")
    if values.ndim == 2:
        flat = np_column(values.reshape(-1))
        arr: pa.Array = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
        if mask is not None:
            arr = pa.FixedSizeListArray.from_arrays(flat, values.shape[1], mask=pa.array(mask))
        return arr
    if kind in "SU":
        return pa.array(_texts(values), pa.string(), mask=mask)
    if kind == "O":
        items = values.tolist()
        sample = next((x for x in items if x is not None), None)
        if isinstance(sample, (bytes, str)):
            return pa.array(_texts(values), pa.string(), mask=mask)
        if isinstance(sample, np.ndarray):
            if sample.dtype.kind not in "biufSU" or sample.ndim != 1:
                raise _Skip(f"variable-length cells of {sample.dtype} and shape {sample.shape}")
            items = [None if x is None else _native(np.asarray(x)).tolist() for x in items]
        try:
            return pa.array(items, mask=mask)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise _Skip(f"values of mixed or unsupported types ({_first_line(exc)})") from exc
    return pa.array(_native(values), mask=mask)


def _columns(chunk: dict[str, Any], keep: list[str], notes: list[str], masks: dict[str, Any]) -> pa.Table:
    """Convert a chunk of named numpy columns. On the first chunk (`keep` empty) the columns that
    cannot be converted are dropped and noted; later chunks convert the kept ones."""
    first = not keep
    arrays, names = [], []
    for name, values in chunk.items():
        if not first and name not in keep:
            continue
        try:
            arrays.append(np_column(values, masks.get(name)))
            names.append(name)
        except _Skip as why:
            if not first:
                raise ConversionError(f"column {name!r} changes along the file: {why}") from None
            notes.append(f"column {name!r} left out: {why}")
    if first:
        keep.extend(names)
        if not names:
            raise ConversionError("no column could be read as a table column")
    return pa.Table.from_arrays(arrays, names=names)


def _chunk_rows(row_bytes: int) -> int:
    return max(1, CHUNK_BYTES // max(1, row_bytes))


def _fits(source: Path | BinaryIO, tmp: Path) -> Converted:
    from astropy.io import fits

    assert isinstance(source, Path)
    notes: list[str] = []
    try:
        hdul = fits.open(source, memmap=True, mode="readonly")
    except OSError as exc:
        raise ConversionError(f"not a readable FITS file: {_first_line(exc)}") from exc
    with hdul:
        hdu = next((h for h in hdul if isinstance(h, (fits.BinTableHDU, fits.TableHDU))), None)
        if hdu is None:
            raise ConversionError("the FITS file has no table HDU (only images)")
        cols = hdu.columns
        nrows = int(hdu.header.get("NAXIS2", 0))
        data = hdu.data
        nulls = {c.name: c.null for c in cols if c.null is not None and c.bscale in (None, 1) and not c.bzero}
        keep: list[str] = []
        step = _chunk_rows(int(hdu.header.get("NAXIS1", 1)))
        with _Writer(tmp) as w:
            for start in range(0, max(nrows, 1), step):
                part = data[start : start + step] if data is not None else None
                chunk = {
                    c.name: (part.field(c.name) if part is not None else np.zeros(0, c.dtype)) for c in cols
                }
                masks = {}
                for name, null in nulls.items():
                    v = np.asarray(chunk[name])
                    if v.dtype.kind in "iu" and isinstance(null, (int, np.integer)):
                        masks[name] = v == null
                w.write(_columns(chunk, keep, notes, masks))
            return Converted(w.close(), notes)


def _votable(source: Path | BinaryIO, tmp: Path) -> Converted:
    from astropy.io.votable import parse

    assert isinstance(source, Path)
    notes: list[str] = []
    try:
        vot = parse(str(source), verify="ignore")
        table = vot.get_first_table().to_table(use_names_over_ids=True)
    except (IndexError, ValueError) as exc:
        raise ConversionError(f"not a readable VOTable: {_first_line(exc)}") from exc
    except Exception as exc:  # astropy raises its own parse errors (VOTableSpecError, XML errors)
        raise ConversionError(f"not a readable VOTable: {_first_line(exc)}") from exc
    keep: list[str] = []
    with _Writer(tmp) as w:
        n = len(table)
        for start in range(0, max(n, 1), 100_000):
            part = table[start : start + 100_000]
            chunk = {name: part[name] for name in part.colnames}
            masks = {k: np.ma.getmaskarray(v) for k, v in chunk.items() if hasattr(v, "mask")}
            w.write(_columns({k: np.asarray(v) for k, v in chunk.items()}, keep, notes, masks))
        return Converted(w.close(), notes)


def _hdf5_table(f: Any) -> tuple[str, Any]:
    """Breadth first from the root: ("compound", dataset) or ("group", (group, [dataset names]))."""
    import h5py

    queue = [f]
    while queue:
        group = queue.pop(0)
        names = sorted(group.keys())
        items = [(n, group.get(n, getlink=False)) for n in names]
        datasets = [(n, d) for n, d in items if isinstance(d, h5py.Dataset)]
        for _, d in datasets:
            if d.dtype.names and d.ndim == 1:
                return "compound", d
        by_len: dict[int, list[str]] = {}
        for n, d in datasets:
            if d.ndim in (1, 2) and not d.dtype.names and d.shape[0] > 0:
                by_len.setdefault(d.shape[0], []).append(n)
        if by_len:
            length = max(by_len, key=lambda k: (len(by_len[k]), k))
            return "group", (group, by_len[length])
        queue.extend(d for _, d in items if isinstance(d, h5py.Group))
    raise ConversionError("no table structure found (no compound dataset, no group of equal-length datasets)")


def _hdf5(source: Path | BinaryIO, tmp: Path) -> Converted:
    import h5py

    assert isinstance(source, Path)
    notes: list[str] = []
    try:
        f = h5py.File(source, "r")
    except OSError as exc:
        raise ConversionError(f"not a readable HDF5 file: {_first_line(exc)}") from exc
    with f:
        kind, found = _hdf5_table(f)
        keep: list[str] = []
        with _Writer(tmp) as w:
            if kind == "compound":
                d = found
                notes.append(f"table from compound dataset {d.name}")
                step = _chunk_rows(d.dtype.itemsize)
                for start in range(0, max(d.shape[0], 1), step):
                    part = d[start : start + step]
                    w.write(_columns({n: part[n] for n in d.dtype.names}, keep, notes, {}))
            else:
                group, names = found
                notes.append(f"table from the datasets of group {group.name}: {', '.join(names)}")
                ds = [group[n] for n in names]
                n = ds[0].shape[0]
                width = sum(d.dtype.itemsize * (d.shape[1] if d.ndim == 2 else 1) for d in ds)
                step = _chunk_rows(width)
                for start in range(0, n, step):
                    w.write(
                        _columns(
                            {nm: d[start : start + step] for nm, d in zip(names, ds, strict=True)},
                            keep,
                            notes,
                            {},
                        )
                    )
            return Converted(w.close(), notes)


_CONVERTERS = {
    "csv": lambda s, t: _csv(s, t, ","),
    "tsv": lambda s, t: _csv(s, t, "\t"),
    "jsonl": _jsonl,
    "arrow": _arrow,
    "fits": _fits,
    "votable": _votable,
    "hdf5": _hdf5,
}
