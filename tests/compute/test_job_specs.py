"""Job specs the server refuses: each refusal is a 4xx in the one error envelope, with a message that says
what is wrong, and nothing is queued. In process, without a scheduler (nothing here runs)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from opensci.compute.models import Job, JobRepo
from opensci.compute.service import machine_memory
from tests.api_helpers import API, committed, create_repo, error_code
from tests.conftest import Account

BASE: dict[str, Any] = {
    "code": {"repo": "alice/tool"},
    "command": ["python", "main.py"],
    "inputs": {"data": {"repo": "alice/data"}},
    "output": {"repo": "alice/out", "branch": "runs"},
}


@dataclass
class World:
    app: FastAPI
    client: TestClient
    alice: Account
    bob: Account
    root: Account

    def jobs_in_database(self) -> tuple[int, int]:
        with self.app.state.db.session() as s:
            return s.scalar(select(func.count()).select_from(Job)), s.scalar(
                select(func.count()).select_from(JobRepo)
            )

    def assert_nothing_queued(self) -> None:
        assert self.jobs_in_database() == (0, 0)
        listed = self.client.get(f"{API}/jobs", headers=self.root.headers)
        assert listed.status_code == 200, listed.text
        assert listed.json() == {"jobs": [], "next_before": None}


@pytest.fixture
def world(
    app: FastAPI, client: TestClient, make_user: Callable[..., Account], alice: Account, bob: Account
) -> World:
    root = make_user("root", admin=True)
    create_repo(client, alice, "tool", kind="code")
    committed(client, alice, "alice/tool", {"main.py": "print('hi')\n"})
    create_repo(client, alice, "data", kind="dataset")
    committed(client, alice, "alice/data", {"values.csv": "v\n1\n"})
    create_repo(client, alice, "out", kind="dataset")
    create_repo(client, alice, "empty", kind="code")
    create_repo(client, bob, "secret", kind="dataset", private=True)
    committed(client, bob, "bob/secret", {"values.csv": "v\n2\n"})
    create_repo(client, bob, "shared", kind="dataset")
    create_repo(client, bob, "hidden-out", kind="dataset", private=True)
    return World(app, client, alice, bob, root)


def spec(**changes: Any) -> dict[str, Any]:
    """BASE with top-level fields replaced; a value of None removes the field."""
    out = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def resources(**fields: Any) -> dict[str, Any]:
    return spec(resources=fields)


def requirement(*lines: str) -> dict[str, Any]:
    return spec(env={"requirements": list(lines)})


def variable(name: str) -> dict[str, Any]:
    return spec(env={"variables": {name: "x"}})


@dataclass(frozen=True)
class Case:
    id: str
    body: Callable[[World], Any]  # the JSON body (or raw bytes)
    status: int
    error: str
    says: tuple[str, ...]  # fragments the message must contain (case-insensitive)
    who: str = "alice"  # alice, bob, root, anonymous, alice_read

    def headers(self, w: World) -> dict[str, str]:
        return {
            "alice": w.alice.headers,
            "bob": w.bob.headers,
            "root": w.root.headers,
            "alice_read": w.alice.read_headers,
            "anonymous": {},
        }[self.who]


def fixed(body: Any) -> Callable[[World], Any]:
    return lambda w: body


def configured(body: Any, **settings: Any) -> Callable[[World], Any]:
    """The body, sent after changing the server's settings."""

    def make(w: World) -> Any:
        for key, value in settings.items():
            setattr(w.app.state.settings, key, value)
        return body

    return make


