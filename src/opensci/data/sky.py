"""Sky coordinates in tables: find the right ascension and declination columns by their names, and count
sources on an RA/Dec grid with DuckDB over the table's Parquet files (for the viewer's sky map).

Names recognized (case-insensitive, a leading `_` ignored, as VizieR writes computed columns): a stem
`ra`, `alpha`, `right_ascension` (RA) and `dec`, `de`, `delta`, `declination` (Dec), optionally followed by
qualifiers such as `j2000`, `icrs`, `fk5`, `deg`, with or without `_` (`ra_deg`, `RAJ2000`,
`DE_ICRS`, `alpha_j2000`). A qualifier `rad` means radians. When several pairs exist, an RA and a Dec
with the same qualifiers are paired first (`raj2000` with `dej2000`), in column order.

Grids are derived data: computed once per commit and table, cached as JSON under
`HOME/derived/<commit>/sky/`, written atomically so concurrent requests and processes are safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

RA_STEMS = ("right_ascension", "rightascension", "alpha", "ra")
DEC_STEMS = ("declination", "delta", "dec", "de")
_QUALIFIERS = ("j2000", "b1950", "icrs", "fk5", "fk4", "2000", "deg", "rad", "obs")
_NUMERIC = re.compile(
    r"^(u?(tiny|small|big|huge)?int(eger)?\d*|float\d*|double( precision)?|real|halffloat"
    r"|(decimal\d*|numeric)(\(\d+(,\s*\d+)?\))?)$",
    re.I,
)
DEFAULT_RA_BINS = 72  # 5° cells
DEFAULT_DEC_BINS = 36
CACHE_VERSION = 1


@dataclass(frozen=True)
class SkyColumns:
    ra: str
    dec: str
    radians: bool = False  # the values are in radians, not degrees


@dataclass
class SkyGrid:
    """Sources counted on a grid: `counts[i][j]` in Dec bin i and RA bin j (degrees)."""

    counts: list[list[int]]
    ra_edges: list[float]
    dec_edges: list[float]
    total: int  # sources on the grid
    skipped: int  # rows without a valid position (null, not finite, |dec| > 90)

    def array(self) -> np.ndarray:
        return np.asarray(self.counts, dtype=np.int64)


def _qualifiers(rest: str) -> tuple[str, ...] | None:
    """`_j2000_deg` → ("j2000", "deg"); None when `rest` is not made of known qualifiers."""
    out: list[str] = []
    rest = rest.lstrip("_")
    while rest:
        for q in _QUALIFIERS:
            if rest.startswith(q):
                out.append(q)
                rest = rest[len(q) :].lstrip("_")
                break
        else:
            return None
    return tuple(out)


def _parse(name: str, stems: Sequence[str]) -> tuple[str, ...] | None:
    low = name.lower().lstrip("_")
    for stem in stems:
        if low.startswith(stem):
            quals = _qualifiers(low[len(stem) :])
            if quals is not None:
                return quals
    return None


def _name_and_type(column: Any) -> tuple[str, str]:
    if isinstance(column, tuple | list):
        return str(column[0]), str(column[1]) if len(column) > 1 else ""
    if isinstance(column, dict):
        return str(column["name"]), str(column.get("type", ""))
    return str(column.name), str(getattr(column, "type", ""))


def is_numeric(type_name: str) -> bool:
    """A DuckDB or Arrow numeric type name (INTEGER, BIGINT, DOUBLE, float64, int32, DECIMAL(10,2) …)."""
    return bool(_NUMERIC.search(type_name.strip()))


def find_sky_columns(columns: Iterable[Any]) -> SkyColumns | None:
    """The RA and Dec columns of a table, or None. `columns`: (name, type) pairs, dicts with `name` and
    `type`, or objects with those attributes; a column with a known, non-numeric type is not a candidate."""
    ras: list[tuple[str, tuple[str, ...]]] = []
    decs: list[tuple[str, tuple[str, ...]]] = []
    for column in columns:
        name, type_name = _name_and_type(column)
        if type_name and not is_numeric(type_name):
            continue
        if (q := _parse(name, RA_STEMS)) is not None:
            ras.append((name, q))
        elif (q := _parse(name, DEC_STEMS)) is not None:
            decs.append((name, q))
    if not ras or not decs:
        return None
    pair = next(((r, d) for r in ras for d in decs if r[1] == d[1]), (ras[0], decs[0]))
    (ra, ra_q), (dec, dec_q) = pair
    return SkyColumns(ra, dec, radians="rad" in ra_q and "rad" in dec_q)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def density_grid(
    parquet: Sequence[Path | str],
    sky: SkyColumns,
    *,
    ra_bins: int = DEFAULT_RA_BINS,
    dec_bins: int = DEFAULT_DEC_BINS,
    threads: int = 2,
    memory_limit: str = "512MB",
) -> SkyGrid:
    """Count the rows of the Parquet files on a `dec_bins` x `ra_bins` grid over the whole sky.

    RA is wrapped into [0, 360); Dec must be within [-90, 90] (90 falls in the top bin)."""
    if ra_bins < 2 or ra_bins % 2 or dec_bins < 1:
        raise ValueError("need an even number (≥ 2) of RA bins, so that RA 180° is a cell edge")
    ra_edges = [360.0 * j / ra_bins for j in range(ra_bins + 1)]
    dec_edges = [-90.0 + 180.0 * i / dec_bins for i in range(dec_bins + 1)]
    counts = np.zeros((dec_bins, ra_bins), dtype=np.int64)
    if not parquet:
        return SkyGrid(counts.tolist(), ra_edges, dec_edges, 0, 0)
    scale = 180.0 / np.pi if sky.radians else 1.0
    ra, dec = quote_ident(sky.ra), quote_ident(sky.dec)
    sql = f"""
        WITH pos AS (
            SELECT CAST({ra} AS DOUBLE) * {scale!r} AS ra, CAST({dec} AS DOUBLE) * {scale!r} AS dec
            FROM read_parquet($files)
        ), valid AS (
            SELECT ((ra % 360) + 360) % 360 AS ra, dec FROM pos
            WHERE isfinite(ra) AND isfinite(dec) AND dec BETWEEN -90 AND 90
        )
        SELECT least(CAST(floor((dec + 90) / 180 * {dec_bins}) AS INTEGER), {dec_bins - 1}) AS i,
               least(CAST(floor(ra / 360 * {ra_bins}) AS INTEGER), {ra_bins - 1}) AS j,
               count(*) AS n
        FROM valid GROUP BY ALL
    """
    con = duckdb.connect(":memory:", config={"threads": threads, "memory_limit": memory_limit})
    try:
        files = [str(p) for p in parquet]
        cells = con.execute(sql, {"files": files}).fetchall()
        (rows,) = con.execute("SELECT count(*) FROM read_parquet($files)", {"files": files}).fetchone() or (
            0,
        )
    finally:
        con.close()
    for i, j, n in cells:
        counts[i, j] += n
    total = int(counts.sum())
    return SkyGrid(counts.tolist(), ra_edges, dec_edges, total, int(rows) - total)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_density_grid(
    home: Path,
    commit: str,
    table: str,
    parquet: Sequence[Path | str],
    sky: SkyColumns,
    *,
    ra_bins: int = DEFAULT_RA_BINS,
    dec_bins: int = DEFAULT_DEC_BINS,
) -> SkyGrid:
    """`density_grid`, computed once per commit, table and columns: cached under
    `home/derived/<commit>/sky/<key>.json`. Two processes racing compute the same thing; the last
    rename wins, and a reader sees either no file or a whole one."""
    key = json.dumps([CACHE_VERSION, table, sky.ra, sky.dec, sky.radians, ra_bins, dec_bins])
    path = home / "derived" / commit / "sky" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return SkyGrid(**data)
    except (FileNotFoundError, ValueError, TypeError):
        pass
    grid = density_grid(parquet, sky, ra_bins=ra_bins, dec_bins=dec_bins)
    _atomic_write(path, json.dumps(grid.__dict__))
    return grid
