"""Fixes from the security QA pass of jobs: collecting outputs never delays starts; the submitter's rights
are checked again when a job starts; local jobs are admitted within a memory budget; a job's variables are
its submitter's (values hidden from others, no rerun by others); and a cap on each user's queued jobs."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from opensci.client.errors import TooManyRequestsError, error_from_response
from opensci.compute import outputs, shim, workspace
from opensci.compute.executors.base import Launch, Observation, Resources
from opensci.compute.executors.local import LocalExecutor
from opensci.compute.models import Job
from opensci.compute.scheduler import HOST, Scheduler
from opensci.compute.service import HIDDEN
from tests.api_helpers import API, create_repo, error_code
from tests.compute.conftest import code_repo, dataset, enqueue, finished, running_ids, submit, wait
from tests.conftest import Account

GiB = 1024**3


# --- 1. collecting outputs never delays starts --------------------------------------------------------------


def test_a_job_starts_while_every_finisher_is_busy_collecting(
    app: FastAPI,
    monkeypatch: pytest.MonkeyPatch,
    http: httpx.Client,
    alice: Account,
    bob: Account,
    make_user: Callable[..., Account],
) -> None:
    """The QA repro: four jobs whose outputs take long to collect (held here until the test lets them go)
    must not keep another user's job from starting while CPUs are free."""
    app.state.settings.compute_local_cpus = 8
    app.state.settings.compute_max_running_per_user = 0
    release = threading.Event()
    real = outputs.commit_outputs

    def slow(*args: Any, **kwargs: Any) -> str | None:
        job: Job = args[4]
        if job.submitter_id == alice.user.id:
            release.wait(120)  # a huge output being read and hashed
        return real(*args, **kwargs)

    monkeypatch.setattr(outputs, "commit_outputs", slow)
    root = make_user("root", admin=True)
    try:
        code_repo(http, alice, "tool", {"w.py": "open('outputs/o.txt', 'w').write('x')\n"})
        dataset(http, alice, "results", None)
        spec = {
            "code": {"repo": "alice/tool"},
            "command": ["python", "w.py"],
            "output": {"repo": "alice/results", "branch": "main"},
        }
        slow_jobs = [submit(http, alice, spec)["id"] for _ in range(4)]
        for job_id in slow_jobs:
            wait(http, alice, job_id, lambda j: j["phase"] == "collecting", timeout=120)
        quick = submit(http, bob, {"code": {"repo": "alice/tool"}, "command": ["true"]})["id"]
        # It starts (and runs) although all four are still being collected.
        seen = wait(http, bob, quick, lambda j: j["phase"] in ("executing", "collecting", "done"), 30)
        assert seen["status"] in ("running", "succeeded"), seen
        phases = [http.get(f"{API}/jobs/{j}", headers=root.headers).json()["phase"] for j in slow_jobs]
        assert phases == ["collecting"] * 4, phases
        release.set()
        for job_id in (*slow_jobs, quick):
            assert finished(http, root, job_id)["status"] == "succeeded"
    finally:
        release.set()  # before the scheduler stops: it waits for its threads


# --- 2. the submitter's rights, checked again at start ------------------------------------------------------