CASES = [
    Case("missing code", fixed(spec(code=None)), 422, "invalid_input", ("code", "required")),
    Case("missing command", fixed(spec(command=None)), 422, "invalid_input", ("command", "required")),
    Case("empty command list", fixed(spec(command=[])), 422, "invalid_input", ("command", "empty")),
    Case("blank command string", fixed(spec(command="   ")), 422, "invalid_input", ("command", "empty")),
    Case("unbalanced quotes", fixed(spec(command="python 'x")), 422, "invalid_input", ("command", "split")),
    Case("unknown field", fixed(spec(colour="blue")), 422, "invalid_input", ("colour", "not permitted")),
    Case(
        "unknown field of a part",
        fixed(resources(cores=2)),
        422,
        "invalid_input",
        ("cores", "not permitted"),
    ),
    Case(
        "input name with ..",
        fixed(spec(inputs={"../x": {"repo": "alice/data"}})),
        422,
        "invalid_input",
        ("'../x'", "inputs/<name>"),
    ),
    Case(
        "empty input name",
        fixed(spec(inputs={"": {"repo": "alice/data"}})),
        422,
        "invalid_input",
        ("input name ''",),
    ),
    Case(
        "repository that is not owner/name",
        fixed(spec(code={"repo": "tool"})),
        422,
        "invalid_input",
        ("'tool'", "owner/name"),
    ),
    Case(
        "code that is a dataset",
        fixed(spec(code={"repo": "alice/data"})),
        422,
        "invalid_spec",
        ("code", "alice/data", "dataset", "code repository"),
    ),
    Case(
        "input that is code",
        fixed(spec(inputs={"data": {"repo": "alice/tool"}})),
        422,
        "invalid_spec",
        ("input data", "alice/tool", "code repository"),
    ),
    Case(
        "output that is code",
        fixed(spec(output={"repo": "alice/tool"})),
        422,
        "invalid_spec",
        ("output", "alice/tool", "code repository"),
    ),
    Case(
        "unknown code repository",
        fixed(spec(code={"repo": "alice/nothing"})),
        404,
        "repo_not_found",
        ("alice/nothing",),
    ),
    Case(
        "unknown input repository",
        fixed(spec(inputs={"data": {"repo": "nobody/nothing"}})),
        404,
        "repo_not_found",
        ("nobody/nothing",),
    ),
    Case(
        "someone else's private input",
        fixed(spec(inputs={"data": {"repo": "bob/secret"}})),
        404,
        "repo_not_found",
        ("bob/secret",),
    ),
    Case(
        "unknown revision of the code",
        fixed(spec(code={"repo": "alice/tool", "rev": "no-such-branch"})),
        404,
        "revision_not_found",
        ("code", "'no-such-branch'", "alice/tool"),
    ),
    Case(
        "code repository without commits",
        fixed(spec(code={"repo": "alice/empty"})),
        404,
        "revision_not_found",
        ("code", "'main'", "alice/empty"),
    ),
    Case(
        "unknown commit of an input",
        fixed(spec(inputs={"data": {"repo": "alice/data", "rev": "0" * 40}})),
        404,
        "revision_not_found",
        ("input data", "0" * 40, "alice/data"),
    ),
    Case("memory 'lots'", fixed(resources(memory="lots")), 422, "invalid_input", ("memory", "'lots'")),
    Case("memory 0", fixed(resources(memory=0)), 422, "invalid_input", ("memory", "positive")),
    Case("memory '0G'", fixed(resources(memory="0G")), 422, "invalid_input", ("memory", "positive")),
    Case(
        "memory over the machine",
        lambda w: resources(memory=machine_memory() + 1024**3),
        422,
        "invalid_spec",
        ("resources.memory", "at most"),
    ),
    Case(
        "memory over the configured maximum",
        configured(resources(memory="2G"), compute_max_memory_bytes=2**30),
        422,
        "invalid_spec",
        ("resources.memory", f"at most {2**30} bytes"),
    ),
    Case("cpus 0", fixed(resources(cpus=0)), 422, "invalid_input", ("cpus", "greater than or equal to 1")),
    Case(
        "more cpus than the local executor has",
        configured(resources(cpus=3), compute_local_cpus=2),
        422,
        "invalid_spec",
        ("resources.cpus", "2 CPUs"),
    ),
    Case("gpus on local", fixed(resources(gpus=1)), 422, "invalid_spec", ("gpus", "no GPUs")),
    Case(
        "time limit over the maximum",
        lambda w: resources(time_limit=w.app.state.settings.compute_max_time_limit + 1),
        422,
        "invalid_spec",
        ("time_limit", "at most"),
    ),
    Case("time limit 0", fixed(resources(time_limit=0)), 422, "invalid_input", ("time_limit",)),
    Case(
        "unknown executor",
        fixed(spec(executor="kubernetes")),
        422,
        "invalid_spec",
        ("'kubernetes'", "not available", "local"),
    ),
    Case(
        "slurm when it is not enabled",
        fixed(spec(executor="slurm")),
        422,
        "invalid_spec",
        ("'slurm'", "not available"),
    ),
    Case(
        "priority above 0 by a non-admin",
        fixed(spec(priority=10)),
        403,
        "priority_not_allowed",
        ("administrators", "priority"),
    ),
    Case("priority above 100", fixed(spec(priority=101)), 422, "invalid_input", ("priority",), who="root"),
    Case(
        "output readable but not writable",
        fixed(spec(output={"repo": "bob/shared"})),
        403,
        "forbidden",
        ("bob/shared", "write"),
    ),
    Case(
        "output invisible",
        fixed(spec(output={"repo": "bob/hidden-out"})),
        404,
        "repo_not_found",
        ("bob/hidden-out",),
    ),
    Case(
        "invalid output branch",
        fixed(spec(output={"repo": "alice/out", "branch": "bad..name"})),
        422,
        "invalid_ref",
        ("branch", "'bad..name'"),
    ),
    Case(
        "output branch that looks like an option",
        fixed(spec(output={"repo": "alice/out", "branch": "-f"})),
        422,
        "invalid_ref",
        ("branch", "'-f'"),
    ),
    Case("requirement -e .", fixed(requirement("-e .")), 422, "invalid_spec", ("'-e .'", "options")),
    Case(
        "requirement --index-url",
        fixed(requirement("numpy", "--index-url https://example.org/simple")),
        422,
        "invalid_spec",
        ("--index-url", "options"),
    ),
    Case(
        "URL requirement",
        fixed(requirement("pkg @ https://example.org/pkg-1.0-py3-none-any.whl")),
        422,
        "invalid_spec",
        ("pkg @", "URL"),
    ),
    Case(
        "invalid requirement",
        fixed(requirement("numpy>=")),
        422,
        "invalid_spec",
        ("'numpy>='", "not valid"),
    ),
    Case(
        "path requirement",
        fixed(requirement("./local/pkg")),
        422,
        "invalid_spec",
        ("'./local/pkg'", "not valid"),
    ),
    Case("variable PATH", fixed(variable("PATH")), 422, "invalid_input", ("PATH", "set by the platform")),
    Case(
        "variable OPENSCI_X",
        fixed(variable("OPENSCI_X")),
        422,
        "invalid_input",
        ("OPENSCI_X", "set by the platform"),
    ),
    Case(
        "variable that is no name",
        fixed(variable("1=2")),
        422,
        "invalid_input",
        ("'1=2'", "environment variable name"),
    ),
    Case("anonymous", fixed(spec()), 401, "login_required", ("log in",), who="anonymous"),
    Case("read-only token", fixed(spec()), 403, "insufficient_scope", ("read-only",), who="alice_read"),
    Case("malformed JSON", fixed(b'{"code": '), 422, "invalid_input", ("JSON",)),
    Case("a JSON list", fixed([spec()]), 422, "invalid_input", ("dictionary",)),
    Case("a JSON string", fixed("python main.py"), 422, "invalid_input", ("dictionary",)),
]


