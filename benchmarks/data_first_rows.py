"""Time to first rows of a 1 GiB Parquet file through the dataset viewer API (issue 4; target < 300 ms).

One real server subprocess (`benchmarks/_server.py`: `opensci serve`, SQLite, its own OPENSCI_HOME).
A Parquet file of about `--size` bytes (random doubles and an id column; incompressible, default row
groups of 1 Mi rows) is uploaded with the SDK into a dataset, so it is a Git LFS file whose bytes live
in the blob store. Then, with curl-like single requests (httpx, new connection each):

0. the server first answers one rows request on the demo dataset, so its process is warm (modules
   imported, FastAPI's routes set up, thread pools started) as on a server that has been running;
1. cold: the very first `GET …/tables/big/rows?limit=100` after the commit. It includes building the
   revision's catalog (the Parquet footer is read in place, from the blob store; the file is copied to
   `derived/<commit>/` only when statistics or SQL first need it) and reading the rows in place;
2. warm: the same request again, `--runs` times (median and worst): catalog read from
   `catalog.json`, permission check, one row group opened, 100 rows decoded and sent as JSON;
3. warm, deep pages: 100 rows at random offsets across the file (median and worst);
4. as a baseline in the same run: pyarrow reading the same 100 rows straight from the local file in
   this process, so the ratio shows what the server adds.

The target (< 300 ms) applies to 1 and 2.

Run: `.venv/bin/python benchmarks/data_first_rows.py [--size 1G] [--runs 20]`.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._server import Server  # noqa: E402
from benchmarks.storage_throughput import parse_size  # noqa: E402

from opensci.client import Client  # noqa: E402
from opensci.demo import ORG  # noqa: E402

COLUMNS = 15
TARGET_MS = 300.0


def write_parquet(path: Path, size: int) -> int:
    """Random doubles and an int64 id: (COLUMNS + 1) * 8 bytes a row, about `size` bytes in all."""
    rows = max(1, size // ((COLUMNS + 1) * 8))
    rng = np.random.default_rng(4)
    schema = pa.schema([("id", pa.int64())] + [(f"c{i}", pa.float64()) for i in range(COLUMNS)])
    step = 1 << 20
    with pq.ParquetWriter(path, schema, compression="snappy") as w:
        for start in range(0, rows, step):
            n = min(step, rows - start)
            cols = [pa.array(np.arange(start, start + n))] + [pa.array(rng.random(n)) for _ in range(COLUMNS)]
            w.write_table(pa.Table.from_arrays(cols, schema=schema))
    return rows


def timed_get(url: str, params: dict[str, int], headers: dict[str, str]) -> tuple[float, httpx.Response]:
    t0 = time.perf_counter()
    r = httpx.get(url, params=params, headers=headers, timeout=600)
    return (time.perf_counter() - t0) * 1000, r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="Parquet file size (e.g. 1G, 200M)")
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="opensci-bench-data-"))
    src = work / "big.parquet"
    t0 = time.perf_counter()
    rows = write_parquet(src, size)
    os.sync()  # the test file's write-back would otherwise slow down every figure below
    real = src.stat().st_size
    groups = pq.ParquetFile(src).metadata.num_row_groups
    took = time.perf_counter() - t0
    print(
        f"Parquet file: {real / 2**30:.2f} GiB, {rows:,} rows, {groups} row groups (written in {took:.1f} s)"
    )
    try:
        run(args.runs, src, rows, real)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(runs: int, src: Path, rows: int, real: int) -> None:
    with Server() as server:
        headers = {"Authorization": f"Bearer {server.token}"}
        with Client(server.url, server.token, timeout=600) as c:
            c.create_repo("admin/bench-data", kind="dataset", exist_ok=True)
            t0 = time.perf_counter()
            sha = c.upload("admin/bench-data", src, "data/big.parquet", message="a big table")
            print(f"uploaded through the SDK in {time.perf_counter() - t0:.1f} s (commit {sha[:12]})")
        demo = f"{server.url}/api/v1/datasets/{ORG}/star-sample/tables/stars/rows"
        first, r = timed_get(demo, {"limit": 100}, headers)
        assert r.status_code == 200, r.text
        url = f"{server.url}/api/v1/datasets/admin/bench-data/tables/big/rows"
        cold, r = timed_get(url, {"limit": 100}, headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["num_rows"] == rows and len(body["rows"]) == 100 and body["rows"][0]["id"] == 0
        warm = []
        for _ in range(runs):
            ms, r = timed_get(url, {"limit": 100}, headers)
            assert r.status_code == 200
            warm.append(ms)
        rng = random.Random(1)
        deep = []
        for _ in range(runs):
            offset = rng.randrange(0, max(1, rows - 100))
            ms, r = timed_get(url, {"offset": offset, "limit": 100}, headers)
            assert r.status_code == 200 and r.json()["rows"][0]["id"] == offset
            deep.append(ms)
        base = []
        for _ in range(runs):
            t0 = time.perf_counter()
            f = pq.ParquetFile(src)
            next(f.iter_batches(batch_size=100, row_groups=[0])).to_pylist()
            base.append((time.perf_counter() - t0) * 1000)
    shutil.rmtree(server.home, ignore_errors=True)

    med, gib = statistics.median(warm), real / 2**30
    lines = [
        ("first request of the server process (the demo's 12-row CSV table, converted)", first),
        (f"cold first request (catalog built over the {gib:.2f} GiB file, rows read in place)", cold),
        (f"first rows, warm (median of {runs}; worst {max(warm):.1f} ms)", med),
        (f"rows at random offsets, warm (median; worst {max(deep):.1f} ms)", statistics.median(deep)),
        ("baseline: pyarrow reads the first 100 rows in-process (median)", statistics.median(base)),
    ]
    print()
    for label, ms in lines:
        print(f"{label:<78} {ms:9.1f} ms")
    print(f"ratio warm API / in-process pyarrow: {med / statistics.median(base):.1f}x")
    for what, ms in (("cold: a new commit", cold), ("warm", med)):
        print(f"target: first rows < {TARGET_MS:.0f} ms ({what}): {'met' if ms < TARGET_MS else 'NOT met'}")


if __name__ == "__main__":
    main()
