"""A real server (`opensci serve`) killed with SIGKILL while jobs run and wait: after a restart no job
is lost. Running local jobs are re-attached (they kept running meanwhile) and finish normally; queued
jobs run; a job whose processes died with the server is clearly retried."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from opensci.settings import Settings
from tests.api_helpers import API
from tests.compute.conftest import code_repo, dataset, finished, logs, submit, wait
from tests.conftest import Account
from tests.server_process import Server


@pytest.fixture
def server(settings: Settings, app: FastAPI, tmp_path: Path) -> Iterator[Server]:
    srv = Server(settings, tmp_path)
    srv.env.update(
        {
            "OPENSCI_COMPUTE_LOCAL_CPUS": "1",
            "OPENSCI_COMPUTE_POLL_SECONDS": "0.2",
            "OPENSCI_COMPUTE_LEASE_SECONDS": "5",
        }
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _spec(name: str, seconds: float) -> dict[str, object]:
    script = f"import time, pathlib; time.sleep({seconds}); pathlib.Path('outputs/{name}.txt').write_text('{name}')"  # noqa: E501
    return {
        "code": {"repo": "alice/waiter"},
        "command": ["python", "-c", script],
        "output": {"repo": "alice/results", "branch": name},
    }


def _running_pids(settings: Settings, job_id: int) -> tuple[int, int]:
    """The shim's and the command's pids, once the shim has started the command (it says so in
    running.json a moment after the scheduler has handed the job over)."""
    path = settings.home / "jobs" / str(job_id) / "running.json"
    deadline = time.monotonic() + 30
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    info = json.loads(path.read_text())
    return int(info["shim_pid"]), int(info["pid"])


def test_jobs_survive_a_killed_server(
    server: Server, http: httpx.Client, alice: Account, settings: Settings
) -> None:
    code_repo(http, alice, "waiter", {"README.md": "waits"})
    dataset(http, alice, "results", None)
    running = submit(http, alice, _spec("first", 4))
    queued = submit(http, alice, _spec("second", 0.5))
    wait(http, alice, running["id"], lambda j: j["phase"] == "executing", timeout=60)
    assert http.get(f"{API}/jobs/{queued['id']}", headers=alice.headers).json()["status"] == "queued"
    shim, _ = _running_pids(settings, running["id"])

    server.kill()
    os.kill(shim, 0)  # the job goes on without the server
    time.sleep(1)
    server.start()

    first = finished(http, alice, running["id"], timeout=90)
    second = finished(http, alice, queued["id"], timeout=90)
    assert first["status"] == "succeeded", logs(http, alice, running["id"])
    assert second["status"] == "succeeded", logs(http, alice, queued["id"])
    assert first["attempts"] == 1  # re-attached, not started again
    assert "taken over by scheduler" in logs(http, alice, running["id"])
    for job, name in ((first, "first"), (second, "second")):
        raw = http.get(f"/datasets/alice/results/resolve/{job['output']['commit']}/{name}.txt")
        assert raw.text == name


def test_a_job_lost_with_the_server_is_retried(
    server: Server, http: httpx.Client, alice: Account, settings: Settings
) -> None:
    code_repo(http, alice, "waiter", {"README.md": "waits"})
    dataset(http, alice, "results", None)
    job = submit(http, alice, _spec("lost", 3))
    wait(http, alice, job["id"], lambda j: j["phase"] == "executing", timeout=60)
    shim, child = _running_pids(settings, job["id"])

    server.kill()
    for pid in (shim, child):  # the machine "rebooted": the job's processes are gone too
        os.killpg(pid, signal.SIGKILL)
    time.sleep(0.5)
    server.start()

    done = finished(http, alice, job["id"], timeout=90)
    text = logs(http, alice, job["id"])
    assert done["status"] == "succeeded", text
    assert done["attempts"] == 2
    assert "queued again (attempt 2)" in text
