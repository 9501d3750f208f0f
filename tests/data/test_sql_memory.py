"""The memory bound of SQL queries, measured on a real server process: DuckDB's `memory_limit` covers
only its buffer manager, so values built outside it (a string of 1.5 GB from `repeat`) used to grow the
server by gigabytes. Queries run in worker processes whose data segment is capped (RLIMIT_DATA), so such a
query gets 413 `query_too_large` while the server's own peak RSS (VmHWM) barely moves and it keeps
answering other requests."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from opensci.settings import Settings
from tests.api_helpers import API, committed, create_repo, error_code
from tests.conftest import Account
from tests.data.test_sql_api import parquet_bytes
from tests.server_process import Server

MEMORY_LIMIT_MB = 256
# The server's peak RSS may grow by at most this much while two giant queries run (it holds no query
# data of its own: the values live, and fail, in the workers).
SERVER_GROWTH_BOUND_KB = 150 * 1024
# A worker may hold its memory limit, the 256 MiB headroom and what Python, DuckDB and Arrow take when
# loaded (~150 MB), never the 1.5 GB the query asks for.
WORKER_BOUND_KB = (MEMORY_LIMIT_MB + 256 + 250) * 1024


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (workers and spares), from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, parent in parents.items() if parent == p]
        found.extend(kids)
        todo.extend(kids)
    return found


@pytest.fixture
def server(settings: Settings, app: FastAPI, tmp_path: Path) -> Iterator[Server]:
    srv = Server(
        settings,
        tmp_path,
        {"OPENSCI_SQL_MEMORY_LIMIT": f"{MEMORY_LIMIT_MB}MB", "OPENSCI_SQL_TIMEOUT_SECONDS": "60"},
    )
    srv.start()
    yield srv
    srv.stop()


def test_values_built_outside_duckdbs_buffer_manager_cannot_grow_the_server(
    server: Server, alice: Account
) -> None:
    giant = "SELECT length(repeat('x', 1500000000)) AS n FROM t LIMIT 1"
    with httpx.Client(base_url=server.url, timeout=120, headers=alice.headers) as http:
        create_repo(http, alice, "mem", kind="dataset")
        committed(http, alice, "alice/mem", {"t.parquet": parquet_bytes("SELECT range AS x FROM range(10)")})
        sql = f"{API}/datasets/alice/mem/sql"
        for _ in range(3):  # warm up: catalog, Parquet copies, imports, a worker or two
            assert http.post(sql, json={"sql": "SELECT sum(x) AS s FROM t"}).json()["rows"] == [[45]]
        before = status_kb(server.proc.pid, "VmHWM")

        answers: list[httpx.Response] = []
        worker_peaks: dict[int, int] = {}
        latencies: list[float] = []

        def ask() -> None:
            answers.append(http.post(sql, json={"sql": giant}))

        threads = [threading.Thread(target=ask) for _ in range(2)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for pid in descendants(server.proc.pid):
                with contextlib.suppress(OSError, KeyError):  # it may end in between
                    worker_peaks[pid] = max(worker_peaks.get(pid, 0), status_kb(pid, "VmHWM"))
            t0 = time.monotonic()
            assert http.get("/api/health").status_code == 200
            latencies.append(time.monotonic() - t0)
            time.sleep(0.02)
        for t in threads:
            t.join()
        after = status_kb(server.proc.pid, "VmHWM")
        # The server still answers queries afterwards.
        assert http.post(sql, json={"sql": "SELECT count(*) FROM t"}).json()["rows"] == [[10]]

    assert after - before < SERVER_GROWTH_BOUND_KB, (before, after)
    assert [error_code(r, 413) for r in answers] == ["query_too_large"] * 2
    assert "memory" in answers[0].json()["message"]
    assert worker_peaks and max(worker_peaks.values()) < WORKER_BOUND_KB, worker_peaks
    assert max(latencies) < 1.0, max(latencies)
