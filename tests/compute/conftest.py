"""Fixtures for jobs: a live server whose scheduler runs, and helpers to submit jobs and wait for them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from opensci.compute.models import Job
from opensci.compute.scheduler import HOST, Scheduler
from tests.api_helpers import API, committed, create_repo
from tests.conftest import Account, LiveServer


@pytest.fixture
def compute_app(app: FastAPI) -> Iterator[FastAPI]:
    """The app with its scheduler running (ticking fast) and jobs kept in the test's home."""
    settings = app.state.settings
    settings.compute_poll_seconds = 0.1
    settings.compute_lease_seconds = 5
    app.state.scheduler.start()
    yield app
    app.state.scheduler.stop()


@pytest.fixture
def server(compute_app: FastAPI) -> Iterator[LiveServer]:
    live = LiveServer(compute_app)
    live.start()
    yield live
    live.stop()


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def submit(http: httpx.Client, who: Account, spec: dict[str, Any]) -> dict[str, Any]:
    r = http.post(f"{API}/jobs", json=spec, headers=who.headers)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "queued"
    return body


def wait(
    http: httpx.Client,
    who: Account | None,
    job_id: int,
    until: Callable[[dict[str, Any]], bool],
    timeout: float = 60,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    headers = who.headers if who else {}
    while True:
        job = http.get(f"{API}/jobs/{job_id}", headers=headers).json()
        if until(job):
            return job
        if time.monotonic() > deadline:
            log = http.get(f"{API}/jobs/{job_id}/logs", headers=headers).text
            raise AssertionError(f"job {job_id} did not get there in {timeout} s: {job}\nlog:\n{log}")
        time.sleep(0.1)


FINAL = {"succeeded", "failed", "cancelled", "timeout"}


def finished(http: httpx.Client, who: Account | None, job_id: int, timeout: float = 120) -> dict[str, Any]:
    return wait(http, who, job_id, lambda j: j["status"] in FINAL, timeout)


def logs(http: httpx.Client, who: Account | None, job_id: int) -> str:
    r = http.get(f"{API}/jobs/{job_id}/logs", headers=who.headers if who else {})
    assert r.status_code == 200, r.text
    return r.text


def code_repo(
    http: httpx.Client, who: Account, name: str, files: dict[str, str | bytes], private: bool = False
) -> str:
    create_repo(http, who, name, kind="code", private=private)
    return committed(http, who, f"{who.name}/{name}", files)


def dataset(
    http: httpx.Client, who: Account, name: str, files: dict[str, str | bytes] | None, private: bool = False
) -> str | None:
    create_repo(http, who, name, kind="dataset", private=private)
    return committed(http, who, f"{who.name}/{name}", files) if files else None


# --- the scheduler driven directly: one `_dispatch` with nothing started ------------------------------


@pytest.fixture
def dispatcher(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> Scheduler:
    """The app's scheduler, not started; a dispatch claims jobs but starts nothing."""
    scheduler: Scheduler = app.state.scheduler
    monkeypatch.setattr(scheduler, "_start", lambda job_id: None)
    return scheduler


def enqueue(
    app: FastAPI,
    who: Account,
    count: int,
    *,
    priority: int = 0,
    cpus: int = 1,
    memory: int = 2**20,
    status: str = "queued",
) -> list[int]:
    """`count` jobs of `who` straight into the table (what a submission would leave there); running ones
    run on this host for another scheduler."""
    with app.state.db.session() as s:
        jobs = [
            Job(
                submitter_id=who.user.id,
                status=status,
                phase="waiting" if status == "queued" else "executing",
                priority=priority,
                spec={},
                resolved={},
                executor="local",
                cpus=cpus,
                memory_bytes=memory,
                time_limit=60,
                host=HOST if status == "running" else None,
                claimed_by="elsewhere" if status == "running" else None,
                environment={},
                usage={},
            )
            for _ in range(count)
        ]
        s.add_all(jobs)
        s.commit()
        return [j.id for j in jobs]


def running_ids(app: FastAPI) -> set[int]:
    with app.state.db.session() as s:
        return set(s.scalars(select(Job.id).where(Job.status == "running")))
