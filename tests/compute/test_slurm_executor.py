"""The Slurm executor against a real single-node Slurm (scripts/slurm-up.sh, which `make test` runs).

Each test writes a job directory as the scheduler does (job.json and a copy of the shim), submits the shim
through the executor and watches it with `poll` until Slurm is done with it. slurmd runs on this machine, so
pytest's temporary directories are shared storage here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from opensci.compute.executors import ExecutorError, Launch, Observation, Resources
from opensci.compute.executors.base import read_json
from opensci.compute.executors.slurm import SlurmExecutor, batch_script, sbatch_options
from opensci.settings import Settings
from tests.conftest import need

ROOT = Path(__file__).parents[2]
SHIM = ROOT / "src" / "opensci" / "compute" / "shim.py"
SLURM_UP = ROOT / "scripts" / "slurm-up.sh"
MIB = 1024**2


def _slurm_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    states = r.stdout.split()
    return r.returncode == 0 and any(
        s.rstrip("*") in ("idle", "mixed", "allocated", "completing") for s in states
    )


@pytest.fixture(scope="session")
def slurm_cluster() -> bool:
    """Whether a Slurm cluster answers, bringing up the single-node one first when we can (root)."""
    if not _slurm_answers() and os.geteuid() == 0 and Path("/usr/sbin/slurmctld").exists():
        subprocess.run([str(SLURM_UP)], capture_output=True, timeout=300)
    return _slurm_answers()


@pytest.fixture
def cluster(slurm_cluster: bool) -> None:
    need(slurm_cluster, "no Slurm cluster answers (make test starts one with scripts/slurm-up.sh, as root)")


@pytest.fixture
def make_executor(tmp_path: Path) -> Callable[..., SlurmExecutor]:
    def make(**overrides: Any) -> SlurmExecutor:
        settings = Settings(home=tmp_path / "home", _env_file=None, **overrides)  # type: ignore[call-arg]
        return SlurmExecutor(settings)

    return make


@pytest.fixture
def executor(cluster: None, make_executor: Callable[..., SlurmExecutor]) -> SlurmExecutor:
    return make_executor()


@pytest.fixture
def submitted(executor: SlurmExecutor) -> Iterator[list[str]]:
    """Handles to scancel at the end, whatever the test did."""
    handles: list[str] = []
    yield handles
    if handles:
        subprocess.run(["scancel", *handles], capture_output=True, timeout=30)


_ids = iter(range(1, 10**6))


def job(
    tmp_path: Path,
    argv: list[str],
    *,
    time_limit: int = 60,
    memory_bytes: int = 512 * MIB,
    cpus: int = 1,
    shim_time_limit: int | None = None,
    shim_memory_bytes: int | None = None,
    python: str = sys.executable,
) -> Launch:
    """A job directory as the scheduler prepares it: job.json, the shim, an empty work dir. The shim's own
    limits default to the ones given to Slurm; tests of Slurm's enforcement give the shim larger ones."""
    job_id = os.getpid() * 1000 + next(_ids)
    jd = tmp_path / "jobs" / str(job_id)
    (jd / "work").mkdir(parents=True)
    spec = {
        "job_id": job_id,
        "argv": argv,
        "workdir": str(jd / "work"),
        "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"},
        "time_limit": shim_time_limit or time_limit,
        "memory_bytes": shim_memory_bytes or memory_bytes,
        "cpus": cpus,
        "kill_grace": 2,
    }
    (jd / "job.json").write_text(json.dumps(spec))
    shutil.copyfile(SHIM, jd / "shim.py")
    return Launch(
        job_id=job_id,
        job_dir=jd,
        argv=[python, str(jd / "shim.py"), str(jd)],
        resources=Resources(cpus=cpus, memory_bytes=memory_bytes, time_limit=time_limit),
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
    )


