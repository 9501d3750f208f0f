"""Scheduling policy with real schedulers and the local executor: priorities, fair share, the per-user
limit, several schedulers on one database; and logs followed live over server-sent events."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from itertools import pairwise
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from opensci.compute.models import Job
from opensci.compute.scheduler import HOST, Scheduler
from tests.api_helpers import API, committed, create_repo
from tests.compute.conftest import FINAL, code_repo, enqueue, finished, logs, running_ids, submit, wait
from tests.conftest import Account

NAP = """\
import sys, time
time.sleep(float(sys.argv[1]))
print("slept", sys.argv[1], flush=True)
"""


def nap(seconds: float, **more: Any) -> dict[str, Any]:
    return {"code": {"repo": "alice/tool"}, "command": ["python", "nap.py", str(seconds)], **more}


def when(value: str | None) -> datetime:
    assert value, "the job has no such timestamp"
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def span(job: dict[str, Any]) -> tuple[datetime, datetime]:
    return when(job["started_at"]), when(job["ended_at"])


@pytest.fixture
def one_cpu(app: FastAPI) -> None:
    """The local executor hands out one CPU: one job at a time (set before the scheduler starts)."""
    app.state.settings.compute_local_cpus = 1


@pytest.fixture
def one_per_user(app: FastAPI) -> None:
    """Room for four jobs, but each user runs one at a time."""
    app.state.settings.compute_local_cpus = 4
    app.state.settings.compute_max_running_per_user = 1


def test_a_higher_priority_job_starts_first_when_capacity_frees(
    one_cpu: None, http: httpx.Client, alice: Account, make_user: Callable[..., Account]
) -> None:
    root = make_user("root", admin=True)
    code_repo(http, alice, "tool", {"nap.py": NAP})
    # root's first job takes the one CPU. root then has started a job lately and alice has not, so fair
    # share alone would run alice's jobs before root's next one: only its priority puts it first.
    blocker = submit(http, root, nap(4))
    wait(http, root, blocker["id"], lambda j: j["phase"] == "executing")
    waiting = [submit(http, alice, nap(0)) for _ in range(2)]
    urgent = submit(http, root, nap(0, priority=10))
    assert http.get(f"{API}/jobs/{blocker['id']}").json()["status"] == "running", "the blocker ended early"
    done = {j["id"]: finished(http, root, j["id"]) for j in (blocker, *waiting, urgent)}
    assert all(j["status"] == "succeeded" for j in done.values()), done
    first_end = when(done[blocker["id"]]["ended_at"])
    urgent_start = when(done[urgent["id"]]["started_at"])
    assert urgent_start >= first_end
    for job in waiting:
        assert urgent_start < when(done[job["id"]]["started_at"]), (done[urgent["id"]], done[job["id"]])
    # One CPU: never two at once.
    spans = sorted(span(j) for j in done.values())
    for (_, end), (start, _) in pairwise(spans):
        assert start >= end, spans


def test_fair_share_runs_a_newcomer_before_the_second_job_of_a_busy_user(
    one_cpu: None, http: httpx.Client, alice: Account, bob: Account
) -> None:
    code_repo(http, alice, "tool", {"nap.py": NAP})
    mine = [submit(http, alice, nap(1)) for _ in range(3)]
    theirs = submit(http, bob, nap(0))
    done = {j["id"]: finished(http, alice, j["id"]) for j in (*mine, theirs)}
    assert all(j["status"] == "succeeded" for j in done.values()), done
    starts = {job_id: when(j["started_at"]) for job_id, j in done.items()}
    assert starts[mine[0]["id"]] < starts[theirs["id"]] < starts[mine[1]["id"]] < starts[mine[2]["id"]]


def test_a_user_never_runs_more_jobs_than_the_per_user_limit(
    one_per_user: None, http: httpx.Client, alice: Account, bob: Account
) -> None:
    code_repo(http, alice, "tool", {"nap.py": NAP})
    mine = [submit(http, alice, nap(1)) for _ in range(3)]
    theirs = submit(http, bob, nap(1.5))
    done = {j["id"]: finished(http, alice, j["id"]) for j in (*mine, theirs)}
    assert all(j["status"] == "succeeded" for j in done.values()), done
    spans = sorted(span(done[j["id"]]) for j in mine)
    for (_, end), (start, _) in pairwise(spans):
        assert start >= end, f"two of alice's jobs ran at once: {spans}"
    # There was room for more: bob's job ran alongside one of alice's.
    bob_start, bob_end = span(done[theirs["id"]])
    assert any(start < bob_end and bob_start < end for start, end in spans), (spans, bob_start, bob_end)


@pytest.fixture
def two_schedulers(app: FastAPI) -> Iterator[tuple[Scheduler, Scheduler]]:
    """The app's scheduler and a second one on the same database, home and stores (not started)."""
    settings = app.state.settings
    settings.compute_poll_seconds = 0.05
    settings.compute_local_cpus = 4
    settings.compute_max_running_per_user = 0
    first = app.state.scheduler
    second = Scheduler(settings, app.state.db, app.state.store, app.state.blobs)
    second.id = f"{HOST}:{os.getpid()}:second"
    assert second.id != first.id
    yield first, second
    second.stop()
    first.stop()


