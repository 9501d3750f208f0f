"""Job specs the server refuses: each refusal is a 4xx in the one error envelope, with a message that says
what is wrong, and nothing is queued. In process, without a scheduler (nothing here runs)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from opensci.accounts import service as accounts
from opensci.accounts.permissions import Actor
from opensci.compute import service
from opensci.compute.models import Job, JobRepo
from opensci.compute.service import machine_memory
from opensci.errors import InvalidInput
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


# The start of a body whose `env` is nested as deep as a test wants: `env` is at depth 2.
DEEP_PREFIX = b'{"code": {"repo": "alice/tool"}, "command": "true", "env": '


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
    Case("missing code", fixed(spec(code=None)), 422, "invalid_spec", ("code", "required")),
    Case("missing command", fixed(spec(command=None)), 422, "invalid_spec", ("command", "required")),
    Case("empty command list", fixed(spec(command=[])), 422, "invalid_spec", ("command", "empty")),
    Case("blank command string", fixed(spec(command="   ")), 422, "invalid_spec", ("command", "empty")),
    Case("unbalanced quotes", fixed(spec(command="python 'x")), 422, "invalid_spec", ("command", "split")),
    Case("unknown field", fixed(spec(colour="blue")), 422, "invalid_spec", ("colour", "not permitted")),
    Case(
        "unknown field of a part",
        fixed(resources(cores=2)),
        422,
        "invalid_spec",
        ("cores", "not permitted"),
    ),
    Case(
        "input name with ..",
        fixed(spec(inputs={"../x": {"repo": "alice/data"}})),
        422,
        "invalid_spec",
        ("'../x'", "inputs/<name>"),
    ),
    Case(
        "empty input name",
        fixed(spec(inputs={"": {"repo": "alice/data"}})),
        422,
        "invalid_spec",
        ("input name ''",),
    ),
    Case(
        "repository that is not owner/name",
        fixed(spec(code={"repo": "tool"})),
        422,
        "invalid_spec",
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
    Case("memory 'lots'", fixed(resources(memory="lots")), 422, "invalid_spec", ("memory", "'lots'")),
    Case("memory 0", fixed(resources(memory=0)), 422, "invalid_spec", ("memory", "positive")),
    Case("memory '0G'", fixed(resources(memory="0G")), 422, "invalid_spec", ("memory", "positive")),
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
    Case("cpus 0", fixed(resources(cpus=0)), 422, "invalid_spec", ("cpus", "greater than or equal to 1")),
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
    Case("time limit 0", fixed(resources(time_limit=0)), 422, "invalid_spec", ("time_limit",)),
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
    Case("priority above 100", fixed(spec(priority=101)), 422, "invalid_spec", ("priority",), who="root"),
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
    # A branch that git refuses is a mistake of the spec like any other (finding: 422 invalid_ref).
    Case(
        "invalid output branch",
        fixed(spec(output={"repo": "alice/out", "branch": "bad..name"})),
        422,
        "invalid_spec",
        ("output.branch: invalid branch name 'bad..name'",),
    ),
    Case(
        "invalid output branch under refs/heads/",
        fixed(spec(output={"repo": "alice/out", "branch": "refs/heads/a..b"})),
        422,
        "invalid_spec",
        ("output.branch: invalid branch name 'refs/heads/a..b'",),
    ),
    Case(
        "output branch that looks like an option",
        fixed(spec(output={"repo": "alice/out", "branch": "-f"})),
        422,
        "invalid_spec",
        ("output.branch", "'-f'"),
    ),
    Case(
        "empty output branch",
        fixed(spec(output={"repo": "alice/out", "branch": ""})),
        422,
        "invalid_spec",
        ("output.branch", "invalid branch name ''"),
    ),
    Case(
        "output branch with an unpaired surrogate",
        fixed(json.dumps(spec(output={"repo": "alice/out", "branch": "a\udcffb"})).encode()),
        422,
        "invalid_spec",
        ("output.branch", "not valid Unicode"),
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
        ("requirement 'numpy>=' is not valid: expected", "(at character 6)"),
    ),
    Case(
        "a requirement with a line break",
        fixed(requirement("numpy\n@ https://x/y.whl")),
        422,
        "invalid_spec",
        ("one requirement a line",),
    ),
    Case(
        "git URL requirement",
        fixed(requirement("git+https://x/y")),
        422,
        "invalid_spec",
        ("requirement 'git+https://x/y': direct URLs are not allowed",),
    ),
    Case(
        "path requirement",
        fixed(requirement("./local/pkg")),
        422,
        "invalid_spec",
        ("'./local/pkg'", "not valid"),
    ),
    Case("variable PATH", fixed(variable("PATH")), 422, "invalid_spec", ("PATH", "set by the platform")),
    Case(
        "variable OPENSCI_X",
        fixed(variable("OPENSCI_X")),
        422,
        "invalid_spec",
        ("OPENSCI_X", "set by the platform"),
    ),
    Case(
        "variable that is no name",
        fixed(variable("1=2")),
        422,
        "invalid_spec",
        ("'1=2'", "environment variable name"),
    ),
    Case("anonymous", fixed(spec()), 401, "login_required", ("log in",), who="anonymous"),
    Case("read-only token", fixed(spec()), 403, "insufficient_scope", ("read-only",), who="alice_read"),
    Case("malformed JSON", fixed(b'{"code": '), 422, "invalid_spec", ("not valid JSON", "line 1")),
    Case("empty body", fixed(b""), 422, "invalid_spec", ("body is empty", "JSON object")),
    Case("body not UTF-8", fixed(b'{"command": "\xff"}'), 422, "invalid_spec", ("not valid JSON", "UTF-8")),
    Case(
        "a number of 5000 digits",
        fixed(b'{"priority": ' + b"9" * 5000 + b"}"),
        422,
        "invalid_spec",
        ("not valid JSON", "digits"),
    ),
    # Python's JSON decoder stops at about 1000 levels with a RecursionError (finding: a 500).
    Case(
        "JSON nested 1000 deep",
        fixed(DEEP_PREFIX + b"[" * 1000 + b"]" * 1000 + b"}"),
        422,
        "invalid_spec",
        ("the request body is nested too deeply",),
    ),
    Case(
        "JSON nested 100000 deep",
        fixed(DEEP_PREFIX + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        422,
        "invalid_spec",
        ("the request body is nested too deeply",),
    ),
    Case(
        "JSON objects nested 1000 deep",
        fixed(DEEP_PREFIX + b'{"a":' * 1000 + b"1" + b"}" * 1000 + b"}"),
        422,
        "invalid_spec",
        ("the request body is nested too deeply",),
    ),
    Case(
        "JSON nested 990 deep",  # decoded, but deeper than any spec: refused before validation
        fixed(DEEP_PREFIX + b"[" * 990 + b"]" * 990 + b"}"),
        422,
        "invalid_spec",
        ("the request body is nested too deeply", "at most 32 levels"),
    ),
    Case(
        "JSON nested 33 deep",
        fixed(DEEP_PREFIX + b"[" * 32 + b"]" * 32 + b"}"),
        422,
        "invalid_spec",
        ("the request body is nested too deeply",),
    ),
    Case(
        "JSON nested 32 deep",  # within the bound: refused for what it is
        fixed(DEEP_PREFIX + b"[" * 31 + b"]" * 31 + b"}"),
        422,
        "invalid_spec",
        ("env: must be an object, not a list",),
    ),
    Case("a JSON list", fixed([spec()]), 422, "invalid_spec", ("JSON object", "not a list")),
    Case("a JSON string", fixed("python main.py"), 422, "invalid_spec", ("JSON object", "not a string")),
    Case("JSON null", fixed(b"null"), 422, "invalid_spec", ("JSON object", "not null")),
    # Strict JSON types: nothing is coerced (finding: "network": "yes" was stored as true).
    Case(
        "network 'yes'",
        fixed(spec(env={"network": "yes"})),
        422,
        "invalid_spec",
        ("env.network", "true or false"),
    ),
    Case("network 1", fixed(spec(env={"network": 1})), 422, "invalid_spec", ("env.network", "true or false")),
    Case(
        "cpus '2'",
        fixed(resources(cpus="2")),
        422,
        "invalid_spec",
        ("resources.cpus", "whole number", "string"),
    ),
    Case("cpus 2.0", fixed(resources(cpus=2.0)), 422, "invalid_spec", ("resources.cpus", "whole number")),
    Case("cpus true", fixed(resources(cpus=True)), 422, "invalid_spec", ("resources.cpus", "whole number")),
    Case("gpus '0'", fixed(resources(gpus="0")), 422, "invalid_spec", ("resources.gpus", "whole number")),
    Case(
        "time limit '60'",
        fixed(resources(time_limit="60")),
        422,
        "invalid_spec",
        ("resources.time_limit", "whole number"),
    ),
    Case("priority '0'", fixed(spec(priority="0")), 422, "invalid_spec", ("priority", "whole number")),
    Case("memory true", fixed(resources(memory=True)), 422, "invalid_spec", ("resources.memory", "size")),
    # A size under what any process needs (finding: "1.5" was 1 byte, and the job was killed at once).
    Case(
        "memory '1.5'",
        fixed(resources(memory="1.5")),
        422,
        "invalid_spec",
        ("resources.memory: at least 16 MiB", "'1.5' is 1 byte", "512M"),
    ),
    Case("memory 1", fixed(resources(memory=1)), 422, "invalid_spec", ("resources.memory: at least 16 MiB",)),
    Case(
        "memory a byte under 16 MiB",
        fixed(resources(memory=16 * 1024**2 - 1)),
        422,
        "invalid_spec",
        ("resources.memory: at least 16 MiB",),
    ),
    Case(
        "memory '15.9M'",
        fixed(resources(memory="15.9M")),
        422,
        "invalid_spec",
        ("resources.memory: at least 16 MiB",),
    ),
    Case("memory 1.5", fixed(resources(memory=1.5)), 422, "invalid_spec", ("resources.memory", "size")),
    Case("command a number", fixed(spec(command=5)), 422, "invalid_spec", ("command", "list of words")),
    Case(
        "command words not strings",
        fixed(spec(command=["echo", 1])),
        422,
        "invalid_spec",
        ("command", "strings"),
    ),
    Case("code a string", fixed(spec(code="alice/tool")), 422, "invalid_spec", ("code", "an object")),
    Case(
        "revision a number",
        fixed(spec(code={"repo": "alice/tool", "rev": 1})),
        422,
        "invalid_spec",
        ("code.rev", "a string"),
    ),
    Case(
        "requirement a number", fixed(requirement(1)), 422, "invalid_spec", ("env.requirements.0", "a string")
    ),
    Case(
        "variable value a number",
        fixed(spec(env={"variables": {"SEED": 1}})),
        422,
        "invalid_spec",
        ("env.variables.SEED", "a string"),
    ),
    Case(
        "repository name with NUL",
        fixed(spec(code={"repo": "alice/to\x00ol"})),
        422,
        "invalid_spec",
        ("code.repo", "owner/name"),
    ),
    Case(
        "revision with NUL",
        fixed(spec(code={"repo": "alice/tool", "rev": "ma\x00in"})),
        422,
        "invalid_spec",
        ("code.rev",),
    ),
    Case(
        "output branch with NUL",
        fixed(spec(output={"repo": "alice/out", "branch": "ru\x00ns"})),
        422,
        "invalid_spec",
        ("output.branch", "not a branch name"),
    ),
    # Sizes an exec cannot carry are refused at submission (finding: they failed at run time with
    # "Argument list too long"), in both forms of the command.
    Case(
        "a 1 MB command string",
        fixed(spec(command="echo " + "x" * 1_000_000)),
        422,
        "invalid_spec",
        ("command", "10000 characters"),
    ),
    Case(
        "a 100 KB command string of short words",
        fixed(spec(command="echo " + "xxxxxxxxx " * 10_000)),
        422,
        "invalid_spec",
        ("command", "at most 4096 words"),
    ),
    Case(
        "a command string over 64 KiB",
        fixed(spec(command="echo " + " ".join(["x" * 9000] * 8))),
        422,
        "invalid_spec",
        ("command", "at most 65536 bytes", "64 KiB"),
    ),
    Case(
        "a command list over 64 KiB",
        fixed(spec(command=["echo", *["x" * 9000] * 8])),
        422,
        "invalid_spec",
        ("command", "at most 65536 bytes"),
    ),
    Case(
        "a command of multi-byte characters over 64 KiB",
        fixed(spec(command=["echo", *["é" * 5000] * 7])),
        422,
        "invalid_spec",
        ("command", "at most 65536 bytes"),
    ),
    Case(
        "a command list of 300 words of 9000 characters",
        fixed(spec(command=["x" * 9000] * 300)),
        422,
        "invalid_spec",
        ("larger than 2 MiB", "command"),
    ),
    Case(
        "a word over 10000 characters",
        fixed(spec(command=["echo", "x" * 10_001])),
        422,
        "invalid_spec",
        ("command", "10000 characters"),
    ),
    Case(
        "too many words",
        fixed(spec(command=["true", *["x"] * 4096])),
        422,
        "invalid_spec",
        ("command", "4097 words", "at most 4096 words"),
    ),
    Case(
        "an unpaired surrogate",
        fixed(json.dumps(spec(command=["echo", "\ud800"])).encode()),
        422,
        "invalid_spec",
        ("command", "Unicode"),
    ),
    Case(
        "too many variables",
        fixed(spec(env={"variables": {f"V{i}": "x" for i in range(257)}})),
        422,
        "invalid_spec",
        ("env.variables", "257 items", "at most 256"),
    ),
    Case(
        "variables over 64 KiB",
        fixed(spec(env={"variables": {f"V{i}": "x" * 4000 for i in range(17)}})),
        422,
        "invalid_spec",
        ("env.variables", "at most 65536 bytes"),
    ),
    Case(
        "a variable over 4096 characters",
        fixed(spec(env={"variables": {"BIG": "x" * 4097}})),
        422,
        "invalid_spec",
        ("env.variables.BIG", "4096 characters"),
    ),
    Case(
        "a variable with NUL",
        fixed(spec(env={"variables": {"V": "a\x00b"}})),
        422,
        "invalid_spec",
        ("V", "NUL"),
    ),
    Case(
        "memory over 1 PiB",
        fixed(resources(memory="2000T")),
        422,
        "invalid_spec",
        ("resources.memory", "at most 1024T"),
    ),
    Case(
        "memory a huge number",
        fixed(resources(memory=10**30)),
        422,
        "invalid_spec",
        ("resources.memory", "at most 1024T"),
    ),
    Case(
        "memory in Arabic-Indic digits",
        fixed(resources(memory="\u0663G")),
        422,
        "invalid_spec",
        ("resources.memory", "is not a size"),
    ),
    Case(
        "memory 400 nines of gigabytes (an infinite float)",
        fixed(resources(memory="9" * 400 + "G")),
        422,
        "invalid_spec",
        ("resources.memory", "at most 1024T"),
    ),
    Case(
        "time limit a huge number",
        fixed(resources(time_limit=10**30)),
        422,
        "invalid_spec",
        ("resources.time_limit", "less than or equal"),
    ),
    Case(
        "cpus a huge number",
        fixed(resources(cpus=10**30)),
        422,
        "invalid_spec",
        ("resources.cpus", "less than or equal"),
    ),
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
    for boilerplate in ("Value error", "Input should", "[type=", "pydantic", "sys.", "codec", "\n"):
        assert boilerplate not in message, f"{boilerplate!r} in {message!r}"
    assert len(message) < 1000, message
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


def test_memory_of_16_mib_is_accepted(world: World) -> None:
    for memory in ("16M", 16 * 1024**2, "0.015625G"):
        r = world.client.post(f"{API}/jobs", json=resources(memory=memory), headers=world.alice.headers)
        assert r.status_code == 201, r.text
        assert r.json()["resources"]["memory"] == 16 * 1024**2


def test_a_refusal_from_another_domain_while_resolving_the_spec_is_invalid_spec(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The route promises `invalid_spec` for every refused spec: a rule of the repositories' domain that
    the service reaches while resolving one (`invalid_ref`, `invalid_path`) keeps its message only."""

    def refuse(*args: Any, **kwargs: Any) -> Job:
        raise InvalidInput("invalid branch name 'x..y'", code="invalid_ref")

    r = world.client.post(f"{API}/jobs", json=spec(), headers=world.alice.headers)
    assert r.status_code == 201, r.text
    monkeypatch.setattr(service, "submit", refuse)
    monkeypatch.setattr(service, "rerun", refuse)
    for url in (f"{API}/jobs", f"{API}/jobs/{r.json()['id']}/rerun"):
        refused = world.client.post(url, json=spec(), headers=world.alice.headers)
        assert error_code(refused, 422) == "invalid_spec", url
        assert refused.json()["message"] == "invalid branch name 'x..y'"


