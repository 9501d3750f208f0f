"""How `opensci job list|logs` writes to the terminal and to pipes: the list fitted to the width without
cutting ids, long logs followed quickly and exactly, a job's escape sequences kept away from a terminal,
and a status line that does not contradict the log."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from opensci.cli import job_view
from opensci.cli.main import app as cli
from opensci.client.types import Job
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

LONG = "python analyze.py " + " ".join(f"--option-{i}=value-{i}" for i in range(30))

# A job whose output holds what a hostile (or careless) program could send a terminal: colours, a
# window title, a clipboard write (OSC 52), a screen clear, a bell, a C1 control, and bytes that are
# not UTF-8.
ESCAPES = b"""\
import sys
out = sys.stdout.buffer
out.write(b"plain line\\n")
out.write(b"\\x1b[31mred\\x1b[0m\\n")
out.write(b"\\x1b]0;pwned-title\\x07\\n")
out.write(b"\\x1b]52;c;cm0gLXJmIH4=\\x07\\n")
out.write(b"\\x1b[2J\\x1b[H cleared\\n")
out.write("c1 \\u009b6n end\\n".encode())
out.write(b"tab\\there, bad utf-8 \\xff\\xfe ok\\n")
out.write(b"10%\\r100%\\n")
out.flush()
"""


def cli_env(url: str, token: str, columns: int = 200) -> dict[str, str]:
    return {"OPENSCI_URL": url, "OPENSCI_TOKEN": token, "COLUMNS": str(columns)}


def submit(http: httpx.Client, who: Account, spec: dict[str, Any]) -> int:  # noqa: F811
    r = http.post(f"{API}/jobs", json=spec, headers=who.headers)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def raw_log(http: httpx.Client, who: Account, job_id: int) -> bytes:  # noqa: F811
    data, offset = b"", 0
    while True:
        r = http.get(f"{API}/jobs/{job_id}/logs", params={"offset": offset}, headers=who.headers)
        assert r.status_code == 200, r.text
        if not r.content:
            return data
        data += r.content
        offset = int(r.headers["x-log-next-offset"])


# --- job list ---------------------------------------------------------------------------------------------


def test_the_list_keeps_ids_and_statuses_whole_at_80_columns(live_server: LiveServer, alice: Account) -> None:
    with httpx.Client(base_url=live_server.url, timeout=30) as api:
        code_repo(api, alice, "analysis", {"analyze.py": "print(1)\n"})
        short = submit(api, alice, {"code": {"repo": "alice/analysis"}, "command": "python analyze.py"})
        long = submit(api, alice, {"code": {"repo": "alice/analysis"}, "command": LONG})
    runner = CliRunner()
    for columns in (80, 120, 200):
        result = runner.invoke(cli, ["job", "list"], env=cli_env(live_server.url, alice.token, columns))
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert all(len(line) <= columns for line in lines), (columns, result.stdout)
        assert re.match(r"\s*ID\s+STATUS\s+SUBMITTER\s+CODE\s+COMMAND\s+STARTED\s+DURATION$", lines[0]), (
            columns,
            lines[0],
        )
        assert re.match(rf"\s*{long}\s+queued\s+alice\s+alice/an", lines[1]), (columns, lines[1])
        assert re.match(rf"\s*{short}\s+queued\s+alice\s+alice/an\S*\s+python analyze.py\s", lines[2]), (
            columns,
            lines[2],
        )
        if columns < len(LONG) + 60:
            assert "…" in lines[1] and LONG not in lines[1]  # the long command is cut, not the id
    wide = runner.invoke(cli, ["job", "list"], env=cli_env(live_server.url, alice.token, 800))
    assert LONG in wide.stdout  # whole when there is room
    as_json = runner.invoke(cli, ["job", "list", "--json"], env=cli_env(live_server.url, alice.token, 80))
    assert json.loads(as_json.stdout)[0]["command"] == LONG.split()


def _fake_job(job_id: int, command: list[str], submitter: str = "alice") -> Any:
    now = datetime.now(UTC)
    return SimpleNamespace(
        id=job_id,
        status="succeeded",
        submitter=submitter,
        code=SimpleNamespace(repo="admin/analysis", commit="0123456789abcdef"),
        command=command,
        started_at=now - timedelta(seconds=75),
        ended_at=now,
        finished=True,
    )


def test_the_list_shrinks_long_columns_and_drops_the_start_time_last(
    capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = [_fake_job(123456, ["sh", "-c", "echo " * 100]), _fake_job(7, ["true"], submitter="a" * 30)]
    for width in (60, 80, 100, 160):
        job_view.table(jobs, width=width)
        lines = capsys.readouterr().out.splitlines()
        assert all(len(line) <= width for line in lines), (width, lines)
        assert lines[0].split()[:2] == ["ID", "STATUS"] and "SUBMITTER" in lines[0]
        assert lines[1].split()[:2] == ["123456", "succeeded"] and lines[2].split()[:2] == ["7", "succeeded"]
        assert ("STARTED" in lines[0]) == (width >= 80), (width, lines[0])
        if width >= 80:
            assert "DURATION" in lines[0] and lines[1].rstrip().endswith("1m15s")
    assert job_view.share_width([5, 40, 100], [9, 10, 10], [1, 1, 2], 60) == [5, 21, 34]
    assert job_view.share_width([5, 12, 30], [9, 10, 10], [1, 1, 2], 60) == [5, 12, 30]
    assert job_view.share_width([20, 40, 100], [9, 10, 10], [1, 1, 2], 20) == [9, 10, 10]


# A command (and an environment variable) a job may carry that would clear the screen, retitle the
# window, ring the bell, colour what follows and return the cursor if they reached a terminal raw.
HOSTILE = "\u001b[2J\u001b]0;PWNED\u0007\u001b[31mRED\r\n"
HOSTILE_SHOWN = "^[[2J^[]0;PWNED^G^[[31mRED^M⏎"
SENT = (b"\x1b[2J", b"\x1b]0;", b"\x07", b"\x1b[31mRED", b"RED\r")


def test_job_text_is_shown_not_sent_to_the_terminal(live_server: LiveServer, alice: Account) -> None:
    with httpx.Client(base_url=live_server.url, timeout=30) as api:
        code_repo(api, alice, "analysis", {"analyze.py": "print(1)\n"})
        hostile = submit(
            api,
            alice,
            {
                "code": {"repo": "alice/analysis"},
                "command": ["printf", HOSTILE],
                "env": {"variables": {"GREETING": f"hello{HOSTILE}"}},
            },
        )
        script = submit(
            api,
            alice,
            {"code": {"repo": "alice/analysis"}, "command": ["sh", "-c", "for i in 1 2\ndo\techo $i\ndone"]},
        )
    env = cli_env(live_server.url, alice.token)
    for argv in (["job", "status", str(hostile)], ["job", "list"]):
        code, seen = in_a_terminal(argv, env)
        assert code == 0, seen
        for sent in SENT:
            assert sent not in seen, (argv, sent, seen)
        assert HOSTILE_SHOWN in seen.decode(), (argv, seen)
    code, seen = in_a_terminal(["job", "status", str(hostile)], env)
    assert f"GREETING=hello{HOSTILE_SHOWN}" in seen.decode()

    # Into a pipe too (the table is for people: --json has the command as it is), one job a row: a
    # script of several lines is shown on one, its line breaks and tabs shown as ⏎ and ⇥.
    listed = CliRunner().invoke(cli, ["job", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    rows = listed.stdout.splitlines()
    assert [row.split()[0] for row in rows] == ["ID", str(script), str(hostile)], rows
    assert "sh -c 'for i in 1 2⏎do⇥echo $i⏎done'" in rows[1]
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", listed.stdout)

    # What the server says back in an error (a repository name it did not find) is shown too: here a
    # C1 control sequence introducer and a right-to-left override.
    code, seen = in_a_terminal(["job", "list", "--repo", "alice/x\x9b2J\u202e"], env)
    assert code == 1 and "\x9b".encode() not in seen and "\u202e".encode() not in seen, seen
    assert "error: repository alice/x\\x9b2J\\u202e not found" in seen.decode(), seen


def test_job_status_reads_well_at_80_columns_without_breaking_an_id(
    live_server: LiveServer, alice: Account
) -> None:
    name = "a-rather-long-name-for-the-analysis-code"
    with httpx.Client(base_url=live_server.url, timeout=30) as api:
        code_repo(api, alice, name, {"analyze.py": "print(1)\n"})
        dataset(api, alice, "star-catalogue-of-the-northern-sky", {"stars.csv": "id\n1\n"})
        dataset(api, alice, "results", None)
        job_id = submit(
            api,
            alice,
            {
                "code": {"repo": f"alice/{name}", "rev": "main"},
                "command": LONG,
                "inputs": {
                    "stars": {"repo": "alice/star-catalogue-of-the-northern-sky", "rev": "main"},
                    "a-very-long-input-name": {"repo": "alice/star-catalogue-of-the-northern-sky"},
                },
                "output": {"repo": "alice/results", "branch": "runs"},
            },
        )
        job = api.get(f"{API}/jobs/{job_id}", headers=alice.headers).json()
    shown = CliRunner().invoke(
        cli, ["job", "status", str(job_id)], env=cli_env(live_server.url, alice.token, 80)
    )
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), shown.stdout
    commit, stars = job["code"]["commit"], job["inputs"]["stars"]["commit"]
    assert re.search(rf"^code:\s+alice/{name}@main\n\s+commit {commit}$", shown.stdout, re.M), shown.stdout
    assert re.search(
        rf"^input stars:\s+alice/star-catalogue-of-the-northern-sky@main\n\s+commit {stars}$",
        shown.stdout,
        re.M,
    ), shown.stdout
    # a long key has its value under it; the command wraps between its words, lined up
    assert re.search(r"^input a-very-long-input-name:\n {16}alice/star-catalogue", shown.stdout, re.M)
    assert re.search(r"^output:\s+alice/results, branch runs\n\s+commit \(none yet\)$", shown.stdout, re.M)
    start = next(i for i, line in enumerate(lines) if line.startswith("command:"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i][:16].strip())
    assert end - start > 1 and " ".join(line[16:] for line in lines[start:end]) == LONG, lines[start:end]


def test_status_values_wrap_between_parts_never_inside_one(capsys: pytest.CaptureFixture[str]) -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    packages = [f"package-number-{i}==1.{i}.0" for i in range(12)]
    job = Job.from_json(
        {
            "id": 7,
            "status": "failed",
            "phase": "done",
            "url": "http://example.org/jobs/7",
            "submitter": "alice",
            "command": ["python", "run.py"],
            "code": {"repo": "alice/x", "rev": "main", "commit": sha},
            "inputs": {},
            "output": None,
            "executor": "local",
            "resources": {"cpus": 1, "memory": 2**30, "time_limit": 60, "gpus": 0},
            "environment": {
                "requirements": ["numpy"],
                "key": "k" * 24,
                "python": "3.11.9",
                "packages": packages,
            },
            "usage": {},
            "exit_code": 3,
            "reason": "exit_code",
            "message": "the command ended\x1b[2J with exit code 3 " + "and a long explanation " * 5,
            "attempts": 1,
            "priority": 0,
            "rerun_of": None,
            "created_at": "2024-05-01T10:00:00+00:00",
            "started_at": None,
            "ended_at": None,
        }
    )
    for width in (60, 80, 120):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("COLUMNS", str(width))
            job_view.provenance(job)
        out = capsys.readouterr().out
        # (at 60 columns, a sha does not fit after the keys: its line is left long, not cut)
        assert all(len(line) <= width or sha in line for line in out.splitlines()), (width, out)
        shown = re.sub(r"\n {14,}", " ", out)  # continuation lines joined back
        assert f"commit {sha}" in out and ", ".join(packages) in shown, (width, out)
        assert "the command ended^[[2J with exit code 3" in shown and "\x1b" not in out
    assert job_view.summary(job) == "job 7 failed (exit code 3): " + job_view.visible(job.message)
    assert "\x1b" not in job_view.summary(job)
    assert job_view.visible("a\x1b[1m\tb\nc\r\u202eé\x9b") == "a^[[1m⇥b⏎c^M\\u202eé\\x9b"
    assert job_view.visible_lines("one\x07\ntwo") == "one^G\ntwo"


# --- job logs -------------------------------------------------------------------------------------------


def test_following_a_long_finished_log_reads_it_plainly_once(
    server: LiveServer,  # noqa: F811
    http: httpx.Client,  # noqa: F811
    alice: Account,
) -> None:
    # About 24 MiB in lines of every length, with multi-byte characters across the server's 1 MiB pages.
    big = (
        "import sys\n"
        "out = sys.stdout.buffer\n"
        "for i in range(300_000):\n"
        "    out.write(f'{i:06d} é€😀 '.encode() + b'x' * (i % 120) + b'\\n')\n"
    )
    code_repo(http, alice, "loud", {"big.py": big})
    job_id = submit(http, alice, {"code": {"repo": "alice/loud"}, "command": "python big.py"})
    assert finished(http, alice, job_id)["status"] == "succeeded"
    log = raw_log(http, alice, job_id)
    assert len(log) > 20 * 1024**2

    runner = CliRunner()
    env = cli_env(server.url, alice.token)
    started = time.monotonic()
    followed = runner.invoke(cli, ["job", "logs", str(job_id), "-f"], env=env)
    took = time.monotonic() - started
    assert followed.exit_code == 0, followed.stderr
    assert followed.stdout_bytes == log  # every byte, once, in order
    assert f"job {job_id} succeeded" in followed.stderr
    # Reading 24 MiB as 1 MiB pages takes well under a second; it took over 10 s as events.
    assert took < 8, took
    plain = runner.invoke(cli, ["job", "logs", str(job_id)], env=env)
    assert plain.exit_code == 0 and plain.stdout_bytes == log

    # On a terminal, above the status line, too: each line once, in order, quickly.
    started = time.monotonic()
    code, seen = in_a_terminal(["job", "logs", str(job_id), "-f"], env)
    took = time.monotonic() - started
    assert code == 0, seen[-2000:]
    # (where the status line was, it is erased with ESC [2K before the log goes on)
    shown = [line.rsplit("\x1b[2K", 1)[-1] for line in seen.decode().split("\r\n")]
    lines = [line for line in shown if line[:6].isdigit()]
    assert lines == [line for line in log.decode().splitlines() if line[:6].isdigit()]
    assert took < 15, took


def test_logs_go_to_a_pipe_byte_for_byte_and_to_a_terminal_made_safe(
    server: LiveServer,  # noqa: F811
    http: httpx.Client,  # noqa: F811
    alice: Account,
) -> None:
    code_repo(http, alice, "noisy", {"esc.py": ESCAPES})
    job_id = submit(http, alice, {"code": {"repo": "alice/noisy"}, "command": "python esc.py"})
    assert finished(http, alice, job_id)["status"] == "succeeded"
    log = raw_log(http, alice, job_id)
    assert b"\x1b]0;pwned-title\x07" in log and b"\xff\xfe" in log

    # Not a terminal (a pipe, a file): the log as it is, escape sequences and invalid bytes included.
    runner = CliRunner()
    env = cli_env(server.url, alice.token)
    plain = runner.invoke(cli, ["job", "logs", str(job_id)], env=env)
    assert plain.exit_code == 0 and plain.stdout_bytes == log
    followed = runner.invoke(cli, ["job", "logs", str(job_id), "-f"], env=env)
    assert followed.exit_code == 0 and followed.stdout_bytes == log

    # A terminal: every control character but line feeds, tabs and carriage returns is shown, not sent.
    for argv in (["job", "logs", str(job_id)], ["job", "logs", str(job_id), "-f"]):
        code, seen = in_a_terminal(argv, env)
        assert code == 0, seen
        text = seen.decode("utf-8", "replace")
        for sent in (b"\x1b[31mred", b"\x1b]0;pwned", b"\x1b]52;", b"\x1b[2J", b"\x07", "\u009b".encode()):
            assert sent not in seen, (argv, sent, text)
        for shown in ("^[[31mred^[[0m", "^[]0;pwned-title^G", "^[]52;c;cm0gLXJmIH4=^G", "^[[2J^[[H cleared"):
            assert shown in text, (argv, shown, text)
        assert "c1 \\x9b6n end" in text
        assert re.search(  # tabs are expanded above a status line (-f)
            "tab\\s+here, bad utf-8 \ufffd\ufffd ok", text
        ), text
        assert "plain line" in text and "100%" in text


# A job that prints bytes that are not UTF-8 while it runs, and ends on half a character.
BINARY = b"""\
import os, sys, time
out = sys.stdout.buffer
out.write(b"a\\377\\376b\\n")
out.flush()
time.sleep(1.5)
for i in range(30):
    out.write(os.urandom(100))
    out.flush()
    time.sleep(0.03)