def wait(
    executor: SlurmExecutor, handle: str, launch: Launch, phases: set[str], timeout: float = 60
) -> Observation:
    deadline = time.monotonic() + timeout
    seen = executor.poll(handle, launch)
    while seen.phase not in phases:
        if time.monotonic() > deadline:
            out = (
                (launch.job_dir / "slurm.out").read_text(errors="replace")
                if (launch.job_dir / "slurm.out").exists()
                else ""
            )
            raise AssertionError(f"Slurm job {handle} still {seen} after {timeout} s; slurm.out: {out}")
        time.sleep(0.2)
        seen = executor.poll(handle, launch)
    return seen


def sacct(handle: str, fields: str) -> list[str]:
    """Fields of the accounting record of a finished job (it arrives in parts, shortly after the end)."""
    deadline = time.monotonic() + 30
    while True:
        r = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-j", handle, "-o", f"JobName,State,{fields}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        line = r.stdout.strip().splitlines()[0].split("|") if r.stdout.strip() else ["", ""]
        complete = line[0] not in ("", "allocation") and line[1] not in ("", "PENDING", "RUNNING")
        if complete or time.monotonic() > deadline:
            return line[2:]
        time.sleep(0.5)


def node_cpus() -> int:
    r = subprocess.run(["sinfo", "-h", "-p", "debug", "-o", "%c"], capture_output=True, text=True, timeout=20)
    return int(r.stdout.split()[0])


# --- mapping the job to Slurm (no cluster needed) -----------------------------------------------------------


def test_resources_become_sbatch_options() -> None:
    options = sbatch_options(4, 3 * 1024**3 + 1, 3600, 2, 60)
    assert "--cpus-per-task=4" in options
    assert "--mem=3073M" in options  # rounded up to the next MiB
    assert "--time=61" in options  # minutes: the limit plus the margin, rounded up
    assert "--gres=gpu:2" in options
    assert "--time=1" in sbatch_options(1, MIB, 1, 0, 0)
    assert "--time=2" in sbatch_options(1, MIB, 61, 0, 0)
    assert not any(o.startswith("--gres") for o in sbatch_options(1, MIB, 60, 0, 0))


def test_batch_script_gives_the_shim_exactly_its_environment_and_arguments(tmp_path: Path) -> None:
    show = "import json, os, sys; print(json.dumps([dict(os.environ), sys.argv[1:]]))"
    args = ["dir with 'quotes' and $HOME", "a;b", "$(touch pwned)"]
    launch = Launch(
        1, tmp_path, [sys.executable, "-c", show, *args], Resources(),
        env={"PATH": "/bin:/usr/bin", "ODD": "a b;$(touch pwned) 'x'"},
    )  # fmt: skip
    script = tmp_path / "slurm.sh"
    script.write_text(batch_script(launch))
    out = subprocess.run(
        ["sh", str(script)], capture_output=True, env={"LEAK": "1"}, cwd=tmp_path, timeout=30
    )
    env, argv = json.loads(out.stdout)
    assert argv == args
    assert env["ODD"] == "a b;$(touch pwned) 'x'" and env["PATH"] == "/bin:/usr/bin"
    assert not (tmp_path / "pwned").exists()


# --- against the cluster ------------------------------------------------------------------------------------


def test_a_job_runs_and_its_log_and_status_are_in_the_job_dir(
    executor: SlurmExecutor, submitted: list[str], tmp_path: Path
) -> None:
    launch = job(
        tmp_path,
        ["python3", "-c", "import os; print('hello from', os.getcwd()); open('out.txt', 'w').write('42')"],
        cpus=1,
        memory_bytes=300 * MIB,
        time_limit=120,
    )
    handle = executor.submit(launch)
    submitted.append(handle)
    assert handle.isdigit()
    seen = wait(executor, handle, launch, {"ended"})
    assert seen.reason is None and seen.exit_code == 0, seen
    status = read_json(launch.status_path)
    assert status is not None and status["exit_code"] == 0, status
    assert f"hello from {launch.job_dir / 'work'}" in launch.log_path.read_text()
    assert (launch.job_dir / "work" / "out.txt").read_text() == "42"
    name, cpus, mem, limit, state = sacct(handle, "JobName,ReqCPUS,ReqMem,Timelimit,State")
    assert name == f"opensci-{launch.job_id}" and cpus == "1" and mem == "300M", (name, cpus, mem)
    assert limit == "00:03:00" and state == "COMPLETED", (limit, state)  # 120 s + 60 s margin


