"""A real OpenSci server in a subprocess for benchmarks: its own OPENSCI_HOME, demo seeded, a write token."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="opensci-bench-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "OPENSCI_HOME": str(self.home),
            "OPENSCI_BASE_URL": self.url,
            "OPENSCI_LOG_LEVEL": "warning",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""

    def __enter__(self) -> Server:
        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(BIN / "opensci"), *args], env=self.env, check=True, capture_output=True, text=True
            )

        run("demo", "seed")
        self.token = (
            run("token", "create", "--user", "admin", "--scope", "write").stdout.strip().splitlines()[-1]
        )
        self.proc = subprocess.Popen(
            [str(BIN / "opensci"), "serve", "--port", str(self.port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_healthy(self.url)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def wait_healthy(url: str, path: str = "/api/health") -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")
