"""Sky columns found by name, and source counts on an RA/Dec grid with DuckDB, checked against numpy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opensci.data import sky
from opensci.data.sky import SkyColumns


@pytest.mark.parametrize(
    ("names", "found"),
    [
        (["id", "ra", "dec"], SkyColumns("ra", "dec")),
        (["RA", "DEC", "mag"], SkyColumns("RA", "DEC")),
        (["ra_deg", "dec_deg"], SkyColumns("ra_deg", "dec_deg")),
        (["RAJ2000", "DEJ2000"], SkyColumns("RAJ2000", "DEJ2000")),
        (["_RAJ2000", "_DEJ2000", "RA_ICRS", "DE_ICRS"], SkyColumns("_RAJ2000", "_DEJ2000")),
        (["RA_ICRS", "_DEJ2000", "DE_ICRS"], SkyColumns("RA_ICRS", "DE_ICRS")),  # same qualifiers pair up
        (["alpha_j2000", "delta_j2000"], SkyColumns("alpha_j2000", "delta_j2000")),
        (["right_ascension", "declination"], SkyColumns("right_ascension", "declination")),
        (["ra_rad", "dec_rad"], SkyColumns("ra_rad", "dec_rad", radians=True)),
        (["ra"], None),
        (["radius", "decay", "delta_t"], None),
        (["range", "dead"], None),
        ([], None),
    ],
)
def test_find_sky_columns_by_name(names: list[str], found: SkyColumns | None) -> None:
    assert sky.find_sky_columns([(n, "DOUBLE") for n in names]) == found


def test_columns_of_other_types_are_not_coordinates() -> None:
    columns = [("ra", "VARCHAR"), ("dec", "DOUBLE"), ("RAdeg", "float64")]
    assert sky.find_sky_columns(columns) == SkyColumns("RAdeg", "dec")
    assert sky.find_sky_columns([{"name": "ra", "type": "int32"}, {"name": "dec", "type": "int64"}]) == (
        SkyColumns("ra", "dec")
    )
    assert sky.find_sky_columns([("ra", "TIMESTAMP"), ("dec", "DOUBLE")]) is None


@pytest.mark.parametrize(
    ("type_name", "numeric"),
    [
        ("DOUBLE", True),
        ("BIGINT", True),
        ("UBIGINT", True),
        ("int32", True),
        ("float64", True),
        ("DECIMAL(10,2)", True),
        ("decimal128(10, 2)", True),
        ("VARCHAR", False),
        ("INTERVAL", False),
        ("TIMESTAMP", False),
        ("string", False),
    ],
)
def test_numeric_types(type_name: str, numeric: bool) -> None:
    assert sky.is_numeric(type_name) is numeric


def _catalogue(tmp_path: Path, n: int = 20_000, seed: int = 7) -> tuple[list[Path], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ra = rng.uniform(-30, 400, n)  # some outside [0, 360): wrapped
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    dec[:5] = [90.0, -90.0, 95.0, np.nan, 0.0]  # the poles count; 95 and NaN do not
    ra[4] = np.inf
    half = n // 2
    files = []
    for k, part in enumerate((slice(0, half), slice(half, n))):
        path = tmp_path / f"part-{k}.parquet"
        pq.write_table(pa.table({"RAJ2000": ra[part], "DEJ2000": dec[part]}), path)
        files.append(path)
    return files, ra, dec


def test_density_grid_matches_numpy(tmp_path: Path) -> None:
    files, ra, dec = _catalogue(tmp_path)
    grid = sky.density_grid(files, SkyColumns("RAJ2000", "DEJ2000"), ra_bins=36, dec_bins=18)
    ok = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90)
    expected, _, _ = np.histogram2d(dec[ok], ra[ok] % 360, bins=[18, 36], range=[[-90, 90], [0, 360]])
    np.testing.assert_array_equal(grid.array(), expected.astype(int))
    assert grid.total == int(ok.sum())
    assert grid.skipped == 3
    assert grid.ra_edges[0] == 0 and grid.ra_edges[-1] == 360 and len(grid.ra_edges) == 37
    assert grid.dec_edges[0] == -90 and grid.dec_edges[-1] == 90 and len(grid.dec_edges) == 19


def test_density_grid_in_radians_and_with_hostile_column_names(tmp_path: Path) -> None:
    name_ra, name_dec = 'ra"; DROP TABLE x; --', "dec rad"
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({name_ra: [math.pi, 0.1], name_dec: [math.pi / 4, -0.2]}), path)
    grid = sky.density_grid([path], SkyColumns(name_ra, name_dec, radians=True), ra_bins=4, dec_bins=2)
    assert grid.array().tolist() == [[1, 0, 0, 0], [0, 0, 1, 0]]


def test_density_grid_of_no_files_and_odd_bins() -> None:
    grid = sky.density_grid([], SkyColumns("ra", "dec"), ra_bins=4, dec_bins=2)
    assert grid.total == 0 and grid.array().shape == (2, 4)
    with pytest.raises(ValueError):
        sky.density_grid([], SkyColumns("ra", "dec"), ra_bins=5)


def test_the_grid_is_cached_per_commit(tmp_path: Path) -> None:
    files, _, _ = _catalogue(tmp_path, n=1000)
    home = tmp_path / "home"
    cols = SkyColumns("RAJ2000", "DEJ2000")
    first = sky.cached_density_grid(home, "c" * 40, "stars", files, cols)
    cached = list((home / "derived" / ("c" * 40) / "sky").glob("*.json"))
    assert len(cached) == 1 and not list(cached[0].parent.glob(".*"))  # no temp file left
    for f in files:
        f.unlink()  # the cache answers without the files
    again = sky.cached_density_grid(home, "c" * 40, "stars", files, cols)
    assert again == first
    # a damaged cache file is recomputed, not trusted
    cached[0].write_text("{not json")
    pq.write_table(pa.table({"RAJ2000": [1.0], "DEJ2000": [1.0]}), files[0])
    recomputed = sky.cached_density_grid(home, "c" * 40, "stars", files[:1], cols)
    assert recomputed.total == 1
    assert json.loads(cached[0].read_text())["total"] == 1
