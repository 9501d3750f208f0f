"""Jobs through the local executor against starting the same command directly, in one run.

A real server (`benchmarks/_server.py`: `opensci serve` in a subprocess, its own OPENSCI_HOME, the
scheduler inside, the local executor with its sandbox when bubblewrap works) and a code repository with
one file. Both sides run `python -c "import time; print(time.time())"`: the command prints the moment it
runs, so both latencies end at the same event.

1. Submit-to-running latency, `--runs` times one job at a time: from just before `POST /api/v1/jobs` to
   the moment the command runs (checkout, environment lookup, sandbox and shim included). Baseline: the
   same command started with `subprocess.Popen` from this process.
2. Dispatch throughput: `--jobs` jobs submitted at once, from the first submit until the last has
   ended (outputs recorded), in jobs per second. Baseline: the same commands run one after another
   with `subprocess.run`.

Run: `.venv/bin/python benchmarks/compute_local.py [--runs 10] [--jobs 40]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._server import Server  # noqa: E402

COMMAND = ["python", "-c", "import time; print(time.time())"]


def printed_time(text: str) -> float:
    for line in text.splitlines():
        try:
            return float(line.strip())
        except ValueError:
            continue
    raise RuntimeError(f"no time printed in {text!r}")


def wait_final(http: httpx.Client, job_id: int, timeout: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled", "timeout"):
            return job
        time.sleep(0.01)
    raise RuntimeError(f"job {job_id} did not end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=40)
    args = parser.parse_args()
    os.environ["OPENSCI_COMPUTE_MAX_RUNNING_PER_USER"] = "0"
    with Server() as server:
        headers = {"Authorization": f"Bearer {server.token}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
            r = http.post("/api/v1/repos", json={"name": "bench-code", "kind": "code"})
            r.raise_for_status()
            files = [("files", ("README.md", b"benchmark", "text/plain"))]
            http.post(
                "/api/v1/repos/admin/bench-code/commits", data={"message": "x"}, files=files
            ).raise_for_status()
            spec = {"code": {"repo": "admin/bench-code"}, "command": COMMAND}
            job = http.post("/api/v1/jobs", json=spec).json()  # warm-up: builds the empty environment
            warm = wait_final(http, job["id"])
            sandbox = (
                "bubblewrap"
                if "sandbox: bubblewrap" in http.get(f"/api/v1/jobs/{job['id']}/logs").text
                else "none"
            )
            assert warm["status"] == "succeeded", warm

            latencies, direct = [], []
            for _ in range(args.runs):
                t0 = time.time()
                job = http.post("/api/v1/jobs", json=spec).json()
                wait_final(http, job["id"])
                latencies.append(printed_time(http.get(f"/api/v1/jobs/{job['id']}/logs").text) - t0)
                t0 = time.time()
                out = subprocess.run(
                    [sys.executable, *COMMAND[1:]], capture_output=True, text=True, check=True
                )
                direct.append(printed_time(out.stdout) - t0)

            t0 = time.monotonic()
            ids = [http.post("/api/v1/jobs", json=spec).json()["id"] for _ in range(args.jobs)]
            for job_id in ids:
                assert wait_final(http, job_id)["status"] == "succeeded"
            through = args.jobs / (time.monotonic() - t0)
            t0 = time.monotonic()
            for _ in range(args.jobs):
                subprocess.run([sys.executable, *COMMAND[1:]], capture_output=True, check=True)
            baseline = args.jobs / (time.monotonic() - t0)

    lat, base = statistics.median(latencies), statistics.median(direct)
    print(f"local executor, sandbox: {sandbox}, {os.cpu_count()} CPUs")
    print(
        f"submit-to-running latency: median {lat * 1000:.0f} ms (min {min(latencies) * 1000:.0f} ms) vs "
        f"direct start {base * 1000:.0f} ms = {lat / base:.1f}x"
    )
    print(
        f"dispatch throughput: {through:.2f} jobs/s vs {baseline:.2f} direct runs/s "
        f"= {through / baseline:.2f}x"
    )


if __name__ == "__main__":
    main()
