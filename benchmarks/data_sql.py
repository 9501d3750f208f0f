"""SQL through the API against DuckDB on the same Parquet files directly, in one run.

1. DuckDB's `range()` writes a 100-million-row table (id, grp, x) as 10 Parquet files in a temp dir.
2. A real server (`benchmarks/_server.py`: `opensci serve` in a subprocess, its own OPENSCI_HOME) gets
   them as one commit to a new dataset through the REST API; being larger than the LFS threshold, they
   are stored in the blob store and committed as Git LFS pointers — the path real data takes.
3. One untimed query builds the revision's catalog (the Parquet files are copied to
   `HOME/derived/<commit>/tables/`, once per commit).
4. Timed, alternating, `--runs` times: the aggregate through `POST /api/v1/datasets/…/sql` (HTTP, auth,
   permission check, catalog lookup, a fresh sandboxed DuckDB, JSON reply), and the same SQL in DuckDB
   in this process over the same derived files with the same number of threads (a fresh connection each
   run, so neither side keeps a Parquet metadata cache).

Target (issue 4): median API time <= 1.2x median direct time.
Run: `.venv/bin/python benchmarks/data_sql.py [--rows 100000000] [--files 10] [--runs 5]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._server import Server  # noqa: E402

from opensci.data import sql as engine  # noqa: E402

AGGREGATE = (
    "SELECT grp, count(*) AS n, sum(id) AS s, avg(x) AS mean, max(x) AS top "
    "FROM events GROUP BY grp ORDER BY grp"
)


def generate(folder: Path, rows: int, files: int) -> list[Path]:
    con = duckdb.connect()
    per = rows // files
    out = []
    for i in range(files):
        path = folder / f"events-{i:05d}-of-{files:05d}.parquet"
        start, stop = i * per, rows if i == files - 1 else (i + 1) * per
        con.execute(
            f"COPY (SELECT range AS id, (range % 100)::INTEGER AS grp, (range % 9973) / 7.0 AS x "
            f"FROM range({start}, {stop})) TO '{path}' (FORMAT parquet, PARQUET_VERSION V2)"
        )
        out.append(path)
    con.close()
    return out


def commit(http: httpx.Client, token: str, paths: list[Path]) -> str:
    auth = {"Authorization": f"Bearer {token}"}
    r = http.post("/api/v1/repos", json={"name": "events", "kind": "dataset"}, headers=auth)
    r.raise_for_status()
    handles = [p.open("rb") for p in paths]
    try:
        parts = [
            ("files", (f"data/{p.name}", h, "application/octet-stream"))
            for p, h in zip(paths, handles, strict=True)
        ]
        r = http.post(
            "/api/v1/repos/admin/events/commits", data={"message": "events"}, files=parts, headers=auth
        )
    finally:
        for h in handles:
            h.close()
    r.raise_for_status()
    return r.json()["commit"]


def direct(files: list[Path], threads: int) -> tuple[float, list[tuple[object, ...]]]:
    t0 = time.perf_counter()
    con = duckdb.connect(config={"threads": threads})
    listed = ", ".join(f"'{p}'" for p in files)
    con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet([{listed}])")
    rows = con.execute(AGGREGATE).fetchall()
    con.close()
    return time.perf_counter() - t0, rows


def through_api(http: httpx.Client, token: str) -> tuple[float, list[list[object]]]:
    t0 = time.perf_counter()
    r = http.post(
        "/api/v1/datasets/admin/events/sql",
        json={"sql": AGGREGATE},
        headers={"Authorization": f"Bearer {token}"},
    )
    elapsed = time.perf_counter() - t0
    r.raise_for_status()
    return elapsed, r.json()["rows"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000_000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="opensci-bench-sql-") as tmp, Server() as server:
        t0 = time.perf_counter()
        paths = generate(Path(tmp), args.rows, args.files)
        size = sum(p.stat().st_size for p in paths)
        print(
            f"data: {args.rows:,} rows in {args.files} Parquet files, {size / 1e6:.0f} MB "
            f"(generated in {time.perf_counter() - t0:.1f} s)"
        )
        with httpx.Client(base_url=server.url, timeout=600) as http:
            t0 = time.perf_counter()
            sha = commit(http, server.token, paths)
            print(f"committed through the REST API (LFS) in {time.perf_counter() - t0:.1f} s")
            t0 = time.perf_counter()
            through_api(http, server.token)
            print(f"first query (builds the catalog, copies to derived/) {time.perf_counter() - t0:.1f} s")
            derived = sorted((server.home / "derived" / sha / "tables").rglob("*.parquet"))
            assert len(derived) == args.files, derived
            threads = engine.THREADS
            api_times, direct_times = [], []
            for _ in range(args.runs):
                seconds, api_rows = through_api(http, server.token)
                api_times.append(seconds)
                seconds, direct_rows = direct(derived, threads)
                direct_times.append(seconds)
                assert [tuple(r[:3]) for r in direct_rows] == [tuple(r[:3]) for r in api_rows]
    api, base = statistics.median(api_times), statistics.median(direct_times)
    print(f"aggregate over {args.rows:,} rows ({threads} DuckDB threads each side, median of {args.runs}):")
    print(f"  DuckDB directly      {base * 1000:8.1f} ms")
    print(f"  through the SQL API  {api * 1000:8.1f} ms")
    verdict = "OK" if api / base <= 1.2 else "MISSED"
    print(f"  ratio API / direct   {api / base:8.2f}x   (target <= 1.2x: {verdict})")


if __name__ == "__main__":
    main()
