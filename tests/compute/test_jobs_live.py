"""Jobs end to end on a live server with its scheduler and the local executor."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import httpx
from fastapi import FastAPI

from tests.api_helpers import API, committed
from tests.compute.conftest import code_repo, dataset, finished, logs, submit, wait
from tests.conftest import Account, LiveServer, need_binary

SUM = """\
import os, pathlib, sys
rows = pathlib.Path("inputs/numbers/values.csv").read_text().split()
total = sum(int(x) for x in rows[1:])
out = pathlib.Path("outputs")
(out / "result.txt").write_text(f"{total}\\n")
(out / "nested").mkdir()
(out / "nested" / "args.txt").write_text(" ".join(sys.argv[1:]) + "\\n")
print("sum is", total, flush=True)
"""


def test_success_commits_outputs_with_provenance(http: httpx.Client, alice: Account) -> None:
    code = code_repo(http, alice, "adder", {"sum.py": SUM})
    data = dataset(http, alice, "numbers", {"values.csv": "v\n1\n2\n39\n"})
    dataset(http, alice, "results", None)
    job = submit(
        http,
        alice,
        {
            "code": {"repo": "alice/adder"},
            "command": ["python", "sum.py", "--flag", "x y"],
            "inputs": {"numbers": {"repo": "alice/numbers"}},
            "output": {"repo": "alice/results", "branch": "runs"},
        },
    )
    done = finished(http, alice, job["id"])
    text = logs(http, alice, job["id"])
    assert done["status"] == "succeeded", (done, text)
    assert "sum is 42" in text
    assert done["exit_code"] == 0
    assert done["code"]["commit"] == code and done["inputs"]["numbers"]["commit"] == data
    out = done["output"]["commit"]
    assert out
    r = http.get(f"{API}/repos/alice/results/resolve/{out}/result.txt".replace("/api/v1", ""))
    raw = http.get(f"/datasets/alice/results/resolve/{out}/result.txt")
    assert raw.status_code == 200 and raw.text == "42\n", (r.status_code, raw.text)
    args = http.get(f"/datasets/alice/results/resolve/{out}/nested/args.txt")
    assert args.text == "--flag x y\n"
    commit = http.get(f"{API}/repos/alice/results/commits/{out}", headers=alice.headers).json()
    message = commit.get("message", "")
    assert f"Output of job {job['id']}" in message
    assert f"OpenSci-Code: alice/adder@{code}" in message
    assert f"OpenSci-Input: numbers=alice/numbers@{data}" in message
    assert done["usage"]["wall_seconds"] is not None
    assert done["environment"]["python"]


def test_failure_keeps_exit_code_and_logs(http: httpx.Client, alice: Account) -> None:
    code_repo(
        http, alice, "broken", {"run.py": "import sys\nprint('about to fail', flush=True)\nsys.exit(3)\n"}
    )
    dataset(http, alice, "out", None)
    job = submit(
        http,
        alice,
        {"code": {"repo": "alice/broken"}, "command": "python run.py", "output": {"repo": "alice/out"}},
    )
    done = finished(http, alice, job["id"])
    assert done["status"] == "failed"
    assert done["exit_code"] == 3 and done["reason"] == "exit_code"
    assert "exited with code 3" in done["message"]
    assert done["output"]["commit"] is None
    text = logs(http, alice, job["id"])
    assert "about to fail" in text and "failed" in text
    assert http.get(f"{API}/repos/alice/out/refs", headers=alice.headers).json()["branches"] == []


def test_a_command_that_does_not_exist_fails_clearly(http: httpx.Client, alice: Account) -> None:
    code_repo(http, alice, "nothing", {"README.md": "x"})
    job = submit(http, alice, {"code": {"repo": "alice/nothing"}, "command": ["no-such-program-here"]})
    done = finished(http, alice, job["id"])
    assert done["status"] == "failed"
    assert "no-such-program-here" in logs(http, alice, job["id"])


def _marked_processes(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry))
    return found


TREE = """\
import subprocess, sys, time
kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "MARK"]) for _ in range(3)]
subprocess.Popen(["sh", "-c", "sleep 300; echo MARK"], start_new_session=True)
print("started", len(kids), flush=True)
time.sleep(300)
"""


def test_cancel_stops_the_whole_process_tree_within_seconds(http: httpx.Client, alice: Account) -> None:
    marker = f"opensci-cancel-{uuid.uuid4().hex[:8]}"
    code_repo(http, alice, "spinner", {"tree.py": TREE.replace("MARK", marker)})
    job = submit(http, alice, {"code": {"repo": "alice/spinner"}, "command": ["python", "tree.py"]})
    wait(http, alice, job["id"], lambda j: "started 3" in logs(http, alice, job["id"]), timeout=60)
    assert len(_marked_processes(marker)) >= 4
    t0 = time.monotonic()
    r = http.post(f"{API}/jobs/{job['id']}/cancel", headers=alice.headers)
    assert r.status_code == 200, r.text
    done = finished(http, alice, job["id"], timeout=20)
    assert done["status"] == "cancelled"
    deadline = time.monotonic() + 10
    while _marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _marked_processes(marker) == []
    assert time.monotonic() - t0 < 10
    r = http.post(f"{API}/jobs/{job['id']}/cancel", headers=alice.headers)
    assert r.status_code == 409


SAVER = """\
import signal, sys, time
def save(signum, frame):
    print("got TERM, saving", flush=True)
    time.sleep(1)
    print("saved", flush=True)
    sys.exit(3)