def test_a_command_at_the_limits_is_accepted_and_one_byte_more_is_not(world: World) -> None:
    # 64 KiB in all, each word counted with the NUL that ends it in the exec's argument list.
    words = ["echo", *["x" * 9000] * 7]
    words.append("x" * (65536 - sum(len(w) + 1 for w in words) - 1))
    r = world.client.post(f"{API}/jobs", json=spec(command=words), headers=world.alice.headers)
    assert r.status_code == 201, r.text[:300]
    assert r.json()["command"] == words
    words[-1] += "x"
    r = world.client.post(f"{API}/jobs", json=spec(command=words), headers=world.alice.headers)
    assert error_code(r, 422) == "invalid_spec"
    assert "65537 bytes" in r.json()["message"]
    many = ["true", *["x"] * 4095]
    r = world.client.post(f"{API}/jobs", json=spec(command=" ".join(many)), headers=world.alice.headers)
    assert r.status_code == 201, r.text[:300]
    assert len(r.json()["command"]) == 4096


def test_a_streamed_body_over_the_limit_is_refused_without_reading_it_all(world: World) -> None:
    def chunks() -> Any:
        yield b'{"code": {"repo": "alice/tool"}, "command": ["echo", "'
        for _ in range(300):  # 30 MB, sent without Content-Length
            yield b"x" * 100_000
        yield b'"]}'

    r = world.client.post(
        f"{API}/jobs", content=chunks(), headers={**world.alice.headers, "Content-Type": "application/json"}
    )
    assert error_code(r, 422) == "invalid_spec"
    assert "larger than 2 MiB" in r.json()["message"]
    world.assert_nothing_queued()


