"""What a job cannot do, on a live server with the local executor and the bubblewrap sandbox: reach
outside its directory through `outputs/`, keep privileges (even when the server runs as root), hide
memory in a RAM-backed /tmp, fill the disk with its log, or see another job's directory; and what it
is told about itself (its real CPU time, a clear 127 for a missing program)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
from fastapi import FastAPI

from tests.api_helpers import API
from tests.compute.conftest import code_repo, dataset, finished, logs, submit
from tests.conftest import Account, need_binary

SH = {"run.sh": "#!/bin/sh\n"}


def run(http: httpx.Client, who: Account, command: list[str], **extra: object) -> tuple[dict, str]:
    job = submit(http, who, {"code": {"repo": f"{who.name}/tool"}, "command": command, **extra})
    done = finished(http, who, job["id"])
    return done, logs(http, who, job["id"])


def test_outputs_that_link_outside_the_job_commit_nothing(
    http: httpx.Client, alice: Account, compute_app: FastAPI
) -> None:
    home = compute_app.state.settings.home.resolve()
    code_repo(http, alice, "tool", SH)
    dataset(http, alice, "loot", {"README.md": "mine\n"})
    before = http.get(f"{API}/repos/alice/loot/commits", headers=alice.headers).json()
    done, text = run(
        http, alice, ["sh", "-c", f"rmdir outputs && ln -s {home} outputs"], output={"repo": "alice/loot"}
    )
    assert done["status"] == "failed" and done["reason"] == "outputs", (done, text)
    assert "outputs/ is a link" in done["message"]
    after = http.get(f"{API}/repos/alice/loot/commits", headers=alice.headers).json()
    assert after == before
    # The server's database is intact (nothing read its files in-process and dropped its locks).
    assert http.get(f"{API}/repos/alice/loot", headers=alice.headers).status_code == 200

    # Links inside outputs/ are neither followed nor committed; the regular files are.
    done, text = run(
        http,
        alice,
        [
            "sh",
            "-c",
            f"ln -s {home} outputs/home && ln -s /etc/passwd outputs/pw && echo ok > outputs/ok.txt",
        ],
        output={"repo": "alice/loot"},
    )
    assert done["status"] == "succeeded", (done, text)
    tree = http.get(f"{API}/repos/alice/loot/tree/main", headers=alice.headers).json()
    names = {e["path"] for e in tree["entries"]}
    assert "ok.txt" in names and "home" not in names and "pw" not in names
    assert "outputs/home is a link to a folder, not followed: not committed" in text
    assert "outputs/pw is not a regular file" in text


def test_a_file_name_a_repository_cannot_hold_is_skipped_not_fatal(
    http: httpx.Client, alice: Account
) -> None:
    code_repo(http, alice, "tool", SH)
    dataset(http, alice, "out", None)
    done, text = run(
        http,
        alice,
        [
            "sh",
            "-c",
            "echo a > 'outputs/back\\slash.txt' && mkdir -p outputs/.git && echo b > outputs/.git/x "
            "&& echo c > outputs/good.txt",
        ],
        output={"repo": "alice/out"},
    )
    assert done["status"] == "succeeded", (done, text)
    tree = http.get(f"{API}/repos/alice/out/tree/main", headers=alice.headers).json()
    assert {e["path"] for e in tree["entries"]} == {"good.txt"}
    assert "has a name a repository cannot hold" in text and "back\\slash.txt" in text


ESCAPE = """\
import json, os, pathlib, subprocess
r = {"uid": os.getuid()}
r["cap_eff"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
r["remount"] = subprocess.run(["mount", "-o", "remount,bind,rw", "inputs"], capture_output=True).returncode
try:
    pathlib.Path("inputs/d/values.csv").write_text("poisoned")
    r["input_written"] = True
except OSError:
    r["input_written"] = False
try:
    (pathlib.Path(os.environ["VIRTUAL_ENV"]) / "poison.py").write_text("x")
    r["env_written"] = True
except OSError:
    r["env_written"] = False
for where in ("/", "/dev", "/tmp", "/dev/shm"):
    try:
        (pathlib.Path(where) / "probe").write_text("x")
        r[where] = os.statvfs(where).f_bsize and open("/proc/mounts").read().count(" " + where + " tmpfs")
    except OSError:
        r[where] = "read-only"
pathlib.Path("outputs/r.json").write_text(json.dumps(r))
"""


def test_jobs_have_no_privileges_and_no_memory_backed_scratch_space(
    http: httpx.Client, alice: Account, compute_app: FastAPI
) -> None:
    need_binary("bwrap")
    code_repo(http, alice, "tool", {"escape.py": ESCAPE})
    dataset(http, alice, "d", {"values.csv": "v\n1\n"})
    dataset(http, alice, "out", None)
    done, text = run(
        http, alice, ["python", "escape.py"], inputs={"d": {"repo": "alice/d"}}, output={"repo": "alice/out"}
    )
    assert done["status"] == "succeeded", (done, text)
    r = http.get(f"/datasets/alice/out/resolve/{done['output']['commit']}/r.json").json()
    assert r["uid"] != 0 and r["cap_eff"] == "0000000000000000", r
    assert r["remount"] != 0 and not r["input_written"] and not r["env_written"], r
    # / and /dev are read-only; /tmp and /dev/shm are writable, and on the job's disk, not in memory.
    assert r["/"] == "read-only" and r["/dev"] == "read-only", r
    assert r["/tmp"] == 0 and r["/dev/shm"] == 0, r
    # The input's content in the shared cache of large files is untouched.
    files = http.get("/datasets/alice/d/resolve/main/values.csv").text
    assert files == "v\n1\n"


def test_cpu_time_is_the_commands_and_a_missing_program_exits_127(http: httpx.Client, alice: Account) -> None:
    code_repo(http, alice, "tool", SH)
    done, text = run(
        http,
        alice,
        ["python", "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass"],
    )
    assert done["status"] == "succeeded", (done, text)
    assert done["usage"]["cpu_seconds"] >= 0.9, done["usage"]

    done, text = run(http, alice, ["no-such-program-here", "x"])
    assert done["status"] == "failed" and done["exit_code"] == 127, done
    assert "could not start the command" in done["message"] and "no-such-program-here" in text


def test_a_chatty_job_keeps_only_the_start_of_its_output(
    http: httpx.Client, alice: Account, compute_app: FastAPI
) -> None:
    compute_app.state.settings.compute_max_log_bytes = 100_000
    code_repo(http, alice, "tool", SH)
    done, text = run(http, alice, ["python", "-c", "import sys\nfor i in range(100000): print('x' * 99)"])
    assert done["status"] == "succeeded", (done, text)
    assert text.count("x" * 99) == 1000  # 100,000 bytes of 10,000,000
    assert "the log reached its limit of 97.7 KiB" in text
    assert "9.4 MiB of output past the log's limit were not kept" in text


def test_a_new_job_never_shows_a_directory_left_by_an_earlier_job_with_its_id(
    http: httpx.Client, alice: Account, compute_app: FastAPI
) -> None:
    code_repo(http, alice, "tool", SH)
    first, _ = run(http, alice, ["true"])
    jobs = compute_app.state.settings.jobs_dir
    stale = jobs / str(first["id"] + 1)  # as after a database restored from a backup
    stale.mkdir(parents=True)
    (stale / "log").write_text("SECRET of an earlier job\n")
    past = time.time() - 3600
    os.utime(stale, (past, past))
    done, text = run(http, alice, ["echo", "hello"])
    assert done["id"] == first["id"] + 1
    assert done["status"] == "succeeded" and "hello" in text
    assert "SECRET" not in text and "SECRET" not in Path(stale / "log").read_text()


def test_network_can_be_refused_by_the_operator_and_branch_names_take_refs_heads(
    http: httpx.Client, alice: Account, compute_app: FastAPI
) -> None:
    code_repo(http, alice, "tool", SH)
    dataset(http, alice, "out", None)
    compute_app.state.settings.compute_allow_network = False
    spec = {"code": {"repo": "alice/tool"}, "command": ["true"], "env": {"network": True}}
    r = http.post(f"{API}/jobs", json=spec, headers=alice.headers)
    assert r.status_code == 422 and "OPENSCI_COMPUTE_ALLOW_NETWORK" in r.json()["message"], r.text
    spec = {
        "code": {"repo": "alice/tool"},
        "command": ["sh", "-c", "echo 1 > outputs/x"],
        "output": {"repo": "alice/out", "branch": "refs/heads/results"},
    }
    job = submit(http, alice, spec)
    done = finished(http, alice, job["id"])
    assert done["status"] == "succeeded" and done["output"]["branch"] == "results", done
    refs = http.get(f"{API}/repos/alice/out/refs", headers=alice.headers).json()
    assert "results" in {b["name"] for b in refs["branches"]}
