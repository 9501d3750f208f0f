"""API latency: OpenSci's REST endpoints against a trivial uvicorn app measured in the same run.

The baseline is the cheapest possible answer on this machine (a one-line ASGI app returning a fixed JSON
body, served by the same uvicorn); the figures are ratios to it, so a noisy shared machine affects both
sides alike. Run: `.venv/bin/python benchmarks/api_latency.py [--requests N]`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _server import BIN, Server, free_port, wait_healthy

BASELINE_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b'{"status":"ok"}'})
"""


def measure(client: httpx.Client, path: str, n: int) -> list[float]:
    for _ in range(20):  # warm-up
        client.get(path).raise_for_status()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        client.get(path).raise_for_status()
        times.append(time.perf_counter() - t)
    return times


def p(times: list[float], q: float) -> float:
    return statistics.quantiles(times, n=100)[int(q) - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    n = parser.parse_args().requests

    tmp = Path(subprocess.check_output(["mktemp", "-d"], text=True).strip())
    (tmp / "baseline_app.py").write_text(BASELINE_APP)
    port = free_port()
    base = subprocess.Popen(
        [
            str(BIN / "uvicorn"),
            "baseline_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", "/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            baseline = measure(c, "/", n)
        with (
            Server() as server,
            httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}) as c,
        ):
            cases = {
                "GET /api/health": "/api/health",
                "GET repo metadata": "/api/v1/repos/demo-lab/hello-science",
                "GET repo list (search)": "/api/v1/repos?q=demo&kind=code",
                "GET commits": "/api/v1/repos/demo-lab/hello-science/commits",
                "GET tree": "/api/v1/repos/demo-lab/hello-science/tree/main/hello_science",
                "GET raw file": "/api/v1/repos/demo-lab/hello-science/raw/main/README.md",
                "GET whoami (token auth)": "/api/v1/user",
            }
            results = {label: measure(c, path, n) for label, path in cases.items()}
    finally:
        base.terminate()
        base.wait(10)

    b50 = p(baseline, 50)
    print(f"API latency, {n} sequential keep-alive requests each (ms; ratio = p50 / baseline p50)")
    print(f"{'endpoint':28} {'p50':>8} {'p95':>8} {'req/s':>8} {'ratio':>7}")
    for label, times in {"baseline (trivial ASGI)": baseline, **results}.items():
        p50, p95, rate = p(times, 50), p(times, 95), n / sum(times)
        print(f"{label:28} {p50:8.2f} {p95:8.2f} {rate:8.0f} {p50 / b50:7.2f}")


if __name__ == "__main__":
    main()