def post(w: World, case: Case) -> Any:
    body = case.body(w)
    headers = case.headers(w)
    if isinstance(body, bytes):
        return w.client.post(
            f"{API}/jobs", content=body, headers={**headers, "Content-Type": "application/json"}
        )
    return w.client.post(f"{API}/jobs", json=body, headers=headers)


def test_the_base_spec_is_accepted(world: World) -> None:
    """The spec every refused case starts from is fine: each case fails for its own reason only."""
    r = world.client.post(f"{API}/jobs", json=spec(), headers=world.alice.headers)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued" and job["phase"] == "waiting"
    assert job["code"]["repo"] == "alice/tool" and len(job["code"]["commit"]) == 40
    assert job["inputs"]["data"]["kind"] == "dataset"
    assert job["output"] == {"repo": "alice/out", "kind": "dataset", "branch": "runs", "commit": None}
    assert world.jobs_in_database() == (1, 3)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_refused_spec_queues_nothing(world: World, case: Case) -> None:
    r = post(world, case)
    assert error_code(r, case.status) == case.error, r.text
    message = r.json()["message"]
    for fragment in case.says:
        assert fragment.lower() in message.lower(), f"{fragment!r} not in {message!r}"
    if case.status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")
    world.assert_nothing_queued()


def test_a_hidden_repository_looks_exactly_like_a_missing_one(world: World) -> None:
    def refusal(name: str) -> tuple[int, dict[str, Any]]:
        r = world.client.post(
            f"{API}/jobs", json=spec(inputs={"data": {"repo": name}}), headers=world.alice.headers
        )
        body = r.json()
        body["message"] = body["message"].replace(name, "<name>")
        return r.status_code, body

    assert refusal("bob/secret") == refusal("bob/no-such-data")
    world.assert_nothing_queued()
    # bob, who can read it, may use it.
    r = world.client.post(
        f"{API}/jobs",
        json=spec(inputs={"data": {"repo": "bob/secret"}}, output=None),
        headers=world.bob.headers,
    )
    assert r.status_code == 201, r.text


def test_an_administrator_may_give_a_priority(world: World) -> None:
    r = world.client.post(f"{API}/jobs", json=spec(priority=10), headers=world.root.headers)
    assert r.status_code == 201, r.text
    assert r.json()["priority"] == 10 and r.json()["submitter"] == "root"
    lowered = world.client.post(f"{API}/jobs", json=spec(priority=-5), headers=world.alice.headers)
    assert lowered.status_code == 201, lowered.text
    assert lowered.json()["priority"] == -5


def test_the_spec_is_normalized(world: World) -> None:
    """A command string is split like a shell does; sizes become bytes; defaults are filled in;
    requirements are normalized and sorted."""
    body = spec(
        command="python main.py 'two words'",
        resources={"memory": "512M", "cpus": 1},
        env={"requirements": ["Requests >= 2", "attrs"], "variables": {"SEED": "1"}},
    )
    r = world.client.post(f"{API}/jobs", json=body, headers=world.alice.headers)
    assert r.status_code == 201, r.text
    job = r.json()
    settings = world.app.state.settings
    assert job["command"] == ["python", "main.py", "two words"]
    assert job["resources"] == {
        "cpus": 1,
        "memory": 512 * 1024**2,
        "time_limit": settings.compute_default_time_limit,
        "gpus": 0,
    }
    assert job["executor"] == "local" and job["spec"]["executor"] == "local"
    assert job["environment"]["requirements"] == ["Requests>=2", "attrs"]
    assert job["spec"]["env"]["variables"] == {"SEED": "1"}