def test_a_failing_command_reports_its_exit_code(
    executor: SlurmExecutor, submitted: list[str], tmp_path: Path
) -> None:
    launch = job(tmp_path, ["sh", "-c", "echo about to fail; exit 3"])
    handle = executor.submit(launch)
    submitted.append(handle)
    seen = wait(executor, handle, launch, {"ended"})
    status = read_json(launch.status_path)
    assert status is not None and status["exit_code"] == 3, status
    assert seen.phase == "ended" and seen.reason is None  # the shim ran to its end: Slurm says COMPLETED
    assert "about to fail" in launch.log_path.read_text()


@pytest.mark.parametrize("use_sacct", [True, False], ids=["sacct", "scontrol"])
def test_a_shim_that_cannot_start_is_a_failed_slurm_job(
    cluster: None,
    make_executor: Callable[..., SlurmExecutor],
    submitted: list[str],
    tmp_path: Path,
    use_sacct: bool,
) -> None:
    executor = make_executor(compute_slurm_use_sacct=use_sacct)
    launch = job(tmp_path, ["true"], python=str(tmp_path / "no-such-python"))
    handle = executor.submit(launch)
    submitted.append(handle)
    seen = wait(executor, handle, launch, {"ended"})
    assert seen.reason == "failed" and seen.exit_code == 127, seen
    assert "no-such-python" in seen.detail  # the tail of slurm.out: what the shell said
    assert not launch.status_path.exists()