signal.signal(signal.SIGTERM, save)
print("ready", flush=True)
time.sleep(300)
"""


def test_a_stopped_command_gets_its_grace_period_to_save_its_work(http: httpx.Client, alice: Account) -> None:
    """The QA repro: in the sandbox, the TERM of a cancel or of the time limit killed bubblewrap, which took
    the command down at once; the command now has the grace period (3 s) to save its work."""
    code_repo(http, alice, "saver", {"save.py": SAVER})
    job = submit(http, alice, {"code": {"repo": "alice/saver"}, "command": ["python", "save.py"]})
    wait(http, alice, job["id"], lambda j: "ready" in logs(http, alice, job["id"]), timeout=60)
    assert http.post(f"{API}/jobs/{job['id']}/cancel", headers=alice.headers).status_code == 200
    done = finished(http, alice, job["id"], timeout=30)
    text = logs(http, alice, job["id"])
    assert done["status"] == "cancelled" and "saved" in text, text
    timed = submit(
        http,
        alice,
        {"code": {"repo": "alice/saver"}, "command": ["python", "save.py"], "resources": {"time_limit": 3}},
    )
    done = finished(http, alice, timed["id"], timeout=60)
    text = logs(http, alice, timed["id"])
    assert done["status"] == "timeout" and "saved" in text, text


def test_time_limit_stops_the_job_as_timeout(http: httpx.Client, alice: Account) -> None:
    code_repo(http, alice, "sleepy", {"README.md": "zz"})
    job = submit(
        http,
        alice,
        {"code": {"repo": "alice/sleepy"}, "command": ["sleep", "120"], "resources": {"time_limit": 2}},
    )
    t0 = time.monotonic()
    done = finished(http, alice, job["id"], timeout=60)
    assert done["status"] == "timeout", done
    assert "time limit" in done["message"]
    assert time.monotonic() - t0 < 30
    assert "time limit of 2 s reached" in logs(http, alice, job["id"])


HOG = """\
import time
hoard = []
for i in range(40):
    hoard.append(bytearray(20 * 1024 * 1024))
    print("holding", (i + 1) * 20, "MiB", flush=True)
    time.sleep(0.1)
print("never reached")
"""


def test_memory_limit_stops_the_job(http: httpx.Client, alice: Account) -> None:
    code_repo(http, alice, "hog", {"hog.py": HOG})
    job = submit(
        http,
        alice,
        {"code": {"repo": "alice/hog"}, "command": ["python", "hog.py"], "resources": {"memory": "200M"}},
    )
    done = finished(http, alice, job["id"], timeout=60)
    text = logs(http, alice, job["id"])
    assert done["status"] == "failed" and done["reason"] == "memory", (done, text)
    assert "memory limit exceeded" in done["message"]
    assert "never reached" not in text
    # Stopped by the shim past 200 MiB of resident memory, or by the kernel at the job's control group's
    # 200 MiB (which counts more than resident memory): either way it used most of it.
    assert done["usage"]["max_rss_bytes"] > 150 * 1024**2


PROBE = """\
import json, os, pathlib, socket, sys
report = {}
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()
    report["network"] = True
except OSError:
    report["network"] = False
try:
    pathlib.Path("inputs/d/values.csv").write_text("changed")
    report["inputs_writable"] = True
except OSError:
    report["inputs_writable"] = False
