"""Jobs through the Slurm executor against `sbatch` of the same command directly, in one run.

Needs a Slurm cluster whose nodes share the job directory with this machine (here: the single-node one of
`scripts/slurm-up.sh`; `--dir` puts the job directories elsewhere). Both sides run
`python3 -c "import time; print(time.time())"`, one job at a time, `--runs` times, alternating:

1. executor: a job directory as the scheduler prepares it (job.json and the shim), `SlurmExecutor.submit`,
   then `poll` every `--interval` seconds until it reports `ended` (squeue while the job is queued or
   running, then the accounting or scontrol for how it ended);
2. baseline: `sbatch --parsable` of a script running the command itself with the same resources, then
   `squeue` every `--interval` seconds until the job has left the running states.

Reported: submit-to-running (the time the command printed, minus the moment before the submission) and
submit-to-completion (until the end is observed), medians, and their ratios. The difference is what the
executor adds: the shim (a Python start, /proc polling, status files) and its end-of-job lookups.

Run: `.venv/bin/python benchmarks/compute_slurm.py [--runs 10] [--interval 0.1] [--dir DIR]`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from opensci.compute.executors.base import Launch, Resources
from opensci.compute.executors.slurm import RUNNING, SlurmExecutor, sbatch_options
from opensci.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SHIM = ROOT / "src" / "opensci" / "compute" / "shim.py"
COMMAND = ["python3", "-c", "import time; print(time.time())"]
RESOURCES = Resources(cpus=1, memory_bytes=256 * 1024**2, time_limit=300)
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def printed_time(path: Path) -> float:
    for line in path.read_text().splitlines():
        try:
            return float(line.strip())
        except ValueError:
            continue
    raise RuntimeError(f"no time printed in {path}: {path.read_text()!r}")


def job_dir(base: Path, job_id: int) -> Launch:
    jd = base / f"executor-{job_id}"
    (jd / "work").mkdir(parents=True)
    spec = {
        "job_id": job_id,
        "argv": COMMAND,
        "workdir": str(jd / "work"),
        "env": ENV,
        "time_limit": RESOURCES.time_limit,
        "memory_bytes": RESOURCES.memory_bytes,
        "cpus": RESOURCES.cpus,
        "kill_grace": 3,
    }
    (jd / "job.json").write_text(json.dumps(spec))
    shutil.copyfile(SHIM, jd / "shim.py")
    return Launch(job_id, jd, [sys.executable, str(jd / "shim.py"), str(jd)], RESOURCES, ENV)


def through_executor(
    executor: SlurmExecutor, base: Path, job_id: int, interval: float
) -> tuple[float, float]:
    launch = job_dir(base, job_id)
    t0 = time.time()
    handle = executor.submit(launch)
    while (seen := executor.poll(handle, launch)).phase != "ended":
        if seen.phase == "lost":
            raise RuntimeError(f"Slurm job {handle} was lost: {seen.detail}")
        time.sleep(interval)
    ended = time.time()
    status = json.loads(launch.status_path.read_text())
    if status["exit_code"] != 0:
        raise RuntimeError(f"the job failed: {status}")
    return printed_time(launch.log_path) - t0, ended - t0


def through_sbatch(base: Path, job_id: int, interval: float) -> tuple[float, float]:
    jd = base / f"sbatch-{job_id}"
    jd.mkdir()
    script = jd / "job.sh"
    script.write_text("#!/bin/sh\nexec " + shlex.join(COMMAND) + "\n")
    r = RESOURCES
    options = sbatch_options(r.cpus, r.memory_bytes, r.time_limit, r.gpus, 60)
    t0 = time.time()
    out = subprocess.run(
        ["sbatch", "--parsable", f"--output={jd / 'out'}", f"--chdir={jd}", *options, str(script)],
        capture_output=True,
        text=True,
        check=True,
    )
    handle = out.stdout.strip().split(";")[0]
    while True:
        state = subprocess.run(
            ["squeue", "--noheader", f"--jobs={handle}", "--states=all", "--format=%T"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        if state and state not in RUNNING and state != "PENDING":
            break
        time.sleep(interval)
    ended = time.time()
    if state != "COMPLETED":
        raise RuntimeError(f"Slurm job {handle} ended {state}")
    return printed_time(jd / "out") - t0, ended - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between two looks at a job")
    parser.add_argument("--dir", type=Path, default=None, help="where job directories go (shared storage)")
    args = parser.parse_args()
    if subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        sys.exit("no Slurm cluster answers: start one with scripts/slurm-up.sh (as root)")
    base = Path(tempfile.mkdtemp(prefix="opensci-bench-slurm-", dir=args.dir))
    executor = SlurmExecutor(Settings(home=base / "home", _env_file=None))  # type: ignore[call-arg]
    try:
        through_executor(executor, base, 0, args.interval)  # warm-up: caches, first accounting records
        through_sbatch(base, 0, args.interval)
        ours, theirs = [], []
        for i in range(1, args.runs + 1):
            ours.append(through_executor(executor, base, i, args.interval))
            theirs.append(through_sbatch(base, i, args.interval))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    nodes = subprocess.run(["sinfo", "-h", "-o", "%D %c"], capture_output=True, text=True).stdout.split()
    print(
        f"Slurm executor vs sbatch, {args.runs} runs each, poll every {args.interval:g} s, nodes/CPUs {nodes}"
    )
    for i, what in enumerate(("submit-to-running", "submit-to-completion")):
        a = statistics.median(x[i] for x in ours)
        b = statistics.median(x[i] for x in theirs)
        print(
            f"{what}: executor median {a * 1000:.0f} ms (max {max(x[i] for x in ours) * 1000:.0f} ms) "
            f"vs sbatch {b * 1000:.0f} ms = {a / b:.2f}x"
        )


if __name__ == "__main__":
    main()