out.write(b"\\xe2\\x82")
"""


def test_following_a_running_job_into_a_pipe_is_byte_for_byte(
    server: LiveServer,  # noqa: F811
    http: httpx.Client,  # noqa: F811
    alice: Account,
) -> None:
    code_repo(http, alice, "binary", {"noise.py": BINARY})
    job_id = submit(http, alice, {"code": {"repo": "alice/binary"}, "command": "python noise.py"})
    runner = CliRunner()
    followed = runner.invoke(cli, ["job", "logs", str(job_id), "-f"], env=cli_env(server.url, alice.token))
    assert followed.exit_code == 0, followed.stderr
    log = raw_log(http, alice, job_id)
    assert b"a\xff\xfeb\n" in log and b"\xe2\x82[opensci] job" in log and len(log) > 3000
    assert followed.stdout_bytes == log  # not the events' text, where such bytes become U+FFFD
    assert f"job {job_id} succeeded" in followed.stderr


def test_terminal_safe_text() -> None:
    assert (
        job_view.terminal_safe("a\x1b[1mb\x00\x08\x7f\x9b\u200bz\t\n\r") == "a^[[1mb^@^H^?\\x9b\u200bz\t\n\r"
    )
    assert job_view.terminal_safe("é€😀") == "é€😀"
    assert job_view.last_rewrite("10%\r50%\r100%") == "100%" and job_view.last_rewrite("done\r") == "done"


# --- the status line --------------------------------------------------------------------------------------


def _running(phase: str) -> Any:
    return SimpleNamespace(
        id=5,
        status="running",
        phase=phase,
        finished=False,
        cancel_requested=False,
        started_at=datetime.now(UTC),
        ended_at=None,
        created_at=datetime.now(UTC),
    )


def test_the_status_line_drops_preparing_once_the_command_prints(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    live = job_view.LiveStatus(_running("preparing"), enabled=False)
    with live:
        live.write(b"[opensci] job 5 started on host (attempt 1, local)\n[opensci] code alice/x at 0123")
        assert "job 5 running (preparing)" in live.line()
        live.write(b"abcdef: 3 files\n[opensci] building environment k: six\nCollecting six\n")
        assert "(preparing)" in live.line()  # pip's output while the environment is built
        live.write(b"  Downloading six.whl\n[opensci] sandbox: bubblewrap, network off\n")
        assert "(preparing)" in live.line()
        live.write(b"step 1\n")
        assert live.line().startswith("job 5 running, running for")  # the command has printed
        live.update(_running("executing"))
        assert "job 5 running (executing)" in live.line()
    out = capsysbinary.readouterr().out
    assert out.endswith(
        b"Collecting six\n  Downloading six.whl\n[opensci] sandbox: bubblewrap, network off\nstep 1\n"
    )


def test_command_start_is_told_from_the_log_in_pieces_of_any_size() -> None:
    log = (
        b"[opensci] job 5 started\n[opensci] building environment k: six\nCollecting six\n  Downloading x\n"
        b"[opensci] sandbox: none\n[opensci] local executor: host:1\nEpoch 1/10 [=====>"
    )
    first_output = log.index(b"Epoch")
    for size in (1, 2, 7, 64, len(log)):
        start = job_view.CommandStart()
        for i in range(0, len(log), size):
            start.feed(log[i : i + size])
            # known as soon as a line cannot be a note any more, even before it ends
            assert start.seen == (i + size > first_output), (size, i)
    assert job_view.CommandStart().seen is False