def test_cancel_stops_the_whole_job_within_seconds(
    executor: SlurmExecutor, submitted: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENSCI_SERVER_ONLY", "secret")  # the server's environment stays on the server
    launch = job(tmp_path, ["sh", "-c", "sleep 300 & sleep 301; wait"])
    handle = executor.submit(launch)
    submitted.append(handle)
    wait(executor, handle, launch, {"running"})
    deadline = time.monotonic() + 30
    while read_json(launch.running_path) is None:
        assert time.monotonic() < deadline, "the shim never started the command"
        time.sleep(0.1)
    running = read_json(launch.running_path)
    assert running is not None
    shim_env = Path(f"/proc/{running['shim_pid']}/environ").read_bytes().split(b"\0")
    assert b"PATH=/usr/local/bin:/usr/bin:/bin" in shim_env
    assert not [v for v in shim_env if v.startswith(b"OPENSCI_SERVER_ONLY")]
    started = time.monotonic()
    executor.cancel(handle, launch)
    seen = wait(executor, handle, launch, {"ended"}, timeout=30)
    took = time.monotonic() - started
    assert seen.reason == "cancelled", seen
    assert took < 15, took
    status = read_json(launch.status_path)
    assert status is not None and status["reason"] == "cancelled", status
    assert not os.path.exists(f"/proc/{running['pid']}")
    sleepers = subprocess.run(
        ["pgrep", "-f", "^sleep 30[01]$"], capture_output=True, text=True
    ).stdout.split()
    mine = [p for p in sleepers if Path(f"/proc/{p}/cwd").resolve() == launch.job_dir / "work"]
    assert not mine, "processes of the cancelled job survived"
    executor.cancel(handle, launch)  # cancelling a finished job is not an error


def test_the_shim_stops_a_job_at_its_own_time_limit(
    executor: SlurmExecutor, submitted: list[str], tmp_path: Path
) -> None:
    launch = job(tmp_path, ["sleep", "120"], time_limit=2)
    handle = executor.submit(launch)
    submitted.append(handle)
    started = time.monotonic()
    seen = wait(executor, handle, launch, {"ended"}, timeout=60)
    assert time.monotonic() - started < 30
    status = read_json(launch.status_path)
    assert status is not None and status["reason"] == "timeout", status
    assert seen.reason is None  # the margin kept Slurm's own limit out of it


def test_slurm_enforces_the_time_limit(
    cluster: None, make_executor: Callable[..., SlurmExecutor], submitted: list[str], tmp_path: Path
) -> None:
    """Slurm's own limit, for when the shim cannot act (here: it is told a longer one). Slurm counts in
    minutes and checks every 30 s, so this takes 60 to 100 s."""
    executor = make_executor(compute_slurm_time_margin_seconds=0)
    launch = job(tmp_path, ["sleep", "600"], time_limit=30, shim_time_limit=600)
    handle = executor.submit(launch)
    submitted.append(handle)
    seen = wait(executor, handle, launch, {"ended"}, timeout=150)
    assert seen.reason == "timeout", seen
    assert "time limit" in seen.detail.lower(), seen.detail
    assert sacct(handle, "State")[0] == "TIMEOUT"


def test_slurm_enforces_the_memory_limit(
    executor: SlurmExecutor, submitted: list[str], tmp_path: Path
) -> None:
    """The job's cgroup holds it to --mem: an allocation far past it is killed by the kernel at once,
    before the shim (told a larger limit here) could see it."""
    grab = "import time; x = b'x' * (600 * 1024 * 1024); time.sleep(30)"
    launch = job(tmp_path, ["python3", "-c", grab], memory_bytes=150 * MIB, shim_memory_bytes=8 * 1024**3)
    handle = executor.submit(launch)
    submitted.append(handle)
    seen = wait(executor, handle, launch, {"ended"}, timeout=60)
    assert seen.reason == "memory", seen
    status = read_json(launch.status_path)
    assert status is not None and status["signal"] == "SIGKILL", status
    assert sacct(handle, "State")[0] == "OUT_OF_MEMORY"


def test_a_job_waits_pending_while_the_node_is_full(
    executor: SlurmExecutor, submitted: list[str], tmp_path: Path
) -> None:
    cpus = node_cpus()
    big = job(tmp_path, ["sleep", "300"], cpus=cpus, memory_bytes=64 * MIB)
    big_handle = executor.submit(big)
    submitted.append(big_handle)
    wait(executor, big_handle, big, {"running"})
    small = job(tmp_path, ["true"], cpus=1, memory_bytes=64 * MIB)
    handle = executor.submit(small)
    submitted.append(handle)
    deadline = time.monotonic() + 10
    seen = executor.poll(handle, small)
    while not seen.detail and time.monotonic() < deadline:  # Slurm names the reason once it tried
        time.sleep(0.2)
        seen = executor.poll(handle, small)
    assert seen.phase == "pending", seen
    assert "Resources" in seen.detail or "Priority" in seen.detail, seen.detail
    executor.cancel(handle, small)  # a pending job is cancelled too, and never ran
    seen = wait(executor, handle, small, {"ended"}, timeout=30)
    assert seen.reason == "cancelled" and not small.running_path.exists(), seen
    executor.cancel(big_handle, big)
    assert wait(executor, big_handle, big, {"ended"}, timeout=30).reason == "cancelled"


def test_unknown_jobs_are_lost_and_refusals_are_errors(
    executor: SlurmExecutor, make_executor: Callable[..., SlurmExecutor], tmp_path: Path
) -> None:
    launch = job(tmp_path, ["true"])
    seen = executor.poll("999999999", launch)
    assert seen.phase == "lost", seen
    with pytest.raises(ExecutorError, match="not a Slurm job id"):
        executor.poll("12; rm -rf /", launch)
    too_big = job(tmp_path, ["true"], cpus=10_000)
    with pytest.raises(ExecutorError, match="sbatch refused"):
        executor.submit(too_big)
    with pytest.raises(ExecutorError, match=r"(?i)unknown-partition|invalid partition"):
        make_executor(compute_slurm_partition="unknown-partition").submit(job(tmp_path, ["true"]))
    with pytest.raises(ExecutorError, match="OPENSCI_COMPUTE_SLURM_BIN_DIR"):
        make_executor(compute_slurm_bin_dir=str(tmp_path / "nowhere")).submit(job(tmp_path, ["true"]))