def test_two_schedulers_on_one_database_run_each_job_exactly_once(
    app: FastAPI, client: TestClient, alice: Account, two_schedulers: tuple[Scheduler, Scheduler]
) -> None:
    create_repo(client, alice, "tool", kind="code")
    committed(client, alice, "alice/tool", {"nap.py": NAP})
    ids = []
    for _ in range(30):
        r = client.post(f"{API}/jobs", json=nap(0), headers=alice.headers)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    for scheduler in two_schedulers:  # both at once, with every job already queued: they compete
        scheduler.start()
    deadline = time.monotonic() + 240
    while True:
        with app.state.db.session() as s:
            statuses = s.execute(select(Job.status).where(Job.id.in_(ids))).scalars().all()
        if all(status in FINAL for status in statuses):
            break
        assert time.monotonic() < deadline, f"not all jobs ended: {sorted(statuses)}"
        time.sleep(0.2)
    with app.state.db.session() as s:
        rows = {j.id: (j.status, j.attempts, j.claimed_by) for j in s.scalars(select(Job))}
    assert len(rows) == 30
    problems = []
    for job_id in ids:
        status, attempts, _ = rows[job_id]
        text = client.get(f"{API}/jobs/{job_id}/logs", headers=alice.headers).text
        headers = text.count(f"job {job_id} started on")
        if status != "succeeded" or attempts != 1 or headers != 1 or text.count("slept 0") != 1:
            problems.append(f"job {job_id}: {status}, {attempts} attempts, {headers} headers:\n{text}")
    assert not problems, "\n".join(problems)
    claimers = {claimed_by for _, _, claimed_by in rows.values()}
    assert claimers == {s.id for s in two_schedulers}, claimers


def _events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any], float]]:
    """Server-sent events as (event, data, when received); comments (keep-alives) skipped."""
    kind, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield kind, json.loads("\n".join(data)), time.monotonic()
            kind, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


TALK = """\
import time
for i in range(5):
    print(f"line {i}", flush=True)
    time.sleep(0.5)
"""


def test_logs_follow_live_over_server_sent_events(http: httpx.Client, alice: Account) -> None:
    code_repo(http, alice, "talker", {"talk.py": TALK})
    job = submit(http, alice, {"code": {"repo": "alice/talker"}, "command": ["python", "talk.py"]})
    events = []
    with http.stream(
        "GET", f"{API}/jobs/{job['id']}/logs", params={"follow": "true"}, headers=alice.headers, timeout=120
    ) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for event in _events(r.iter_lines()):
            events.append(event)
            if event[0] == "end":
                break
    kinds = [kind for kind, _, _ in events]
    assert kinds[-1] == "end" and set(kinds[:-1]) == {"log"}, kinds
    assert events[-1][1] == {"status": "succeeded", "exit_code": 0, "message": ""}
    text = "".join(data["text"] for kind, data, _ in events if kind == "log")
    full = logs(http, alice, job["id"])
    assert text == full
    offsets = [data["offset"] for kind, data, _ in events if kind == "log"]
    assert offsets == sorted(offsets) and offsets[-1] == len(full.encode())
    assert [line for line in full.splitlines() if line.startswith("line ")] == [f"line {i}" for i in range(5)]

    # Live: the first line came a good while before the last (the job sleeps 0.5 s between lines).
    def received(fragment: str) -> float:
        return next(t for kind, data, t in events if kind == "log" and fragment in data["text"])

    assert received("line 4") - received("line 0") > 1.0
    # Following from an offset gives the rest only.
    half = len(full.encode()) // 2
    rest = http.get(f"{API}/jobs/{job['id']}/logs", params={"offset": half}, headers=alice.headers)
    assert rest.content == full.encode()[half:]
    assert rest.headers["x-log-next-offset"] == str(len(full.encode()))
    assert rest.headers["x-job-status"] == "succeeded"


