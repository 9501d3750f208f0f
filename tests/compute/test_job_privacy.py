"""Who sees and controls which job: a job is as private as the most private repository it touches (its
code, inputs and output); others get "not found" everywhere (the job, its logs, cancel, rerun) and never
see it listed. In process, without a scheduler: every job here stays queued unless cancelled."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from opensci.compute.models import Job
from tests.api_helpers import API, committed, create_repo, error_code
from tests.conftest import Account

STRANGERS = ("bob", "anonymous")


@dataclass
class World:
    app: FastAPI
    client: TestClient
    accounts: dict[str, Account]
    jobs: dict[str, int]

    def headers(self, who: str) -> dict[str, str]:
        if who == "anonymous":
            return {}
        if who == "alice_read":
            return self.accounts["alice"].read_headers
        return self.accounts[who].headers

    def get(self, who: str, url: str, **kw: Any) -> Any:
        return self.client.get(url, headers={**self.headers(who), **kw.pop("headers", {})}, **kw)

    def post(self, who: str, url: str, **kw: Any) -> Any:
        return self.client.post(url, headers=self.headers(who), **kw)

    def submit(self, who: str, spec: dict[str, Any]) -> dict[str, Any]:
        r = self.post(who, f"{API}/jobs", json=spec)
        assert r.status_code == 201, r.text
        return r.json()

    def listed(self, who: str, **params: Any) -> set[int]:
        r = self.get(who, f"{API}/jobs", params=params)
        assert r.status_code == 200, r.text
        return {j["id"] for j in r.json()["jobs"]}

    def count(self) -> int:
        with self.app.state.db.session() as s:
            return int(s.scalar(select(func.count()).select_from(Job)) or 0)


def job_spec(
    code: str = "alice/tool", inputs: dict[str, str] | None = None, output: str | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "code": {"repo": code},
        "command": ["python", "main.py"],
        "inputs": {name: {"repo": repo} for name, repo in (inputs or {}).items()},
    }
    if output:
        spec["output"] = {"repo": output}
    return spec


# What each job touches, and who (besides root, the site admin) may read it.
JOBS: dict[str, tuple[dict[str, Any], set[str]]] = {
    "public": (job_spec(inputs={"data": "alice/data"}, output="alice/out"), {"*"}),
    "public-no-output": (job_spec(inputs={"data": "alice/data"}), {"*"}),
    "private-input": (job_spec(inputs={"data": "alice/private-data"}), {"alice", "alice_read"}),
    "private-code": (job_spec(code="alice/private-code"), {"alice", "alice_read"}),
    "private-output": (job_spec(output="alice/private-out"), {"alice", "alice_read"}),
    "lab-input": (job_spec(inputs={"lab": "lab/lab-data"}), {"alice", "alice_read", "carol", "dave"}),
    "lab-output": (job_spec(inputs={"data": "alice/data"}, output="lab/results"), {"*"}),
}
PRIVATE = [k for k, (_, readers) in JOBS.items() if "*" not in readers]
ACTORS = ("anonymous", "bob", "carol", "dave", "alice_read", "alice", "root")


def can_read(actor: str, job: str) -> bool:
    readers = JOBS[job][1]
    return actor == "root" or "*" in readers or actor in readers


@pytest.fixture
def world(app: FastAPI, client: TestClient, make_user: Callable[..., Account]) -> World:
    accounts = {name: make_user(name) for name in ("alice", "bob", "carol", "dave")}
    accounts["root"] = make_user("root", admin=True)
    alice = accounts["alice"]
    assert client.post(f"{API}/orgs", json={"name": "lab"}, headers=alice.headers).status_code == 201
    for member, role in (("carol", "read"), ("dave", "write")):
        r = client.put(f"{API}/orgs/lab/members/{member}", json={"role": role}, headers=alice.headers)
        assert r.status_code == 200, r.text
    repos = [
        ("alice", "tool", "code", False),
        ("alice", "private-code", "code", True),
        ("alice", "data", "dataset", False),
        ("alice", "private-data", "dataset", True),
        ("alice", "out", "dataset", False),
        ("alice", "private-out", "dataset", True),
        ("lab", "lab-data", "dataset", True),
        ("lab", "results", "dataset", False),
    ]
    for owner, name, kind, private in repos:
        create_repo(client, alice, name, owner=owner, kind=kind, private=private)
        if not name.endswith(("out", "results")):
            committed(client, alice, f"{owner}/{name}", {"main.py": "print('hi')\n", "a.csv": "a\n1\n"})
    w = World(app, client, accounts, {})
    w.jobs = {key: w.submit("alice", spec)["id"] for key, (spec, _) in JOBS.items()}
    return w


def test_private_jobs_are_not_found_for_those_who_cannot_read_them(world: World) -> None:
    """The job, its logs (plain and followed), cancel and rerun: 404, exactly as for a job that does not
    exist; and nothing is cancelled or queued."""
    missing = max(world.jobs.values()) + 1000
    before = world.count()
    for key in PRIVATE:
        job_id = world.jobs[key]
        for actor in ACTORS:
            if can_read(actor, key):
                continue
            requests = {
                "job": lambda a, j: world.get(a, f"{API}/jobs/{j}"),
                "logs": lambda a, j: world.get(a, f"{API}/jobs/{j}/logs"),
                "follow": lambda a, j: world.get(a, f"{API}/jobs/{j}/logs", params={"follow": "true"}),
                "sse": lambda a, j: world.get(
                    a, f"{API}/jobs/{j}/logs", headers={"Accept": "text/event-stream"}
                ),
                "cancel": lambda a, j: world.post(a, f"{API}/jobs/{j}/cancel"),
                "rerun": lambda a, j: world.post(a, f"{API}/jobs/{j}/rerun"),
            }
            for what, send in requests.items():
                r = send(actor, job_id)
                where = f"{actor} {what} {key}"
                assert error_code(r, 404) == "job_not_found", where
                ghost = send(actor, missing)
                assert ghost.status_code == 404, where
                assert r.json()["message"].replace(str(job_id), "N") == ghost.json()["message"].replace(
                    str(missing), "N"
                ), where
    assert world.count() == before
    for key in PRIVATE:
        assert world.get("alice", f"{API}/jobs/{world.jobs[key]}").json()["status"] == "queued"


def test_private_jobs_are_never_listed_for_those_who_cannot_read_them(world: World) -> None:
    filters: list[dict[str, Any]] = [
        {},
        {"owner": "alice"},
        {"owner": "ALICE"},
        {"status": "queued"},
        {"repo": "alice/tool"},
        {"repo": "alice/data"},
        {"repo": "lab/results"},
        {"owner": "alice", "status": "queued", "repo": "alice/tool"},
        {"limit": 1},
    ]
    for actor in ACTORS:
        visible = {world.jobs[k] for k in JOBS if can_read(actor, k)}
        for params in filters:
            seen = world.listed(actor, **params)
            assert seen <= visible, (actor, params, seen - visible)
        everything = world.listed(actor)
        assert everything == visible, actor
        # Walking the pages finds exactly the same jobs.
        paged: set[int] = set()
        before: int | None = None
        while True:
            r = world.get(actor, f"{API}/jobs", params={"limit": 2, **({"before": before} if before else {})})
            page = r.json()
            paged |= {j["id"] for j in page["jobs"]}
            before = page["next_before"]
            if before is None:
                break
        assert paged == visible, actor
    # Filtering by a repository one cannot see is a 404, like the repository itself.
    for actor in STRANGERS:
        for repo in ("alice/private-data", "alice/private-code", "alice/private-out", "lab/lab-data"):
            r = world.get(actor, f"{API}/jobs", params={"repo": repo})
            assert error_code(r, 404) == "repo_not_found", (actor, repo)


def test_readers_see_private_jobs(world: World) -> None:
    """The submitter (with a read token too), org members who can read, and the site admin."""
    touched = {
        "private-input": "alice/private-data",
        "private-code": "alice/private-code",
        "private-output": "alice/private-out",
        "lab-input": "lab/lab-data",
    }
    for key in PRIVATE:
        job_id = world.jobs[key]
        for actor in ACTORS:
            if not can_read(actor, key):
                continue
            r = world.get(actor, f"{API}/jobs/{job_id}")
            assert r.status_code == 200, (actor, key, r.text)
            assert r.json()["submitter"] == "alice"
            logs = world.get(actor, f"{API}/jobs/{job_id}/logs")
            assert logs.status_code == 200, (actor, key, logs.text)
            assert logs.headers["x-job-status"] == "queued"
            for params in ({}, {"owner": "alice"}, {"status": "queued"}, {"repo": touched[key]}):
                assert job_id in world.listed(actor, **params), (actor, key, params)
            assert job_id not in world.listed(actor, status="running")
            assert job_id not in world.listed(actor, owner="bob")


def test_a_public_job_is_visible_to_all_but_cancelled_only_by_its_submitter_or_an_admin(world: World) -> None:
    job_id = world.jobs["public"]
    for actor in ACTORS:
        r = world.get(actor, f"{API}/jobs/{job_id}")
        assert r.status_code == 200, (actor, r.text)
        assert job_id in world.listed(actor, repo="alice/out")
    assert error_code(world.post("anonymous", f"{API}/jobs/{job_id}/cancel"), 401) == "login_required"
    for actor in ("bob", "carol", "dave"):
        r = world.post(actor, f"{API}/jobs/{job_id}/cancel")
        assert error_code(r, 403) == "forbidden", actor
        assert "submitter" in r.json()["message"]
    r = world.post("alice_read", f"{API}/jobs/{job_id}/cancel")
    assert error_code(r, 403) == "insufficient_scope"
    assert world.get("alice", f"{API}/jobs/{job_id}").json()["status"] == "queued"
    # The site admin may cancel anyone's job; the lab's job by alice too.
    r = world.post("root", f"{API}/jobs/{world.jobs['lab-input']}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled" and r.json()["reason"] == "cancelled"
    r = world.post("alice", f"{API}/jobs/{job_id}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled" and r.json()["ended_at"]


def test_cancelling_a_finished_job_is_a_conflict(world: World) -> None:
    job_id = world.jobs["public-no-output"]
    first = world.post("alice", f"{API}/jobs/{job_id}/cancel")
    assert first.status_code == 200 and first.json()["status"] == "cancelled"
    again = world.post("alice", f"{API}/jobs/{job_id}/cancel")
    assert error_code(again, 409) == "job_finished"
    assert "cancelled" in again.json()["message"]
    assert error_code(world.post("root", f"{API}/jobs/{job_id}/cancel"), 409) == "job_finished"
    # Its log, followed, ends at once with the final status.
    with world.client.stream(
        "GET", f"{API}/jobs/{job_id}/logs", params={"follow": "true"}, headers=world.headers("alice")
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    assert "event: end" in text and '"status": "cancelled"' in text
    # An ended job can still be run again.
    rerun = world.post("alice", f"{API}/jobs/{job_id}/rerun")
    assert rerun.status_code == 201, rerun.text
    assert rerun.json()["rerun_of"] == job_id and rerun.json()["status"] == "queued"


def test_who_may_rerun_a_job(world: World) -> None:
    """Rerunning submits the recorded spec as the one who asks: it needs what submitting needs (a login, a
    write token, read access to code and inputs, write access to the output)."""
    before = world.count()
    public = world.jobs["public"]
    assert error_code(world.post("anonymous", f"{API}/jobs/{public}/rerun"), 401) == "login_required"
    assert error_code(world.post("alice_read", f"{API}/jobs/{public}/rerun"), 403) == "insufficient_scope"
    # bob may read the job but not write its output, alice/out.
    r = world.post("bob", f"{API}/jobs/{public}/rerun")
    assert error_code(r, 403) == "forbidden"
    assert "alice/out" in r.json()["message"]
    # dave may write lab/results, the output of lab-output; bob may not.
    lab = world.jobs["lab-output"]
    assert error_code(world.post("bob", f"{API}/jobs/{lab}/rerun"), 403) == "forbidden"
    assert error_code(world.post("carol", f"{API}/jobs/{lab}/rerun"), 403) == "forbidden"
    assert world.count() == before
    r = world.post("dave", f"{API}/jobs/{lab}/rerun")
    assert r.status_code == 201, r.text
    assert r.json()["submitter"] == "dave" and r.json()["rerun_of"] == lab
    assert r.json()["output"]["repo"] == "lab/results"


def test_a_rerun_by_someone_else_uses_the_recorded_commits(world: World) -> None:
    original = world.get("alice", f"{API}/jobs/{world.jobs['public-no-output']}").json()
    alice = world.accounts["alice"]
    newer = committed(world.client, alice, "alice/tool", {"main.py": "print('changed')\n"})
    assert newer != original["code"]["commit"]
    r = world.post("bob", f"{API}/jobs/{original['id']}/rerun")
    assert r.status_code == 201, r.text
    again = r.json()
    assert again["submitter"] == "bob" and again["rerun_of"] == original["id"]
    assert again["code"]["commit"] == original["code"]["commit"]
    assert again["inputs"]["data"]["commit"] == original["inputs"]["data"]["commit"]
    assert again["command"] == original["command"]
    # bob's rerun is bob's: he may cancel it; alice may not.
    assert world.post("alice", f"{API}/jobs/{again['id']}/cancel").status_code == 403
    assert world.post("bob", f"{API}/jobs/{again['id']}/cancel").status_code == 200


def test_a_rerun_by_a_non_admin_drops_the_priority(world: World) -> None:
    spec = {**job_spec(inputs={"data": "alice/data"}), "priority": 10}
    urgent = world.submit("root", spec)
    assert urgent["priority"] == 10
    mine = world.post("alice", f"{API}/jobs/{urgent['id']}/rerun")
    assert mine.status_code == 201, mine.text
    assert mine.json()["priority"] == 0
    theirs = world.post("root", f"{API}/jobs/{urgent['id']}/rerun")
    assert theirs.status_code == 201 and theirs.json()["priority"] == 10


def test_a_job_over_a_deleted_repository_is_hidden_from_all_but_admins_and_its_submitter(
    world: World,
) -> None:
    alice = world.accounts["alice"]
    create_repo(world.client, alice, "doomed", kind="dataset")
    committed(world.client, alice, "alice/doomed", {"a.csv": "a\n1\n"})
    job_id = world.submit("alice", job_spec(inputs={"doomed": "alice/doomed"}))["id"]
    assert world.get("bob", f"{API}/jobs/{job_id}").status_code == 200
    r = world.client.delete(f"{API}/repos/alice/doomed", headers=alice.headers)
    assert r.status_code == 204, r.text
    for actor in ("anonymous", "bob", "carol"):
        assert error_code(world.get(actor, f"{API}/jobs/{job_id}"), 404) == "job_not_found", actor
        assert error_code(world.get(actor, f"{API}/jobs/{job_id}/logs"), 404) == "job_not_found", actor
        assert job_id not in world.listed(actor), actor
        assert job_id not in world.listed(actor, owner="alice", status="queued"), actor
    # Its submitter keeps sight of it (the job and its log were theirs), also with a read-only token.
    for actor in ("alice", "alice_read"):
        assert world.get(actor, f"{API}/jobs/{job_id}").status_code == 200, actor
        assert job_id in world.listed(actor, owner="alice", status="queued"), actor
    # A new repository of the same name (not the one the job read) changes nothing for others.
    create_repo(world.client, alice, "doomed", kind="dataset")
    assert world.get("bob", f"{API}/jobs/{job_id}").status_code == 404
    r = world.get("root", f"{API}/jobs/{job_id}")
    assert r.status_code == 200, r.text
    assert r.json()["inputs"]["doomed"]["repo"] == "alice/doomed"
    assert job_id in world.listed("root", owner="alice")
    assert world.post("root", f"{API}/jobs/{job_id}/cancel").json()["status"] == "cancelled"


def test_a_job_whose_input_was_made_private_stays_visible_to_its_submitter_only(world: World) -> None:
    """The QA repro: bob's job over alice's public dataset failed (rightly) when alice made it private,
    and then bob got 404 for his own job: he could not learn why it failed."""
    alice = world.accounts["alice"]
    create_repo(world.client, alice, "turned", kind="dataset")
    committed(world.client, alice, "alice/turned", {"a.csv": "a\n1\n"})
    job_id = world.submit("bob", job_spec(inputs={"t": "alice/turned"}))["id"]
    r = world.client.patch(f"{API}/repos/alice/turned", json={"private": True}, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert world.get("bob", f"{API}/jobs/{job_id}").status_code == 200
    assert world.get("bob", f"{API}/jobs/{job_id}/logs").status_code == 200
    assert job_id in world.listed("bob", owner="bob")
    for actor in ("anonymous", "carol"):
        assert error_code(world.get(actor, f"{API}/jobs/{job_id}"), 404) == "job_not_found", actor
        assert job_id not in world.listed(actor), actor