def test_the_body_is_read_as_json_whatever_its_content_type(world: World) -> None:
    """`curl -d` sends `application/x-www-form-urlencoded` unless told otherwise: the spec is JSON anyway."""
    r = world.client.post(
        f"{API}/jobs",
        content=json.dumps(spec()),
        headers={**world.alice.headers, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 201, r.text


def test_a_recorded_spec_refused_by_a_later_limit_is_not_rerun(world: World) -> None:
    r = world.client.post(f"{API}/jobs", json=spec(), headers=world.alice.headers)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    with world.app.state.db.session() as s:  # recorded before the command's size was bounded
        job = s.get(Job, job_id)
        assert job is not None
        job.spec = {**job.spec, "command": ["echo", *["x" * 9000] * 8]}
        s.commit()
    r = world.client.post(f"{API}/jobs/{job_id}/rerun", headers=world.alice.headers)
    assert error_code(r, 422) == "invalid_spec"
    assert f"job {job_id} cannot run again" in r.json()["message"]
    assert "at most 65536 bytes" in r.json()["message"]
    assert world.jobs_in_database()[0] == 1


def test_rerun_refuses_a_recorded_spec_with_the_domain_error(world: World) -> None:
    """The service raises `InvalidInput` (`invalid_spec`), never pydantic's ValidationError, so every door
    that reruns a job (REST, web) answers alike without catching it itself."""
    r = world.client.post(f"{API}/jobs", json=spec(), headers=world.alice.headers)
    assert r.status_code == 201, r.text
    with world.app.state.db.session() as s:
        job = s.get(Job, r.json()["id"])
        assert job is not None
        job.spec = {**job.spec, "env": {"variables": {f"V{i}": "x" for i in range(300)}}}
        s.commit()
        user = accounts.get_user(s, "alice")
        with pytest.raises(InvalidInput) as caught:
            service.rerun(Actor.for_user(s, user), s, world.app.state.settings, world.app.state.store, job)
    assert caught.value.code == "invalid_spec"
    assert f"job {job.id} cannot run again as recorded: env.variables: 300 items; at most 256" in str(
        caught.value
    )
    assert world.jobs_in_database()[0] == 1


def test_the_openapi_document_describes_the_spec(world: World) -> None:
    operation = world.app.openapi()["paths"]["/api/v1/jobs"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert {"code", "command", "inputs", "output", "env", "resources"} <= set(schema["properties"])
    assert schema["required"] == ["code", "command"]
    assert "cpus" in schema["properties"]["resources"]["properties"]
    assert "$defs" not in json.dumps(schema)