# --- candidate selection, driven directly: one `_dispatch` with nothing started ------------------------


def test_a_long_queue_of_one_user_hides_no_other_users_job(
    app: FastAPI, dispatcher: Scheduler, make_user: Callable[..., Account], bob: Account
) -> None:
    """The QA repro: per-user limit 1, two CPUs, 205 jobs of one user queued before bob's one. Bob's job
    starts at once, beside the first of the long queue, and no CPU is left idle."""
    app.state.settings.compute_local_cpus = 2
    app.state.settings.compute_max_running_per_user = 1
    admin = make_user("admin", admin=True)
    backlog = enqueue(app, admin, 205)
    (theirs,) = enqueue(app, bob, 1)
    dispatcher._dispatch()
    assert running_ids(app) == {backlog[0], theirs}
    dispatcher._dispatch()  # both at their limit: nothing more
    assert running_ids(app) == {backlog[0], theirs}


def test_fair_share_reaches_past_a_long_queue(
    app: FastAPI, dispatcher: Scheduler, make_user: Callable[..., Account], bob: Account
) -> None:
    """No per-user limit: with one CPU free, the user with fewer running jobs goes first, however many
    jobs the busier one has queued before."""
    app.state.settings.compute_local_cpus = 2
    app.state.settings.compute_max_running_per_user = 0
    admin = make_user("admin", admin=True)
    (busy,) = enqueue(app, admin, 1, status="running")
    enqueue(app, admin, 205)
    (theirs,) = enqueue(app, bob, 1)
    dispatcher._dispatch()
    assert running_ids(app) == {busy, theirs}


def test_a_job_that_fits_is_found_behind_hundreds_that_do_not(
    app: FastAPI, dispatcher: Scheduler, make_user: Callable[..., Account]
) -> None:
    """One CPU free and 250 queued jobs that need two: the small job queued after them starts."""
    app.state.settings.compute_local_cpus = 2
    app.state.settings.compute_max_running_per_user = 0
    admin = make_user("admin", admin=True)
    (busy,) = enqueue(app, admin, 1, status="running")
    enqueue(app, admin, 250, cpus=2)
    (small,) = enqueue(app, admin, 1)
    dispatcher._dispatch()
    assert running_ids(app) == {busy, small}


def test_priority_then_fair_share_then_age_with_the_per_user_limit(
    app: FastAPI, dispatcher: Scheduler, make_user: Callable[..., Account], alice: Account, bob: Account
) -> None:
    """Five CPUs, two jobs per user, root's long queue first. Root's urgent job goes first; then alice's
    and bob's oldest (they run nothing yet); then, all running one, the oldest jobs: root's, then
    alice's, and the CPUs are all taken."""
    app.state.settings.compute_local_cpus = 5
    app.state.settings.compute_max_running_per_user = 2
    root = make_user("root", admin=True)
    backlog = enqueue(app, root, 300)
    urgent = enqueue(app, root, 1, priority=10)
    mine = enqueue(app, alice, 3)
    theirs = enqueue(app, bob, 3)
    dispatcher._dispatch()
    assert running_ids(app) == {*urgent, backlog[0], *mine[:2], *theirs[:1]}
    with app.state.db.session() as s:
        by_user = dict(
            s.execute(
                select(Job.submitter_id, func.count())
                .where(Job.status == "running")
                .group_by(Job.submitter_id)
            ).all()
        )
    assert by_user == {root.user.id: 2, alice.user.id: 2, bob.user.id: 1}