report["platform_home_visible"] = os.path.exists(sys.argv[2])
report["user_home_visible"] = os.path.exists(sys.argv[3])
pathlib.Path("outputs/report.json").write_text(json.dumps(report))
"""


def test_sandbox_hides_the_host_and_keeps_inputs_read_only(
    http: httpx.Client, alice: Account, server: LiveServer, compute_app: FastAPI
) -> None:
    need_binary("bwrap")
    home = str(compute_app.state.settings.home.resolve())
    code_repo(http, alice, "probe", {"probe.py": PROBE})
    dataset(http, alice, "d", {"values.csv": "v\n1\n"})
    dataset(http, alice, "reports", None)
    job = submit(
        http,
        alice,
        {
            "code": {"repo": "alice/probe"},
            "command": ["python", "probe.py", str(server.port), f"{home}/opensci.db", os.environ["HOME"]],
            "inputs": {"d": {"repo": "alice/d"}},
            "output": {"repo": "alice/reports"},
        },
    )
    done = finished(http, alice, job["id"])
    text = logs(http, alice, job["id"])
    assert done["status"] == "succeeded", (done, text)
    assert "sandbox: bubblewrap, network off" in text
    report = http.get(f"/datasets/alice/reports/resolve/{done['output']['commit']}/report.json").json()
    assert report == {
        "network": False,
        "inputs_writable": False,
        "platform_home_visible": False,
        "user_home_visible": False,
    }


DETERMINISTIC = """\
import hashlib, pathlib
data = pathlib.Path("inputs/src/values.csv").read_bytes()
out = pathlib.Path("outputs")
(out / "digest.txt").write_text(hashlib.sha256(data).hexdigest() + "\\n")
(out / "big.bin").write_bytes(hashlib.sha256(data).digest() * 400_000)
"""


def test_rerun_uses_the_same_commits_and_reproduces_the_outputs_byte_for_byte(
    http: httpx.Client, alice: Account
) -> None:
    code = code_repo(http, alice, "repro", {"run.py": DETERMINISTIC})
    data = dataset(http, alice, "src", {"values.csv": "v\n1\n2\n"})
    dataset(http, alice, "repro-out", None)
    spec = {
        "code": {"repo": "alice/repro"},
        "command": ["python", "run.py"],
        "inputs": {"src": {"repo": "alice/src"}},
        "output": {"repo": "alice/repro-out"},
    }
    first = finished(http, alice, submit(http, alice, spec)["id"])
    assert first["status"] == "succeeded", logs(http, alice, first["id"])
    # Code and data move on; the rerun must not see it.
    committed(http, alice, "alice/repro", {"run.py": "raise SystemExit('new code')\n"})
    committed(http, alice, "alice/src", {"values.csv": "v\n9\n"})
    r = http.post(f"{API}/jobs/{first['id']}/rerun", headers=alice.headers)
    assert r.status_code == 201, r.text
    again = finished(http, alice, r.json()["id"])
    assert again["status"] == "succeeded", logs(http, alice, again["id"])
    assert again["rerun_of"] == first["id"]
    assert again["code"]["commit"] == code and again["inputs"]["src"]["commit"] == data
    a, b = first["output"]["commit"], again["output"]["commit"]
    assert a != b  # a new commit, naming the rerun
    for path in ("digest.txt", "big.bin"):
        x = http.get(f"/datasets/alice/repro-out/resolve/{a}/{path}").content
        y = http.get(f"/datasets/alice/repro-out/resolve/{b}/{path}").content
        assert x == y and len(x) > 0
    tree = http.get(f"{API}/repos/alice/repro-out/tree/{b}", headers=alice.headers).json()
    big = next(e for e in tree["entries"] if e["path"] == "big.bin")
    assert big["lfs"] is not None  # 12.8 MB: stored in the blob store, deduplicated with the first run's


def test_requirements_install_once_and_are_recorded(http: httpx.Client, alice: Account) -> None:
    code_repo(http, alice, "needs-six", {"run.py": "import six\nprint('six', six.__version__)\n"})
    spec = {
        "code": {"repo": "alice/needs-six"},
        "command": ["python", "run.py"],
        "env": {"requirements": ["six==1.16.0"]},
    }
    first = finished(http, alice, submit(http, alice, spec)["id"], timeout=300)
    text = logs(http, alice, first["id"])
    assert first["status"] == "succeeded", text
    assert "six 1.16.0" in text
    assert "six==1.16.0" in first["environment"]["packages"]
    second = finished(http, alice, submit(http, alice, spec)["id"], timeout=120)
    assert second["environment"]["key"] == first["environment"]["key"]
    assert "(cached)" in logs(http, alice, second["id"])