@pytest.fixture
def prepared(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ids of the jobs `workspace.prepare` was called for; it then stops them (as a preparation error),
    so that a test sees whether a job got as far as reading its code and inputs, and nothing runs."""
    calls: list[int] = []

    def prepare(settings: Any, s: Any, store: Any, blobs: Any, job: Job, out: Any) -> Any:
        calls.append(job.id)
        raise workspace.PrepareError("stopped by the test before preparing")

    monkeypatch.setattr(workspace, "prepare", prepare)
    return calls


class Inline:
    """A pool that runs what it is given at once, in the caller's thread."""

    def __init__(self) -> None:
        self.ran: list[tuple[Any, ...]] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self.ran.append(args)
        fn(*args)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def start_queued(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One dispatch of the app's scheduler (not started), each claimed job started in this thread; returns
    the ids of the jobs started."""
    scheduler: Scheduler = app.state.scheduler
    starters = Inline()
    monkeypatch.setattr(scheduler, "_starters", starters)
    scheduler._dispatch()
    return [args[0] for args in starters.ran]


def job_row(app: FastAPI, job_id: int) -> Job:
    with app.state.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def post_job(client: TestClient, who: Account, spec: dict[str, Any]) -> int:
    r = client.post(f"{API}/jobs", json=spec, headers=who.headers)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


@pytest.fixture
def shared(client: TestClient, alice: Account, bob: Account) -> dict[str, str]:
    """alice's public code and output dataset, and bob's public dataset that alice's jobs read."""
    code = code_repo(client, alice, "tool", {"run.py": "print(1)\n"})
    data = dataset(client, bob, "data", {"values.csv": "v\n1\n"})
    dataset(client, alice, "results", None)
    assert data is not None
    return {"code": code, "data": data}


SPEC = {
    "code": {"repo": "alice/tool"},
    "command": ["python", "run.py"],
    "inputs": {"numbers": {"repo": "bob/data"}},
    "output": {"repo": "alice/results"},
}


def test_a_job_whose_input_became_private_fails_at_start_without_reading_it(
    app: FastAPI,
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    prepared: list[int],
    alice: Account,
    bob: Account,
    shared: dict[str, str],
) -> None:
    job_id = post_job(client, alice, SPEC)
    r = client.patch(f"{API}/repos/bob/data", json={"private": True}, headers=bob.headers)
    assert r.status_code == 200, r.text
    assert start_queued(app, monkeypatch) == [job_id]
    job = job_row(app, job_id)
    assert (job.status, job.reason) == ("failed", "permissions"), (job.status, job.reason, job.message)
    assert job.message == "alice may no longer read bob/data, the job's input numbers"
    assert shared["data"] not in job.message
    assert prepared == []  # nothing of the input was read, nothing ran
    assert job.output_commit is None


def test_a_job_whose_submitter_may_no_longer_write_its_output_fails_at_start(
    app: FastAPI,
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    prepared: list[int],
    alice: Account,
    bob: Account,
) -> None:
    code_repo(client, alice, "tool", {"run.py": "print(1)\n"})
    assert client.post(f"{API}/orgs", json={"name": "lab"}, headers=bob.headers).status_code == 201
    r = client.put(f"{API}/orgs/lab/members/alice", json={"role": "write"}, headers=bob.headers)
    assert r.status_code == 200, r.text
    create_repo(client, bob, "results", kind="dataset", owner="lab")
    job_id = post_job(
        client,
        alice,
        {"code": {"repo": "alice/tool"}, "command": "python run.py", "output": {"repo": "lab/results"}},
    )
    assert client.delete(f"{API}/orgs/lab/members/alice", headers=bob.headers).status_code == 204
    start_queued(app, monkeypatch)
    job = job_row(app, job_id)
    assert (job.status, job.reason) == ("failed", "permissions")
    assert job.message == "alice may no longer write to lab/results, the job's output"
    assert prepared == []


def test_rights_are_checked_again_on_a_retry_and_kept_rights_pass(
    app: FastAPI,
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    prepared: list[int],
    alice: Account,
    bob: Account,
    shared: dict[str, str],
) -> None:
    """A job lost once is queued again (attempt 2): the submitter's rights are checked again then. And a
    job whose submitter keeps them goes on to be prepared."""
    kept = post_job(client, alice, SPEC)
    start_queued(app, monkeypatch)
    assert prepared == [kept]  # allowed: it got as far as preparing
    assert job_row(app, kept).reason == "preparation"

    retried = post_job(client, alice, SPEC)
    with app.state.db.session() as s:  # as `_retry_or_fail` leaves a job lost on its first attempt
        s.execute(update(Job).where(Job.id == retried).values(attempts=1))
        s.commit()
    r = client.patch(f"{API}/repos/bob/data", json={"private": True}, headers=bob.headers)
    assert r.status_code == 200, r.text
    start_queued(app, monkeypatch)
    job = job_row(app, retried)
    assert (job.status, job.reason, job.attempts) == ("failed", "permissions", 2)
    assert "bob/data" in job.message
    assert prepared == [kept]


def test_the_qa_repro_a_queued_job_never_publishes_an_input_made_private(
    app: FastAPI, http: httpx.Client, alice: Account, bob: Account, make_user: Callable[..., Account]
) -> None:
    """For real: alice's job waits behind another (one CPU); meanwhile bob makes the input private. The job
    fails with reason `permissions` and alice's public output gets no commit."""
    app.state.settings.compute_local_cpus = 1
    root = make_user("root", admin=True)
    code_repo(
        http,
        alice,
        "tool",
        {
            "nap.py": "import time\ntime.sleep(3)\n",
            "copy.py": "import shutil\nshutil.copytree('inputs/numbers', 'outputs/leak')\n",
        },
    )
    dataset(http, bob, "data", {"secret.csv": "v\n42\n"})
    dataset(http, alice, "results", None)
    blocker = submit(http, alice, {"code": {"repo": "alice/tool"}, "command": "python nap.py"})
    wait(http, alice, blocker["id"], lambda j: j["phase"] == "executing")
    job = submit(http, alice, {**SPEC, "command": "python copy.py"})
    r = http.patch(f"{API}/repos/bob/data", json={"private": True}, headers=bob.headers)
    assert r.status_code == 200, r.text
    assert http.get(f"{API}/jobs/{blocker['id']}", headers=alice.headers).json()["status"] == "running"
    done = finished(http, root, job["id"])
    assert (done["status"], done["reason"]) == ("failed", "permissions"), done
    assert done["message"] == "alice may no longer read bob/data, the job's input numbers"
    assert "42" not in http.get(f"{API}/jobs/{job['id']}/logs", headers=root.headers).text
    refs = http.get(f"{API}/repos/alice/results/refs", headers=root.headers).json()
    assert refs["branches"] == [], refs


# --- 3. the memory budget of the local executor -------------------------------------------------------------


def test_two_jobs_that_together_ask_more_memory_than_the_budget_run_one_at_a_time(
    app: FastAPI, dispatcher: Scheduler, alice: Account, bob: Account
) -> None:
    """The QA repro: two jobs of 20G each on a 23 GiB machine, CPUs to spare."""
    app.state.settings.compute_local_cpus = 8
    app.state.settings.compute_local_memory_bytes = 23 * GiB
    app.state.settings.compute_max_running_per_user = 0
    (first,) = enqueue(app, alice, 1, memory=20 * GiB)
    (second,) = enqueue(app, bob, 1, memory=20 * GiB)
    dispatcher._dispatch()
    assert running_ids(app) == {first}
    dispatcher._dispatch()  # 3 GiB left: still one
    assert running_ids(app) == {first}
    with app.state.db.session() as s:  # the first ends: the second fits
        s.execute(update(Job).where(Job.id == first).values(status="succeeded", phase="done"))
        s.commit()
    dispatcher._dispatch()
    assert running_ids(app) == {second}


def test_a_job_that_fits_the_free_memory_is_found_behind_hundreds_that_do_not(
    app: FastAPI, dispatcher: Scheduler, alice: Account, bob: Account
) -> None:
    """4 GiB in all, 3 GiB taken by a running job: of 250 queued jobs of 2 GiB and one of 512 MiB queued
    after them, the small one starts; fair share still weighs bob's job, which fits too."""
    app.state.settings.compute_local_cpus = 8
    app.state.settings.compute_local_memory_bytes = 4 * GiB
    app.state.settings.compute_max_running_per_user = 0
    (busy,) = enqueue(app, alice, 1, memory=3 * GiB, status="running")
    enqueue(app, alice, 250, memory=2 * GiB)
    (small,) = enqueue(app, alice, 1, memory=GiB // 2)
    (theirs,) = enqueue(app, bob, 1, memory=GiB // 4)
    dispatcher._dispatch()
    assert running_ids(app) == {busy, small, theirs}


def test_memory_of_jobs_on_other_hosts_is_not_counted(
    app: FastAPI, dispatcher: Scheduler, alice: Account
) -> None:
    app.state.settings.compute_local_cpus = 8
    app.state.settings.compute_local_memory_bytes = 4 * GiB
    (elsewhere,) = enqueue(app, alice, 1, memory=4 * GiB, status="running")
    with app.state.db.session() as s:
        s.execute(update(Job).where(Job.id == elsewhere).values(host="another-host"))
        s.commit()
    (mine,) = enqueue(app, alice, 1, memory=4 * GiB)
    dispatcher._dispatch()
    assert running_ids(app) == {elsewhere, mine}


def test_a_job_asking_more_memory_than_the_whole_budget_is_refused_at_submit(
    app: FastAPI, client: TestClient, alice: Account
) -> None:
    code_repo(client, alice, "tool", {"run.py": "print(1)\n"})
    app.state.settings.compute_local_memory_bytes = GiB
    base = {"code": {"repo": "alice/tool"}, "command": "python run.py"}
    r = client.post(f"{API}/jobs", json={**base, "resources": {"memory": "2G"}}, headers=alice.headers)
    assert error_code(r, 422) == "invalid_spec"
    assert r.json()["message"].startswith(f"resources.memory: at most {GiB} bytes"), r.json()
    # The default (2 GiB) is capped to the budget: a job that asks nothing is not refused (QA).
    default = client.post(f"{API}/jobs", json=base, headers=alice.headers)
    assert default.status_code == 201 and default.json()["resources"]["memory"] == GiB, default.text
    ok = client.post(f"{API}/jobs", json={**base, "resources": {"memory": "1G"}}, headers=alice.headers)
    assert ok.status_code == 201, ok.text
    # The budget bounds local jobs even where the largest memory limit is configured higher.
    app.state.settings.compute_max_memory_bytes = 64 * GiB
    r = client.post(f"{API}/jobs", json={**base, "resources": {"memory": "2G"}}, headers=alice.headers)
    assert error_code(r, 422) == "invalid_spec" and "resources.memory" in r.json()["message"]


def test_a_queued_job_the_budget_no_longer_holds_fails_instead_of_waiting_forever(
    app: FastAPI, dispatcher: Scheduler, alice: Account
) -> None:
    """The QA repro: a 1 GiB job queued, then the operator lowered the budget to 512 MiB (a restart):
    the job waited forever with no word. It now fails with reason `resources`, saying why."""
    app.state.settings.compute_local_memory_bytes = GiB // 2
    app.state.settings.compute_local_cpus = 2
    too_big, too_many, fine = (
        enqueue(app, alice, 1, memory=GiB)[0],
        enqueue(app, alice, 1, memory=GiB // 4, cpus=3)[0],
        enqueue(app, alice, 1, memory=GiB // 4)[0],
    )
    dispatcher._dispatch()
    for job_id in (too_big, too_many):
        job = job_row(app, job_id)
        assert (job.status, job.reason) == ("failed", "resources"), job_id
        assert "the local executor has 2 CPUs and 512.0 MiB for jobs in all" in job.message
        log = (workspace.job_dir(app.state.settings, job_id) / "log").read_text()
        assert f"job {job_id} failed: it asks" in log
    assert job_row(app, fine).status == "running"


# --- 4. a job's variables are its submitter's ---------------------------------------------------------------


@pytest.fixture
def with_variables(client: TestClient, alice: Account) -> int:
    code_repo(client, alice, "tool", {"run.py": "print(1)\n"})
    spec = {
        "code": {"repo": "alice/tool"},
        "command": "python run.py",
        "env": {"variables": {"API_TOKEN": "s3cret-value", "MODE": "fast"}},
    }
    return post_job(client, alice, spec)


def test_variable_values_are_shown_only_to_the_submitter_and_administrators(
    client: TestClient, alice: Account, bob: Account, make_user: Callable[..., Account], with_variables: int
) -> None:
    root = make_user("root", admin=True)
    url = f"{API}/jobs/{with_variables}"
    for who in (alice, root):
        body = client.get(url, headers=who.headers).json()
        assert body["spec"]["env"]["variables"] == {"API_TOKEN": "s3cret-value", "MODE": "fast"}
    for headers in (bob.headers, {}):  # another user; anonymous (the code is public)
        r = client.get(url, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["spec"]["env"]["variables"] == {"API_TOKEN": HIDDEN, "MODE": HIDDEN}
        assert "s3cret-value" not in r.text
        listed = client.get(f"{API}/jobs", headers=headers)
        assert listed.status_code == 200 and with_variables in [j["id"] for j in listed.json()["jobs"]]
        assert "s3cret-value" not in listed.text
    assert "s3cret-value" in client.get(f"{API}/jobs", headers=alice.headers).text


def test_only_the_submitter_reruns_a_job_that_has_variables(
    client: TestClient, alice: Account, bob: Account, make_user: Callable[..., Account], with_variables: int
) -> None:
    root = make_user("root", admin=True)
    for who in (bob, root):
        r = client.post(f"{API}/jobs/{with_variables}/rerun", headers=who.headers)
        assert error_code(r, 403) == "rerun_not_allowed"
        assert r.json()["message"] == (
            f"job {with_variables} has environment variables only its submitter may use; "
            "submit a job of your own"
        )
    with client.app.state.db.session() as s:  # type: ignore[attr-defined]
        assert s.scalar(select(Job.id).where(Job.rerun_of == with_variables)) is None
    own = client.post(f"{API}/jobs/{with_variables}/rerun", headers=alice.headers)
    assert own.status_code == 201, own.text
    assert own.json()["spec"]["env"]["variables"]["API_TOKEN"] == "s3cret-value"
    # A job without variables is anyone's to rerun, as before.
    plain = post_job(client, alice, {"code": {"repo": "alice/tool"}, "command": "python run.py"})
    theirs = client.post(f"{API}/jobs/{plain}/rerun", headers=bob.headers)
    assert theirs.status_code == 201 and theirs.json()["submitter"] == "bob"


# --- 5. a cap on each user's queued jobs --------------------------------------------------------------------


def test_a_submission_beyond_the_queued_jobs_cap_is_refused(
    app: FastAPI, client: TestClient, alice: Account, bob: Account
) -> None:
    app.state.settings.compute_max_queued_per_user = 3
    code_repo(client, alice, "tool", {"run.py": "print(1)\n"})
    spec = {"code": {"repo": "alice/tool"}, "command": "python run.py"}
    mine = [post_job(client, alice, spec) for _ in range(3)]
    r = client.post(f"{API}/jobs", json=spec, headers=alice.headers)
    assert error_code(r, 429) == "too_many_queued_jobs"
    assert "3 jobs waiting in the queue" in r.json()["message"]
    rerun = client.post(f"{API}/jobs/{mine[0]}/rerun", headers=alice.headers)
    assert error_code(rerun, 429) == "too_many_queued_jobs"
    with app.state.db.session() as s:
        assert len(s.scalars(select(Job.id).where(Job.submitter_id == alice.user.id)).all()) == 3
    assert client.post(f"{API}/jobs", json=spec, headers=bob.headers).status_code == 201  # per user
    assert client.post(f"{API}/jobs/{mine[0]}/cancel", headers=alice.headers).status_code == 200
    assert client.post(f"{API}/jobs", json=spec, headers=alice.headers).status_code == 201  # room again
    app.state.settings.compute_max_queued_per_user = 0  # no limit
    assert client.post(f"{API}/jobs", json=spec, headers=alice.headers).status_code == 201


def test_the_sdk_maps_the_cap_to_a_typed_error_with_a_hint() -> None:
    request = httpx.Request("POST", "http://server/api/v1/jobs")
    body = {"error": "too_many_queued_jobs", "message": "you have 1000 jobs waiting in the queue"}
    err = error_from_response(httpx.Response(429, json=body, request=request))
    assert isinstance(err, TooManyRequestsError)
    assert (err.status, err.code) == (429, "too_many_queued_jobs")
    assert "cancel" in err.hint


# --- 6. a job that ends while it is being cancelled ---------------------------------------------------------


def test_a_shim_that_has_just_ended_is_seen_ended_with_its_exit_code(tmp_path: Path) -> None:
    """The CI flake: a shim that had just exited (a cancel's SIGTERM) was taken for one that never started,
    because the thread waiting for it held the Popen's lock until it had stored the exit code. Polled the
    moment it exits, it is `ended` with its code, every time."""
    woken = threading.Event()
    executor = LocalExecutor(on_exit=woken.set)
    for attempt in range(20):
        job_dir = tmp_path / str(attempt)
        job_dir.mkdir()
        launch = Launch(attempt, job_dir, [sys.executable, "-c", "raise SystemExit(3)"], Resources())
        handle = executor.submit(launch)
        deadline = time.monotonic() + 30
        while (seen := executor.poll(handle, launch)).phase == "running":  # as often as it can
            assert time.monotonic() < deadline
        assert (seen.phase, seen.exit_code) == ("ended", 3), seen
        assert woken.wait(30)  # and the scheduler is woken up
        woken.clear()


def test_a_job_lost_after_a_cancel_was_asked_ends_cancelled(app: FastAPI, alice: Account) -> None:
    """Whatever became of a job that was to stop (its shim gone without a word), it ends `cancelled`, not
    `failed`, and it is not queued again."""
    scheduler: Scheduler = app.state.scheduler
    [job_id] = enqueue(app, alice, 1, memory=GiB, status="running")
    with app.state.db.session() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(claimed_by=scheduler.id, handle=f"{HOST}:1:1", attempts=1, cancel_requested=True)
        )
        s.commit()

    class Vanished:
        name = "local"

        def poll(self, handle: str, launch: Launch) -> Observation:
            return Observation("lost", detail="the job never started")

        def cancel(self, handle: str, launch: Launch) -> None:
            pass

    scheduler._executors["local"] = Vanished()  # type: ignore[assignment]
    scheduler._watch()
    job = job_row(app, job_id)
    assert (job.status, job.reason, job.phase) == ("cancelled", "cancelled", "done"), job.message
    assert "the job never started" in job.message


def _shim_job(job_dir: Path, command: list[str], **extra: Any) -> Path:
    work = job_dir / "work"
    work.mkdir(parents=True)
    spec = {
        "job_id": 1,
        "argv": [],
        "command": command,
        "env": {"PATH": "/usr/bin:/bin"},
        "workdir": str(work),
        "time_limit": 60,
        "memory_bytes": 2**30,
        **extra,
    }
    (job_dir / "job.json").write_text(json.dumps(spec))
    return work


def test_a_cancel_before_the_command_starts_means_it_never_starts(tmp_path: Path) -> None:
    """The QA repro: a cancel's TERM that reached the shim before it had started the command was dropped;
    the command ran until the executor killed the shim 5 s later (its cgroups left behind)."""
    work = _shim_job(tmp_path, ["sh", "-c", "touch ran"], cgroups=True)
    run = shim.Run(tmp_path)
    run.stop("cancelled", "cancelled (SIGTERM): stopping the job")  # as the signal handler does
    assert run.main() == 0
    status = json.loads((tmp_path / "status.json").read_text())
    assert (status["reason"], status["exit_code"]) == ("cancelled", None)
    assert not (work / "ran").exists()
    assert not (tmp_path / shim.CGROUPS_FILE).exists()


def test_the_cgroups_of_a_killed_shim_are_removed_by_the_executor(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("control groups are made by a root server only")
    groups = shim.Cgroups.make(f"opensci-test-{os.getpid()}", 2**30, 64)
    assert groups is not None, "this root server could not make control groups"
    dirs = list(dict.fromkeys(groups.dirs.values()))
    recorded = {"dirs": {c: str(d) for c, d in groups.dirs.items()}, "v2": groups.v2}
    (tmp_path / shim.CGROUPS_FILE).write_text(json.dumps(recorded))
    shim.remove_leftover_cgroups(tmp_path)
    assert not any(d.exists() for d in dirs)
    assert not (tmp_path / shim.CGROUPS_FILE).exists()


def test_a_job_committing_its_outputs_can_no_longer_be_cancelled(
    app: FastAPI, client: TestClient, alice: Account
) -> None:
    """The QA repro: a cancel during collection was accepted (200) and ignored (the job succeeded). Now
    one of the two wins: a cancel asked first keeps collection from starting; once it has started, a
    cancel is 409 `job_collecting`."""
    code_repo(client, alice, "tool", {"run.py": "print(1)\n"})
    early, late = (post_job(client, alice, {"code": {"repo": "alice/tool"}, "command": "true"}) for _ in "ab")
    with app.state.db.session() as s:
        s.execute(update(Job).where(Job.id.in_([early, late])).values(status="running", phase="executing"))
        s.commit()
    with app.state.db.session() as s:
        stale = s.get(Job, early)
        assert stale is not None
        r = client.post(f"{API}/jobs/{early}/cancel", headers=alice.headers)
        assert r.status_code == 200 and r.json()["cancel_requested"], r.text
        assert not Scheduler._start_collecting(s, stale)  # the scheduler read it before the cancel
        collecting = s.get(Job, late)
        assert collecting is not None and Scheduler._start_collecting(s, collecting)
    r = client.post(f"{API}/jobs/{late}/cancel", headers=alice.headers)
    assert error_code(r, 409) == "job_collecting"
    assert "outputs are being committed" in r.json()["message"]
    assert not job_row(app, late).cancel_requested


def test_a_shim_killed_by_a_signal_reports_a_shell_style_exit_code(app: FastAPI, alice: Account) -> None:
    """Exit codes are never negative (QA: -9 and -15 on cancelled jobs); a job cancelled before its
    command ran has none."""
    scheduler: Scheduler = app.state.scheduler
    killed, cancelled = enqueue(app, alice, 2, memory=GiB, status="running")
    with app.state.db.session() as s:
        s.execute(update(Job).where(Job.id.in_([killed, cancelled])).values(claimed_by=scheduler.id))
        s.execute(update(Job).where(Job.id == cancelled).values(cancel_requested=True))
        s.commit()
    scheduler._finish(killed, Observation("ended", reason="failed", detail="the shim exited", exit_code=-9))
    scheduler._finish(cancelled, Observation("ended", reason="failed", exit_code=-15))
    assert (job_row(app, killed).status, job_row(app, killed).exit_code) == ("failed", 137)
    assert (job_row(app, cancelled).status, job_row(app, cancelled).exit_code) == ("cancelled", None)


LEVEL = """\
import os, signal, subprocess, sys, time
depth = int(sys.argv[1])
if depth < 3:  # bubblewrap, its pid 1, the reaper: TERM is not theirs (the reaper ignores it)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if depth == 2:
        time.sleep(1.0)  # the reaper has not started the command yet when the cancel comes

    def command_defaults():  # as the reaper starts it: TERM at its default, here held until handled
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    child = [sys.executable, __file__, str(depth + 1), sys.argv[2]]
    sys.exit(subprocess.call(child, preexec_fn=command_defaults if depth == 2 else None))
signal.signal(signal.SIGTERM, lambda *_: (open(sys.argv[2], "w").write("got TERM"), sys.exit(0)))
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
time.sleep(30)
"""


def test_a_cancel_before_the_reaper_starts_the_command_reaches_it_once_it_runs(tmp_path: Path) -> None:
    """QA round 5: in a sandbox, a TERM sent before the reaper had started the command reached only the
    reaper (which ignores it); the command ran on until KILL 3 s later, without its grace period. The
    watcher now sends the TERM again until it reaches the command."""
    import subprocess
    import threading as th

    script = tmp_path / "level.py"
    script.write_text(LEVEL)
    _shim_job(tmp_path / "job", ["true"], sandboxed=True, kill_grace=10)
    run = shim.Run(tmp_path / "job")
    got = tmp_path / "got"
    run.proc = subprocess.Popen([sys.executable, str(script), "0", str(got)], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(shim.tree(run.proc.pid)[0]) < 3:  # bubblewrap, its pid 1 and the reaper are up
            assert time.monotonic() < deadline
            time.sleep(0.01)
        run.stop("cancelled", "cancelled (SIGTERM): stopping the job")
        assert not run.delivered
        watcher = th.Thread(target=run.watch, daemon=True)
        watcher.start()
        assert run.proc.wait(timeout=9) == 0  # the command saved and ended within its grace period
        assert got.read_text() == "got TERM" and run.delivered
    finally:
        shim.signal_tree(run.proc.pid, signal.SIGKILL)
        run.proc.wait()
