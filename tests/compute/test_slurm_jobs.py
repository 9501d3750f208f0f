"""Jobs through the API on a real Slurm cluster (slurmctld + slurmd started by `make test`): the scheduler
submits with sbatch, watches with squeue/sacct, cancels with scancel; outputs are committed as for local
jobs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.api_helpers import API
from tests.compute.conftest import code_repo, dataset, finished, logs, submit, wait
from tests.compute.test_slurm_executor import cluster, slurm_cluster  # noqa: F401 (fixtures)
from tests.conftest import Account

pytestmark = pytest.mark.usefixtures("cluster")


@pytest.fixture
def app(app: FastAPI) -> Iterator[FastAPI]:
    app.state.settings.compute_executors = "local,slurm"
    yield app


WORK = """\
import os, pathlib, socket
rows = pathlib.Path("inputs/table/t.csv").read_text().splitlines()
pathlib.Path("outputs/count.txt").write_text(f"{len(rows) - 1}\\n")
print("counted on", socket.gethostname(), "in slurm job", os.environ.get("SLURM_JOB_ID"), flush=True)
"""


def on_slurm(
    http: httpx.Client, who: Account, code: str, command: list[str], output: str
) -> tuple[dict[str, Any], str]:
    """Run a job on Slurm with `alice/table` as its input `table`; the finished job and its log."""
    job = submit(
        http,
        who,
        {
            "code": {"repo": code},
            "command": command,
            "inputs": {"table": {"repo": "alice/table"}},
            "output": {"repo": output},
            "executor": "slurm",
            "resources": {"cpus": 1, "memory": "256M", "time_limit": 120},
        },
    )
    return finished(http, who, job["id"], timeout=120), logs(http, who, job["id"])


def test_a_slurm_job_commits_its_outputs(http: httpx.Client, alice: Account) -> None:
    code_repo(http, alice, "counter", {"count.py": WORK})
    dataset(http, alice, "table", {"t.csv": "a\n1\n2\n3\n"})
    dataset(http, alice, "counts", None)
    done, text = on_slurm(http, alice, "alice/counter", ["python", "count.py"], "alice/counts")
    assert done["status"] == "succeeded", (done, text)
    assert done["executor"] == "slurm"
    assert "in slurm job" in text and "in slurm job None" not in text
    raw = http.get(f"/datasets/alice/counts/resolve/{done['output']['commit']}/count.txt")
    assert raw.text == "3\n"


def test_a_slurm_job_is_cancelled_with_scancel(http: httpx.Client, alice: Account) -> None:
    code_repo(http, alice, "sleeper", {"README.md": "z"})
    job = submit(
        http,
        alice,
        {
            "code": {"repo": "alice/sleeper"},
            "command": ["sh", "-c", "echo sleeping; sleep 300"],
            "executor": "slurm",
            "resources": {"memory": "128M", "time_limit": 600},
        },
    )
    wait(http, alice, job["id"], lambda j: "sleeping" in logs(http, alice, j["id"]), timeout=90)
    t0 = time.monotonic()
    assert http.post(f"{API}/jobs/{job['id']}/cancel", headers=alice.headers).status_code == 200
    done = finished(http, alice, job["id"], timeout=60)
    assert done["status"] == "cancelled", done
    assert time.monotonic() - t0 < 30


SNOOP = """\
import json, os, pathlib, sys
r = {"platform_home_visible": os.path.exists(sys.argv[1] + "/git"), "uid": os.getuid()}
try:
    pathlib.Path("inputs/table/t.csv").write_text("changed")
    r["inputs_writable"] = True
except OSError:
    r["inputs_writable"] = False
pathlib.Path("outputs/r.json").write_text(json.dumps(r))
"""


def test_a_slurm_job_runs_in_the_sandbox_on_its_node(
    http: httpx.Client, alice: Account, app: FastAPI
) -> None:
    home = str(app.state.settings.home.resolve())
    code_repo(http, alice, "snoop", {"snoop.py": SNOOP})
    dataset(http, alice, "table", {"t.csv": "a\n1\n"})
    dataset(http, alice, "found", None)
    done, text = on_slurm(http, alice, "alice/snoop", ["python", "snoop.py", home], "alice/found")
    assert done["status"] == "succeeded", (done, text)
    assert "sandbox: bubblewrap, network off" in text
    r = http.get(f"/datasets/alice/found/resolve/{done['output']['commit']}/r.json").json()
    uid = app.state.settings.compute_sandbox_uid_base + done["id"]  # a host user of the job's own
    assert r == {"platform_home_visible": False, "uid": uid, "inputs_writable": False}, r


def test_a_slurm_job_has_a_process_limit_of_its_own(http: httpx.Client, alice: Account, app: FastAPI) -> None:
    """No cgroups of ours on Slurm nodes (Slurm's own are there): the job's own host user, with
    RLIMIT_NPROC, bounds its processes and threads."""
    app.state.settings.compute_max_processes = 64
    threads = (
        "import threading, time\nfor _ in range(300): threading.Thread(target=time.sleep, args=(5,)).start()"
    )
    code_repo(http, alice, "threads", {"t.py": threads})
    dataset(http, alice, "table", {"t.csv": "a\n1\n"})
    dataset(http, alice, "sink", None)
    done, text = on_slurm(http, alice, "alice/threads", ["python", "t.py"], "alice/sink")
    assert done["status"] == "failed" and "can't start new thread" in text, (done, text)
