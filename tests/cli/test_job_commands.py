"""`opensci job submit|list|status|logs|cancel|rerun` against a live server, through the real Typer app.

Tests that run jobs use the server whose scheduler runs (tests/compute/conftest.py); tests of what a
submission sends use a server without a scheduler, where jobs stay queued until cancelled."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import Result
from typer.testing import CliRunner

from opensci.cli.main import app as cli
from tests.api_helpers import API
from tests.cli.terminal import in_a_terminal
from tests.compute.conftest import (  # noqa: F401 (fixtures)
    code_repo,
    compute_app,
    dataset,
    finished,
    http,
    server,
)
from tests.conftest import Account, LiveServer

Run = Callable[..., Result]

SUM = """\
import os, pathlib, sys
rows = pathlib.Path("inputs/numbers/values.csv").read_text().split()
total = sum(int(x) for x in rows[1:])
pathlib.Path("outputs/total.txt").write_text(f"{total}\\n")
for i in range(50):
    print(f"step {i:02d}", flush=True)
print("args:", " | ".join(sys.argv[1:]), flush=True)
print("greeting:", os.environ.get("GREETING"), os.environ.get("OTHER"), flush=True)
print("sum is", total, flush=True)
"""


def invoker(url: str, token: str) -> Run:
    runner = CliRunner()

    def invoke(*args: str, code: int = 0, as_token: str | None = None) -> Result:
        env = {"OPENSCI_URL": url, "OPENSCI_TOKEN": as_token or token, "COLUMNS": "200"}
        result = runner.invoke(cli, list(args), env=env)
        assert result.exit_code == code, (
            f"exit {result.exit_code}: {result.stdout}\n{result.stderr}{result.exception!r}"
        )
        assert "Traceback" not in result.output
        return result

    return invoke


@pytest.fixture
def run(server: LiveServer, alice: Account) -> Run:  # noqa: F811 (the server whose scheduler runs)
    return invoker(server.url, alice.token)


@pytest.fixture
def idle(live_server: LiveServer, alice: Account) -> Iterator[tuple[Run, httpx.Client]]:
    """The CLI and an HTTP client on a server without a scheduler: jobs stay queued."""
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        yield invoker(live_server.url, alice.token), c


def world(http: httpx.Client, alice: Account) -> None:  # noqa: F811
    code_repo(
        http, alice, "adder", {"sum.py": SUM, "fail.py": "import sys\nprint('bad input')\nsys.exit(3)\n"}
    )
    dataset(http, alice, "numbers", {"values.csv": "v\n1\n2\n39\n"})
    dataset(http, alice, "results", None)


def test_submit_from_flags_and_follow_until_it_ends(
    run: Run,
    http: httpx.Client,  # noqa: F811
    alice: Account,
) -> None:
    world(http, alice)
    result = run(
        "job", "submit", "--code", "alice/adder@main", "--input", "numbers=alice/numbers",
        "--output", "alice/results@runs", "--env", "GREETING=hello world", "-e", "OTHER=",
        "--time-limit", "5m", "--memory", "1G", "--cpus", "1", "--follow",
        "--", "python", "sum.py", "--flag", "x y",
    )  # fmt: skip
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith("step ")] == [f"step {i:02d}" for i in range(50)]
    assert "args: --flag | x y" in lines and "greeting: hello world " in lines and "sum is 42" in lines
    job_id = int(re.search(r"Submitted job (\d+)", result.stderr).group(1))  # type: ignore[union-attr]
    assert f"job {job_id} succeeded" in result.stderr and "(exit code 0)" in result.stderr
    assert "outputs committed to alice/results (runs)" in result.stderr
    assert "⠋" not in result.output and "running for" not in result.output  # no status line off a TTY

    job = http.get(f"{API}/jobs/{job_id}", headers=alice.headers).json()
    assert job["status"] == "succeeded" and job["output"]["commit"] in result.stderr
    assert job["resources"]["memory"] == 1024**3 and job["resources"]["time_limit"] == 300
    assert job["spec"]["env"]["variables"] == {"GREETING": "hello world", "OTHER": ""}

    status = run("job", "status", str(job_id)).stdout
    assert status.startswith(f"job {job_id}: succeeded, exit code 0")
    for fact in (
        "python sum.py --flag 'x y'",
        f"Python {job['environment']['python']}",
        "1 CPU, 1 GiB memory, time limit 5m00s, 0 GPUs",
        "submitter:",
        "wall ",
    ):
        assert fact in status, (fact, status)
    # each commit whole on its own line, under its repository
    for fact in (
        rf"^code: +alice/adder@main\n +commit {job['code']['commit']}$",
        rf"^input numbers: +alice/numbers@main\n +commit {job['inputs']['numbers']['commit']}$",
        rf"^output: +alice/results, branch runs\n +commit {job['output']['commit']}$",
        r"^variables: +GREETING=hello world, OTHER=$",
    ):
        assert re.search(fact, status, re.M), (fact, status)
    assert json.loads(run("job", "status", str(job_id), "--json").stdout) == job

    plain = run("job", "logs", str(job_id)).stdout
    assert plain == http.get(f"{API}/jobs/{job_id}/logs", headers=alice.headers).text
    assert "step 49\n" in plain
    followed = run("job", "logs", str(job_id), "-f")
    assert followed.stdout == plain and f"job {job_id} succeeded" in followed.stderr


def test_submit_from_a_job_file_with_flags_overriding(
    run: Run,
    http: httpx.Client,  # noqa: F811
    alice: Account,
    tmp_path: Path,
) -> None:
    world(http, alice)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        "code: {repo: alice/adder, rev: main}\n"
        "command: python sum.py from-file\n"
        "inputs:\n  numbers: alice/numbers@main\n"
        "output: {repo: alice/results}\n"
        "env:\n  variables: {GREETING: from-file, OTHER: kept}\n"
        "resources:\n  memory: 512M\n  time_limit: 10m\n"
    )
    result = run(
        "job",
        "submit",
        "-f",
        str(job_file),
        "--env",
        "GREETING=from-flag",
        "--time-limit",
        "90",
        "--wait",
        "--json",
    )
    job = json.loads(result.stdout)
    assert job["status"] == "succeeded" and job["exit_code"] == 0
    assert job["command"] == ["python", "sum.py", "from-file"]
    assert job["resources"]["time_limit"] == 90 and job["resources"]["memory"] == 512 * 1024**2
    assert job["spec"]["env"]["variables"] == {"GREETING": "from-flag", "OTHER": "kept"}
    assert job["output"]["branch"] == "main" and job["output"]["commit"]
    log = http.get(f"{API}/jobs/{job['id']}/logs", headers=alice.headers).text
    assert "greeting: from-flag kept" in log and "args: from-file" in log

    # The command after `--` replaces the file's.
    again = run("job", "submit", "-f", str(job_file), "--json", "--", "python", "fail.py")
    assert json.loads(again.stdout)["command"] == ["python", "fail.py"]


def test_a_failing_job_makes_wait_and_follow_exit_1(
    run: Run,
    http: httpx.Client,  # noqa: F811
    alice: Account,
) -> None:
    world(http, alice)
    waited = run("job", "submit", "--code", "alice/adder", "--wait", "--", "python fail.py", code=1)
    job_id = int(re.search(r"Submitted job (\d+)", waited.stderr).group(1))  # type: ignore[union-attr]
    assert f"job {job_id} failed" in waited.stderr and "(exit code 3)" in waited.stderr
    assert f"opensci job logs {job_id}" in waited.stderr
    assert waited.stdout == ""  # --wait prints no log
    followed = run("job", "logs", str(job_id), "--follow", code=1)
    assert "bad input\n" in followed.stdout and f"job {job_id} failed" in followed.stderr
    assert "bad input" in run("job", "logs", str(job_id)).stdout  # reading a log is no failure
    as_json = run("job", "rerun", str(job_id), "--follow", "--json", code=1)
    rerun = json.loads(as_json.stdout)  # with --json the log goes to stderr: stdout stays JSON
    assert rerun["status"] == "failed" and rerun["rerun_of"] == job_id and "bad input\n" in as_json.stderr
    status = json.loads(run("job", "status", str(job_id), "--json").stdout)
    assert (status["status"], status["exit_code"], status["reason"]) == ("failed", 3, "exit_code")


def test_bad_flags_and_bad_job_files_queue_nothing(
    idle: tuple[Run, httpx.Client], alice: Account, tmp_path: Path
) -> None:
    run, api = idle
    world(api, alice)
    base = ("job", "submit", "--code", "alice/adder")
    usage = {
        ("job", "submit", "--", "python", "x.py"): "give the code to run",
        base: "give the command after `--`",
        (*base, "--input", "numbers", "--", "x"): "is not NAME=OWNER/NAME[@REV]",
        (*base, "--input", "n=alice", "--", "x"): "OWNER/NAME",
        ("job", "submit", "--code", "adder", "--", "x"): "OWNER/NAME",
        (*base, "--output", "alice/results@", "--", "x"): "nothing after '@'",
        (*base, "--memory", "lots", "--", "x"): "'lots' is not a size",
        (*base, "--time-limit", "soon", "--", "x"): "'soon' is not a duration",
        (*base, "--time-limit", "9" * 400 + "h", "--", "x"): "positive whole number of seconds",
        (*base, "--memory", "\u0663G", "--", "x"): "is not a size",  # an Arabic-Indic 3: not a digit here
        (*base, "--env", "NOVALUE", "--", "x"): "is not KEY=VALUE",
        (*base, "--cpus", "0", "--", "x"): "--cpus",
        (*base, "--priority", "500", "--", "x"): "--priority",
    }
    for args, message in usage.items():
        result = run(*args, code=2)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr

    files = {
        "broken.yaml": ("code: [alice/adder\ncommand: x\n", "is not valid YAML at line"),
        "list.yaml": ("- code\n- command\n", "must map job fields"),
        "typo.yaml": ("code: alice/adder\ncommand: x\ngpu: 1\n", "unknown field(s) gpu"),
        "duration.yaml": (
            "code: alice/adder\ncommand: x\nresources: {time_limit: soon}\n",
            "'soon' is not a duration",
        ),
    }
    for name, (text, message) in files.items():
        (tmp_path / name).write_text(text)
        result = run("job", "submit", "-f", str(tmp_path / name), code=2)
        assert message in result.stderr, (name, result.stderr)
    missing = run("job", "submit", "-f", str(tmp_path / "nope.yaml"), code=2)
    assert "cannot read" in missing.stderr
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("numpy\n-r other.txt\n")
    refused = run(*base, "--requirements-file", str(reqs), "--", "x", code=2)
    assert "line 2: pip options (-r) are not supported" in refused.stderr

    # Mistakes only the server can see: exit code 1, its message and a hint.
    (tmp_path / "nested.yaml").write_text("code: alice/adder\ncommand: x\nresources: {cpu: 2}\n")
    nested = run("job", "submit", "-f", str(tmp_path / "nested.yaml"), code=1)
    assert "error: resources.cpu: unknown field (not permitted); the fields are: cpus," in nested.stderr
    missing_repo = run("job", "submit", "--code", "alice/nothing", "--", "x", code=1)
    assert "error:" in missing_repo.stderr and "hint: check OWNER/NAME" in missing_repo.stderr
    priority = run(*base, "--priority", "5", "--", "x", code=1)
    assert "hint: leave the priority at 0 or below" in priority.stderr
    bad_req = run(*base, "-r", "numpy @ https://example.org/n.whl", "--", "x", code=1)
    assert "direct URLs are not allowed" in bad_req.stderr and "hint:" in bad_req.stderr
    as_json = run("job", "submit", "--code", "alice/nothing", "--json", "--", "x", code=1)
    assert json.loads(as_json.stdout)["error"] == "repo_not_found"

    assert json.loads(run("job", "list", "--json").stdout) == []  # nothing was queued
    assert "No jobs found." in run("job", "list").stderr


def test_flags_become_the_spec_and_a_queued_job_is_cancelled_at_once(
    idle: tuple[Run, httpx.Client], alice: Account, tmp_path: Path
) -> None:
    run, api = idle
    world(api, alice)
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# pinned\nsix==1.16.0  # inline comment\n\npackaging>=24\n")
    result = run(
        "job", "submit", "--code", "alice/adder@main", "--input", "numbers=alice/numbers@main",
        "--input", "again=datasets/alice/numbers", "--output", "alice/results@runs",
        "-r", "idna==3.10", "--requirements-file", str(reqs), "--env", "A=1", "--network",
        "--cpus", "1", "--memory", "2G", "--time-limit", "1h30m", "--executor", "local",
        "--priority", "-5", "--json", "--", "python sum.py 'two words'",
    )  # fmt: skip
    job = json.loads(result.stdout)
    spec = job["spec"]
    assert job["status"] == "queued" and job["priority"] == -5 and job["executor"] == "local"
    assert spec["code"] == {"repo": "alice/adder", "rev": "main"}
    assert spec["inputs"] == {
        "numbers": {"repo": "alice/numbers", "rev": "main"},
        "again": {"repo": "alice/numbers", "rev": None},
    }
    assert spec["output"] == {"repo": "alice/results", "branch": "runs"}
    assert spec["command"] == ["python", "sum.py", "two words"]  # one word with spaces: a shell line
    assert spec["env"] == {
        "requirements": ["idna==3.10", "packaging>=24", "six==1.16.0"],
        "variables": {"A": "1"},
        "network": True,
    }
    assert job["resources"] == {"cpus": 1, "memory": 2 * 1024**3, "time_limit": 5400, "gpus": 0}

    plain = run("job", "submit", "--code", "alice/adder", "--", "python", "sum.py")
    job_id, url = plain.stdout.split()
    assert int(job_id) == job["id"] + 1 and url.endswith(f"/jobs/{job_id}")
    assert f"job logs {job_id} -f" in plain.stderr

    table = run("job", "list").stdout
    assert re.search(r"ID\s+STATUS\s+SUBMITTER\s+CODE\s+COMMAND\s+STARTED\s+DURATION", table)
    assert re.search(
        rf"{job['id']}\s+queued\s+alice\s+alice/adder@\w{{10}}\s+python sum.py 'two words'", table
    )

    assert run("job", "cancel", job_id).stdout == f"Cancelled job {job_id}.\n"
    again = run("job", "cancel", job_id, code=1)
    assert "has already ended (cancelled)" in again.stderr and "opensci job rerun" in again.stderr
    cancelled = json.loads(run("job", "cancel", str(job["id"]), "--json").stdout)
    assert cancelled["status"] == "cancelled" and cancelled["reason"] == "cancelled"
    listed = json.loads(run("job", "list", "--status", "cancelled", "--json").stdout)
    assert sorted(j["id"] for j in listed) == sorted([job["id"], int(job_id)])


def test_list_status_cancel_and_rerun(
    run: Run,
    http: httpx.Client,  # noqa: F811
    alice: Account,
    bob: Account,
) -> None:
    world(http, alice)
    code_repo(http, alice, "secret", {"run.py": "print('hidden')\n"}, private=True)
    code_repo(
        http, alice, "sleeper", {"run.py": "import time\nprint('started', flush=True)\ntime.sleep(60)\n"}
    )
    ok = json.loads(
        run(
            "job",
            "submit",
            "--code",
            "alice/adder",
            "--input",
            "numbers=alice/numbers",
            "--wait",
            "--json",
            "--",
            "python",
            "sum.py",
        ).stdout
    )
    bad = json.loads(
        run(
            "job", "submit", "--code", "alice/adder", "--wait", "--json", "--", "python", "fail.py", code=1
        ).stdout
    )
    hidden = json.loads(
        run("job", "submit", "--code", "alice/secret", "--json", "--", "python", "run.py").stdout
    )
    long = json.loads(
        run("job", "submit", "--code", "alice/sleeper", "--json", "--", "python", "run.py").stdout
    )

    table = run("job", "list").stdout
    ids = [int(m) for m in re.findall(r"^\s*(\d+)\s", table, re.MULTILINE)]
    assert ids == [long["id"], hidden["id"], bad["id"], ok["id"]]
    assert re.search(
        rf"{ok['id']}\s+succeeded\s+alice\s+alice/adder@\w+\s+python sum.py\s+\d{{4}}-\d\d-\d\d", table
    )
    listed = lambda *args: [j["id"] for j in json.loads(run("job", "list", "--json", *args).stdout)]  # noqa: E731
    assert listed("--status", "failed") == [bad["id"]]
    assert listed("--repo", "alice/numbers") == [ok["id"]]
    assert listed("--mine", "--limit", "2") == [long["id"], hidden["id"]]
    assert listed("--owner", "bob") == []
    assert "--status" in run("job", "list", "--status", "finished", code=2).stderr

    # Bob sees neither the job over a private repository nor may he cancel alice's.
    as_bob = run("job", "status", str(hidden["id"]), as_token=bob.token, code=1)
    assert (
        f"error: job {hidden['id']} not found" in as_bob.stderr and "hint: check the job id" in as_bob.stderr
    )
    assert hidden["id"] not in [
        j["id"] for j in json.loads(run("job", "list", "--json", as_token=bob.token).stdout)
    ]
    refused = run("job", "cancel", str(long["id"]), as_token=bob.token, code=1)
    assert "hint: only the job's submitter or a site administrator may cancel it" in refused.stderr

    deadline = time.monotonic() + 60
    while "started" not in http.get(f"{API}/jobs/{long['id']}/logs", headers=alice.headers).text:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    stopping = run("job", "cancel", str(long["id"]))
    assert f"Stopping job {long['id']} (running)" in stopping.stdout
    followed = run("job", "logs", str(long["id"]), "-f", code=1)
    assert followed.stdout.count("started\n") == 1 and f"job {long['id']} cancelled" in followed.stderr

    rerun = run("job", "rerun", str(ok["id"]), "--follow")
    new_id = int(re.search(rf"Submitted job (\d+), a rerun of job {ok['id']}:", rerun.stderr).group(1))  # type: ignore[union-attr]
    assert "sum is 42" in rerun.stdout and f"job {new_id} succeeded" in rerun.stderr
    new = json.loads(run("job", "status", str(new_id), "--json").stdout)
    assert new["rerun_of"] == ok["id"] and new["code"]["commit"] == ok["code"]["commit"]
    assert re.search(rf"^rerun of:\s+job {ok['id']}$", run("job", "status", str(new_id)).stdout, re.MULTILINE)
    quiet = json.loads(run("job", "rerun", str(bad["id"]), "--json").stdout)
    assert quiet["rerun_of"] == bad["id"] and quiet["status"] == "queued"
    assert finished(http, alice, quiet["id"])["status"] == "failed"
    assert "job 999999 not found" in run("job", "rerun", "999999", code=1).stderr


def test_the_status_line_shows_on_a_terminal_only(
    server: LiveServer,  # noqa: F811
    http: httpx.Client,  # noqa: F811
    alice: Account,
) -> None:
    code_repo(
        http,
        alice,
        "slow",
        {"run.py": "import time\nfor i in range(4):\n  print('tick', i, flush=True)\n  time.sleep(0.5)\n"},
    )
    job = http.post(
        f"{API}/jobs",
        json={"code": {"repo": "alice/slow"}, "command": "python run.py"},
        headers=alice.headers,
    ).json()
    env = {"OPENSCI_URL": server.url, "OPENSCI_TOKEN": alice.token, "COLUMNS": "100"}
    code, seen = in_a_terminal(["job", "logs", str(job["id"]), "-f"], env)
    assert code == 0, seen.decode(errors="replace")
    text = seen.decode(errors="replace")
    assert re.search(rf"job {job['id']} running \((preparing|executing)\)", text), text
    assert "running for" in text
    assert [line.strip() for line in re.findall(r"tick \d", text)] == ["tick 0", "tick 1", "tick 2", "tick 3"]
    assert f"job {job['id']} succeeded" in text
