"""The pages of jobs, in process: the list, a job's page, private jobs, the Run form, cancel and rerun."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opensci.web.views.jobs import form_message
from tests.api_helpers import API, committed
from tests.compute.conftest import code_repo, compute_app, dataset, finished  # noqa: F401 (a fixture)
from tests.conftest import Account
from tests.web.conftest import HTML, csrf_of

SUM = """\
import pathlib
rows = pathlib.Path("inputs/numbers/values.csv").read_text().split()
total = sum(int(x) for x in rows[1:])
pathlib.Path("outputs/result.txt").write_text(f"{total}\\n")
print("sum is", total, flush=True)
"""


@pytest.fixture
def api(app: FastAPI) -> Iterator[TestClient]:
    """A client of the REST API (JSON), to set up repositories and jobs."""
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def submit(api: TestClient, who: Account, spec: dict[str, Any]) -> int:
    r = api.post(f"{API}/jobs", json=spec, headers=who.headers)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def job_of(api: TestClient, who: Account, job_id: int) -> dict[str, Any]:
    r = api.get(f"{API}/jobs/{job_id}", headers=who.headers)
    assert r.status_code == 200, r.text
    return r.json()


def statuses(html: str) -> list[str]:
    """The status badges of a list of jobs, in order."""
    return re.findall(r'<span class="badge job-status status-\w+" data-status="(\w+)">', html)


def test_the_list_shows_visible_jobs_with_counts_and_filters(
    api: TestClient, web: TestClient, alice: Account, bob: Account
) -> None:
    code_repo(api, alice, "tools", {"run.py": "print(1)\n"})
    code_repo(api, bob, "hidden-tools", {"run.py": "print(2)\n"}, private=True)
    first = submit(api, alice, {"code": {"repo": "alice/tools"}, "command": "python run.py first"})
    second = submit(api, alice, {"code": {"repo": "alice/tools"}, "command": "python run.py second"})
    secret = submit(api, bob, {"code": {"repo": "bob/hidden-tools"}, "command": "python run.py secret"})
    cancelled = api.post(f"{API}/jobs/{first}/cancel", headers=alice.headers)
    assert cancelled.json()["status"] == "cancelled"

    page = web.get("/jobs")
    assert page.status_code == 200
    assert '<a href="/jobs">Jobs</a>' in page.text  # in the site navigation
    assert f'href="/jobs/{second}"' in page.text and f'href="/jobs/{first}"' in page.text
    assert f'href="/jobs/{secret}"' not in page.text and "hidden-tools" not in page.text
    assert statuses(page.text) == ["queued", "cancelled"]  # newest first
    assert "python run.py second" in page.text
    assert re.search(r'data-status="queued"\s*>queued <span class="count">1</span>', page.text)
    assert re.search(r'>All <span class="count">2</span>', page.text)

    only_queued = web.get("/jobs?status=queued")
    assert statuses(only_queued.text) == ["queued"]
    assert f'href="/jobs/{first}"' not in only_queued.text
    assert statuses(web.get("/jobs?status=nonsense").text) == ["queued", "cancelled"]  # ignored
    assert statuses(web.get("/jobs?owner=bob").text) == []
    assert "No jobs here." in web.get("/jobs?owner=bob").text

    # bob sees his own private job too, and can filter by repository
    as_bob = api.get("/jobs?owner=bob", headers={**bob.headers, **HTML})
    assert f'href="/jobs/{secret}"' in as_bob.text and statuses(as_bob.text) == ["queued"]
    by_repo = api.get("/jobs?repo=bob/hidden-tools", headers={**bob.headers, **HTML})
    assert statuses(by_repo.text) == ["queued"]
    # a repository the viewer cannot read is not found, like everywhere
    assert web.get("/jobs?repo=bob/hidden-tools").status_code == 404


def test_a_private_job_is_a_not_found_page(
    api: TestClient, web: TestClient, alice: Account, bob: Account, logged_in: Callable[[Account], TestClient]
) -> None:
    code_repo(api, alice, "tools", {"run.py": "print(1)\n"})
    dataset(api, bob, "private-data", {"x.csv": "a\n1\n"}, private=True)
    job = submit(
        api,
        bob,
        {
            "code": {"repo": "alice/tools"},
            "command": "python run.py",
            "inputs": {"x": {"repo": "bob/private-data"}},
        },
    )
    for client in (web, logged_in(alice)):
        page = client.get(f"/jobs/{job}")
        assert page.status_code == 404
        assert "private-data" not in page.text and "Page not found" in page.text
        assert client.get(f"/jobs/{job}?part=live", headers={"HX-Request": "true"}).status_code == 404
    missing = web.get("/jobs/999999")
    assert missing.status_code == 404
    assert web.get("/jobs/99999999999999999999").status_code == 404  # not a 500 on PostgreSQL
    # forms on it are refused the same way for strangers
    alice_browser = logged_in(alice)
    token = csrf_of(alice_browser.get("/jobs").text)
    for action in ("cancel", "rerun"):
        r = alice_browser.post(f"/jobs/{job}/{action}", data={"csrf_token": token})
        assert r.status_code == 404, action
    mine = logged_in(bob).get(f"/jobs/{job}")
    assert mine.status_code == 200 and "bob/private-data" in mine.text


def test_a_finished_jobs_page_shows_its_provenance_usage_and_log(
    compute_app: FastAPI,  # noqa: F811 (the fixture imported above)
    api: TestClient,
    web: TestClient,
    alice: Account,
) -> None:
    code = code_repo(api, alice, "adder", {"sum.py": SUM})
    data = dataset(api, alice, "numbers", {"values.csv": "v\n1\n2\n39\n"})
    dataset(api, alice, "results", None)
    job_id = submit(
        api,
        alice,
        {
            "code": {"repo": "alice/adder"},
            "command": ["python", "sum.py"],
            "inputs": {"numbers": {"repo": "alice/numbers"}},
            "output": {"repo": "alice/results", "branch": "runs"},
            "resources": {"memory": "512M", "time_limit": 120},
        },
    )
    done = finished(api, alice, job_id)
    assert done["status"] == "succeeded", done
    out = done["output"]["commit"]

    page = web.get(f"/jobs/{job_id}")
    assert page.status_code == 200
    html = page.text
    assert f"<title>Job {job_id} (succeeded) · OpenSci</title>" in html
    assert 'data-status="succeeded"' in html
    assert '<code class="job-command">python sum.py</code>' in html
    assert f'href="/alice/adder/tree/{code}"' in html  # the code at its commit
    assert f'href="/datasets/alice/numbers/tree/{data}"' in html  # the input at its commit
    assert f'href="/datasets/alice/results/commit/{out}"' in html  # the output commit
    assert '<dd class="job-exit">0' in html
    assert "512.0 MiB" in html and "2 min" in html  # asked for
    assert re.search(r'class="used-memory">[\d.]+ (KiB|MiB) peak', html)
    assert re.search(r'class="used-wall">[\d.]+ s<', html)
    assert f"<dt>Python</dt><dd>{done['environment']['python']}</dd>" in html
    # the log as it was (no live following of a finished job)
    log = re.search(r'<pre id="job-log" class="job-log">(.*?)</pre>', html, re.S)
    assert log and "sum is 42" in log.group(1)
    assert "data-follow" not in html and "hx-trigger" not in html
    # the provenance graph: code and input -> job -> output, each box a link
    svg = re.search(r'<svg class="provenance".*?</svg>', html, re.S)
    assert svg
    links = re.findall(r'<a class="prov-node prov-([\w -]+)" href="([^"]+)"', svg.group(0))
    assert links == [
        ("code", f"/alice/adder/tree/{code}"),
        ("input", f"/datasets/alice/numbers/tree/{data}"),
        ("job prov-status-succeeded", f"/jobs/{job_id}"),
        ("output", f"/datasets/alice/results/commit/{out}"),
    ]
    # anyone may rerun, only the submitter cancels (and only while it runs)
    assert "Cancel job" not in html and "Rerun" not in html  # anonymous: neither

    # the dataset's history marks the commit made by the job, with a link to it
    history = web.get("/datasets/alice/results/commits/runs").text
    assert f'<a class="badge job-mark" href="/jobs/{job_id}"' in history
    assert (
        f'href="/jobs/{job_id}">made by job {job_id}</a>'
        in web.get(f"/datasets/alice/results/commit/{out}").text
    )
    assert "job-mark" not in web.get("/datasets/alice/numbers/commits").text


def test_the_live_part_reloads_while_the_job_is_not_finished(
    api: TestClient, web: TestClient, alice: Account, logged_in: Callable[[Account], TestClient]
) -> None:
    code_repo(api, alice, "tools", {"run.py": "print(1)\n"})
    job = submit(api, alice, {"code": {"repo": "alice/tools"}, "command": "python run.py"})
    page = web.get(f"/jobs/{job}")
    assert f'data-follow="/api/v1/jobs/{job}/logs?follow=true" data-offset="0"' in page.text
    assert f'hx-get="/jobs/{job}?part=live" hx-trigger="every 3s, job-ended from:body"' in page.text
    assert "/static/jobs.js" in page.text
    assert "No output yet." in page.text
    fragment = web.get(f"/jobs/{job}?part=live", headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    assert fragment.text.lstrip().startswith('<div id="job-live"') and "<html" not in fragment.text
    assert fragment.headers["vary"] == "HX-Request"
    # without htmx, ?part=live is the whole page
    assert "<html" in web.get(f"/jobs/{job}?part=live").text
    # once it has ended, the fragment stops asking to be reloaded
    api.post(f"{API}/jobs/{job}/cancel", headers=alice.headers)
    ended = web.get(f"/jobs/{job}?part=live", headers={"HX-Request": "true"})
    assert 'data-status="cancelled"' in ended.text and "hx-get" not in ended.text
    assert "cancelled before it started" in ended.text


def test_commands_are_shown_as_shell_lines(
    api: TestClient, web: TestClient, alice: Account, logged_in: Callable[[Account], TestClient]
) -> None:
    code_repo(api, alice, "tools", {"run.py": "print(1)\n"})
    words = ["sh", "-c", "for i in 1 2 3; do echo step $i; done", "it's"]
    job = submit(api, alice, {"code": {"repo": "alice/tools"}, "command": words})
    quoted = "sh -c &#39;for i in 1 2 3; do echo step $i; done&#39; &#39;it&#39;&#34;&#39;&#34;&#39;s&#39;"
    page = web.get(f"/jobs/{job}")
    assert f'<code class="job-command">{quoted}</code>' in page.text
    assert "sh -c for i in" not in page.text
    listed = web.get("/jobs").text
    assert f"<code>{quoted}</code>" in listed
    recent = logged_in(alice).get("/alice/tools/run").text
    assert '<code class="small">sh -c &#39;for i in 1 2 3; do echo step...</code>' in recent  # cut


def test_cancel_and_rerun_forms(
    api: TestClient, alice: Account, bob: Account, logged_in: Callable[[Account], TestClient]
) -> None:
    code_repo(api, alice, "tools", {"run.py": "print(1)\n"})
    job = submit(api, alice, {"code": {"repo": "alice/tools"}, "command": "python run.py"})
    as_bob = logged_in(bob)
    page = as_bob.get(f"/jobs/{job}")
    assert "Cancel job" not in page.text and ">Rerun</button>" in page.text
    token = csrf_of(page.text)
    refused = as_bob.post(f"/jobs/{job}/cancel", data={"csrf_token": token})
    assert refused.status_code == 403
    assert "only the job&#39;s submitter or an administrator may cancel it" in refused.text
    assert job_of(api, alice, job)["status"] == "queued"

    as_alice = logged_in(alice)
    page = as_alice.get(f"/jobs/{job}")
    assert f'action="/jobs/{job}/cancel"' in page.text
    # a form without the session's token changes nothing
    assert as_alice.post(f"/jobs/{job}/cancel", data={"csrf_token": "wrong"}).status_code == 403
    assert job_of(api, alice, job)["status"] == "queued"
    r = as_alice.post(f"/jobs/{job}/cancel", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 303 and r.headers["location"] == f"/jobs/{job}"
    assert job_of(api, alice, job)["status"] == "cancelled"
    again = as_alice.post(f"/jobs/{job}/cancel", data={"csrf_token": csrf_of(page.text)})
    assert again.status_code == 409 and f"job {job} has already ended (cancelled)" in again.text
    assert "Cancel job" not in as_alice.get(f"/jobs/{job}").text

    # bob reruns alice's job: a new job of his, at the same commit, that points back
    rerun = as_bob.post(f"/jobs/{job}/rerun", data={"csrf_token": token})
    assert rerun.status_code == 303
    new = int(rerun.headers["location"].removeprefix("/jobs/"))
    body = job_of(api, bob, new)
    assert (body["rerun_of"], body["submitter"], body["status"]) == (job, "bob", "queued")
    assert body["code"]["commit"] == job_of(api, alice, job)["code"]["commit"]
    new_page = as_bob.get(f"/jobs/{new}")
    assert f'rerun of <a href="/jobs/{job}">job {job}</a>' in new_page.text
    assert f'action="/jobs/{new}/cancel"' in new_page.text


def test_the_run_form_of_a_code_repository(
    api: TestClient,
    web: TestClient,
    alice: Account,
    bob: Account,
    logged_in: Callable[[Account], TestClient],
) -> None:
    code_repo(api, alice, "adder", {"sum.py": SUM})
    dataset(api, alice, "numbers", {"values.csv": "v\n1\n"})
    dataset(api, alice, "results", None)
    committed(api, alice, "alice/adder", {"other.py": "print(2)\n"}, branch="dev")
    as_alice = logged_in(alice)

    home = as_alice.get("/alice/adder")
    assert '<a href="/alice/adder/run" >Run</a>' in home.text
    assert "/run" not in web.get("/alice/adder").text  # no tab for visitors
    assert "/run" not in as_alice.get("/datasets/alice/numbers").text  # nor on datasets
    form = as_alice.get("/alice/adder/run")
    assert form.status_code == 200
    assert 'name="rev" value="main"' in form.text and '<option value="dev">' in form.text
    assert 'class="active" aria-current="page">Run</a>' in form.text
    token = csrf_of(form.text)
    # visitors are sent to log in; the form is only for code repositories
    assert web.get("/alice/adder/run").status_code == 303
    assert as_alice.get("/alice/numbers/run").status_code == 404
    assert as_alice.get("/datasets/alice/numbers/run").status_code == 404

    fields = {
        "csrf_token": token,
        "rev": "main",
        "command": "python sum.py --x 'a b'",
        "inputs": "numbers=alice/numbers\n\n# a comment\nsecond=alice/numbers@main\n",
        "output": "alice/results",
        "branch": "runs",
        "requirements": "",
        "cpus": "1",
        "memory": "1G",
        "time_limit": "600",
    }

    def post(**changes: str) -> Any:
        return as_alice.post("/alice/adder/run", data={**fields, **changes})

    bad_line = post(inputs="numbers alice/numbers")
    assert bad_line.status_code == 422
    assert "Inputs, line 1: write name=owner/name or name=owner/name@revision" in bad_line.text
    assert "python sum.py --x &#39;a b&#39;" in bad_line.text  # the form keeps what was typed
    bad_memory = post(memory="lots")
    assert bad_memory.status_code == 422 and "Memory: &#39;lots&#39; is not a size" in bad_memory.text
    no_output = post(output="alice/nowhere")
    assert (
        no_output.status_code == 422
        and "Output dataset: repository alice/nowhere not found" in no_output.text
    )
    not_code = post(command="")
    assert not_code.status_code == 422 and "Command: the command is empty" in not_code.text
    # Whoever finds the mistakes (the form, the spec's validation, the service), fields are named as
    # the form labels them, never by their path in the spec.
    mistakes = {
        (("cpus", "0"), ("memory", "lots"), ("time_limit", "soon")): [
            "CPUs: ",
            "; Memory: ",
            "; Time limit: ",
        ],
        (("memory", "4096T"),): ["Memory: at most"],
        (("time_limit", "99999999"),): ["Time limit: at most"],
        (("rev", "no-such-branch"),): ["Revision: "],
        (("inputs", "numbers=alice/numbers@nope"),): ["Inputs, numbers: "],
        (("inputs", "numbers=alice/adder"),): ["Inputs, numbers: "],
        (("output", "alice/adder"),): ["Output dataset: "],
        # the spec's own words for a limit (as the API says it), under the form's label
        (("requirements", "numpy\n" * 201),): ["Requirements: 201 items; at most 200"],
        # the numbers of the form in plain words, not pydantic's
        (("cpus", "two"),): ["CPUs: write a whole number such as 2"],
        (("cpus", "1.5"),): ["CPUs: write a whole number such as 2"],
        (("time_limit", "0"),): ["Time limit: at least 1 second"],
        (("time_limit", "soon"),): ["Time limit: write a whole number of seconds such as 3600"],
        # what the service says without naming a field, under the field it is about
        (("output", "nobody/none"),): ["Output dataset: repository nobody/none not found"],
        (("inputs", "numbers=alice/numbers\nother=nobody/none"),): [
            "Inputs, other: repository nobody/none not found"
        ],
        (("branch", "a..b"),): ["Branch: 'a..b' is not a valid branch name"],
        (("requirements", "--index-url x"),): [
            "Requirements: pip options such as '--index-url x' are not allowed"
        ],
        (("requirements", "numpy==="),): ["Requirements: 'numpy===' is not valid: "],
        (("executor", "nope"),): ["Executor: 'nope' is not available here; use one of: local"],
    }
    for changes, expected in mistakes.items():
        refused = post(**dict(changes))
        error = re.search(r'<div class="flash error" role="alert">(.*?)</div>', refused.text, re.S)
        assert refused.status_code == 422 and error, (changes, refused.status_code)
        message = html.unescape(error.group(1)).strip()
        assert all(part in message for part in expected), (changes, message)
        assert message.startswith(expected[0]), (changes, message)  # the field first
        assert not re.search(r"\b(resources|env|code|output)\.\w+:|\binput \w+:", message), message
        assert "Input should" not in message and "\n" not in message and "^" not in message, message
    branch_alone = post(output="", branch="x")
    assert (
        branch_alone.status_code == 422 and "name the dataset that receives the outputs" in branch_alone.text
    )
    bad_requirement = post(requirements="--index-url http://x\n")
    assert bad_requirement.status_code == 422 and "pip options such as" in bad_requirement.text
    assert api.get(f"{API}/jobs", headers=alice.headers).json()["jobs"] == []  # nothing was queued

    # bob may read the code but not write to alice's dataset
    as_bob = logged_in(bob)
    refused = as_bob.post(
        "/alice/adder/run", data={**fields, "csrf_token": csrf_of(as_bob.get("/alice/adder/run").text)}
    )
    assert refused.status_code == 403 and "Output dataset: you may not write to alice/results" in refused.text
    assert as_alice.post("/alice/adder/run", data={**fields, "csrf_token": "x"}).status_code == 403

    ok = post()
    assert ok.status_code == 303
    job_id = int(ok.headers["location"].removeprefix("/jobs/"))
    job = job_of(api, alice, job_id)
    assert job["command"] == ["python", "sum.py", "--x", "a b"]
    assert set(job["inputs"]) == {"numbers", "second"} and job["inputs"]["second"]["rev"] == "main"
    assert job["output"]["repo"] == "alice/results" and job["output"]["branch"] == "runs"
    assert job["resources"]["memory"] == 1024**3 and job["resources"]["time_limit"] == 600
    assert f'href="/jobs/{job_id}"' in as_alice.get("/alice/adder/run").text  # recent jobs


def test_service_messages_are_put_under_the_field_they_concern() -> None:
    form = {"inputs": "stars=alice/stars@v1\nother = nobody/none", "output": "nobody/none"}
    said = {
        # an input is resolved before the output: the input that names the repository is the one
        "repository nobody/none not found": "Inputs, other: repository nobody/none not found",
        "invalid branch name 'a..b'": "Branch: 'a..b' is not a valid branch name",
        "requirement '--index-url x': pip options are not allowed": (
            "Requirements: pip options such as '--index-url x' are not allowed"
        ),
        # a parser's message of several lines (the requirement, and a caret under the place)
        "requirement 'numpy===' is not valid: Expected end or semicolon\n    numpy===\n         ^": (
            "Requirements: 'numpy===' is not valid: Expected end or semicolon"
        ),
        "executor 'nope' is not available here; use one of: local": (
            "Executor: 'nope' is not available here; use one of: local"
        ),
        "resources.cpus: the local executor has 2 CPUs": "CPUs: the local executor has 2 CPUs",
        "code: revision 'x' not found in alice/adder": "Revision: 'x' not found in alice/adder",
        "input stars: revision 'v1' not found in alice/stars": (
            "Inputs, stars: revision 'v1' not found in alice/stars"
        ),
        "output.branch: invalid branch name 'a..b'": "Branch: 'a..b' is not a valid branch name",
        "you may not write to nobody/none, the job's output": (
            "Output dataset: you may not write to nobody/none"
        ),
        # a message about no field of the form stays as it is
        "only administrators may give a job a priority above 0": (
            "only administrators may give a job a priority above 0"
        ),
    }
    for message, shown in said.items():
        assert form_message(message, form) == shown, message
    assert form_message("repository nobody/none not found", {"output": "nobody/none"}) == (
        "Output dataset: repository nobody/none not found"
    )


def test_rerun_of_a_job_with_variables_is_offered_to_its_submitter_only(
    api: TestClient, alice: Account, bob: Account, logged_in: Callable[[Account], TestClient]
) -> None:
    code_repo(api, alice, "tools", {"run.py": "print(1)\n"})
    spec = {"code": {"repo": "alice/tools"}, "command": "python run.py"}
    spec["env"] = {"variables": {"KEY": "s3cret"}}
    job = submit(api, alice, spec)
    as_bob = logged_in(bob)
    page = as_bob.get(f"/jobs/{job}")
    assert page.status_code == 200
    assert ">Rerun</button>" not in page.text and "s3cret" not in page.text
    # a form posted anyway gets the service's answer, and no job
    refused = as_bob.post(f"/jobs/{job}/rerun", data={"csrf_token": csrf_of(page.text)})
    assert refused.status_code == 403
    assert (
        f"job {job} has environment variables only its submitter may use; submit a job of your own"
        in html.unescape(refused.text)
    )
    assert api.get(f"{API}/jobs", params={"owner": "bob"}, headers=bob.headers).json()["jobs"] == []
    as_alice = logged_in(alice)
    own = as_alice.get(f"/jobs/{job}")
    assert ">Rerun</button>" in own.text
    rerun = as_alice.post(f"/jobs/{job}/rerun", data={"csrf_token": csrf_of(own.text)})
    assert rerun.status_code == 303
