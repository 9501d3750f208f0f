"""Statistics of a table, computed in DuckDB over its Parquet files, once per commit.

Per column: `type` (Arrow's name, the one `/tables` and the viewer show), `count` (rows), `nulls`,
`distinct` (DuckDB's `approx_count_distinct`, an estimate), and by kind:

- numbers: `min`, `max`, `mean`, `std` (population standard deviation, numpy's default ddof=0), over
  the finite values (NaN and ±inf are counted in `non_finite` and left out), and `histogram`:
  `{"edges": [21 numbers], "counts": [20 counts]}` with numpy's rule (equal-width bins from min to max,
  each bin [left, right) but the last [left, right]; when min = max, the range is min-0.5 … max+0.5);
- text and booleans: `top`, the 10 most frequent values with their counts (ties in value order),
  and for text `min`/`max`;
- dates and times: `min`, `max` (ISO 8601);
- anything else (lists, structs, binary): only the counts.

Cached as `HOME/derived/<commit>/stats/<table>.json`, computed under a lock per table.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from opensci.data import formats
from opensci.data.catalog import Table, derived_dir, file_lock, write_json_atomic
from opensci.settings import Settings

STATS_VERSION = 2  # 2: column types named as in /tables (Arrow), not DuckDB
BINS = 20
TOP = 10
_NUMERIC = re.compile(
    r"^(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|UHUGEINT|FLOAT|DOUBLE|DECIMAL.*)$"
)
_FLOAT = ("FLOAT", "DOUBLE")
_TEMPORAL = re.compile(r"^(DATE|TIME.*|TIMESTAMP.*)$")


def table_stats(settings: Settings, commit: str, table: Table) -> dict[str, Any]:
    """`{"table", "num_rows", "columns": [{name, type, count, nulls, distinct, …}]}`, cached per commit."""
    path = _cache_path(settings, commit, table.name)
    cached = _load(path)
    if cached is not None:
        return cached
    with file_lock(path.with_suffix(".lock")):
        cached = _load(path)
        if cached is not None:
            return cached
        result = {"version": STATS_VERSION, **compute(table)}
        write_json_atomic(path, result)
        return result


def _cache_path(settings: Settings, commit: str, name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:100]
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return derived_dir(settings, commit) / "stats" / f"{safe}-{digest}.json"


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if data.get("version") == STATS_VERSION else None


def q(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def connect(table: Table) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the table as view `t` over its Parquet files."""
    con = duckdb.connect(":memory:")
    files = ", ".join("'" + p.replace("'", "''") + "'" for p in table.parquet)
    con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet([{files}])")
    return con


def compute(table: Table) -> dict[str, Any]:
    con = connect(table)
    try:
        described = con.execute("DESCRIBE t").fetchall()
        shown = [c.type for c in table.columns] if len(table.columns) == len(described) else []
        columns = [
            _column(con, str(name), str(typ), shown[i] if shown else str(typ))
            for i, (name, typ, *_) in enumerate(described)
        ]
    finally:
        con.close()
    return {"table": table.name, "num_rows": table.num_rows, "columns": columns}


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> tuple[Any, ...]:
    row = con.execute(sql, params or []).fetchone()
    assert row is not None
    return row


def _column(con: duckdb.DuckDBPyConnection, name: str, typ: str, shown: str) -> dict[str, Any]:
    """Statistics of one column; `typ` is DuckDB's type (which decides what to compute), `shown` the
    type's name in the answer."""
    c = q(name)
    out: dict[str, Any] = {"name": name, "type": shown}
    count, non_null = _one(con, f"SELECT count(*), count({c}) FROM t")
    out.update(count=count, nulls=count - non_null)
    try:
        out["distinct"] = _one(con, f"SELECT approx_count_distinct({c}) FROM t")[0]
    except duckdb.Error:
        out["distinct"] = None
    if _NUMERIC.match(typ):
        out.update(_numeric(con, c, typ))
    elif typ == "VARCHAR" or typ == "BOOLEAN":
        if typ == "VARCHAR":
            lo, hi = _one(con, f"SELECT min({c}), max({c}) FROM t")
            out.update(min=lo, max=hi)
        rows = con.execute(
            f"SELECT {c}, count(*) FROM t WHERE {c} IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {TOP}"
        ).fetchall()
        out["top"] = [{"value": v, "count": n} for v, n in rows]
    elif _TEMPORAL.match(typ):
        lo, hi = _one(con, f"SELECT min({c}), max({c}) FROM t")
        out.update(min=formats.json_value(lo), max=formats.json_value(hi))
    return out


def _numeric(con: duckdb.DuckDBPyConnection, c: str, typ: str) -> dict[str, Any]:
    is_float = typ in _FLOAT
    x = f"CAST({c} AS DOUBLE)"
    where = f"{c} IS NOT NULL" + (f" AND isfinite({c})" if is_float else "")
    lo, hi, mean, std, finite = _one(
        con,
        f"SELECT min({c}), max({c}), avg({x}), stddev_pop({x}), count(*) FROM t WHERE {where}",
    )
    out: dict[str, Any] = {
        "min": formats.json_value(lo),
        "max": formats.json_value(hi),
        "mean": formats.json_value(mean),
        "std": formats.json_value(std),
    }
    if is_float:
        out["non_finite"] = _one(con, f"SELECT count(*) FROM t WHERE {c} IS NOT NULL AND NOT isfinite({c})")[
            0
        ]
    if finite == 0:
        out["histogram"] = None
        return out
    first, last = float(lo), float(hi)
    if first == last:
        first, last = first - 0.5, last + 0.5
    edges = np.linspace(first, last, BINS + 1)
    inner = [float(e) for e in edges[1:-1]]
    bin_expr = " + ".join(f"CAST({x} >= ? AS INTEGER)" for _ in inner)
    rows = con.execute(f"SELECT {bin_expr}, count(*) FROM t WHERE {where} GROUP BY 1", inner).fetchall()
    counts = [0] * BINS
    for b, n in rows:
        counts[int(b)] = int(n)
    out["histogram"] = {"edges": [float(e) for e in edges], "counts": counts}
    return out
