"""The job shim: runs one job's command where an executor started it (standard library only).

    python shim.py JOB_DIR

Reads `JOB_DIR/job.json`, runs its `argv` in `workdir` with `env`, appends everything the command prints
to `JOB_DIR/log`, and enforces the job's limits itself: the time limit, and the memory limit as the
resident memory of the whole process tree (checked four times a second). It writes `running.json` when
the command has started and `status.json` (atomically) when it has ended. SIGTERM, SIGINT or SIGHUP (a
cancel, `scancel`) stop the whole process tree: TERM first, KILL after the grace period.

It depends on nothing but Python's standard library so that any node of a cluster can run it with the
interpreter that shares the job's storage.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = 0.25


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _processes() -> dict[int, tuple[int, int]]:
    """pid → (parent pid, resident pages) of every process this /proc shows."""
    out: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        try:
            out[int(entry.name)] = (int(fields[1]), int(fields[21]))
        except (IndexError, ValueError):
            continue
    return out


def tree(root: int) -> tuple[list[int], int]:
    """The pids of `root` and all its descendants, and their resident memory in bytes."""
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            found.append(pid)
            todo.extend(children.get(pid, ()))
    return found, sum(procs[p][1] for p in found) * PAGE


def signal_tree(root: int, sig: int) -> None:
    """Send `sig` to the process group of `root` and to every descendant (some may have left the group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(root, sig)
    for pid in tree(root)[0]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


# What the executor's machine tells a job about itself: Slurm's job variables and the GPUs it assigned.
PASS_THROUGH = ("SLURM_", "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")


def passed_through(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k.startswith(PASS_THROUGH)}


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class Run:
    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir
        self.spec: dict[str, Any] = json.loads((job_dir / "job.json").read_text())
        self.log = open(job_dir / "log", "ab", buffering=0)  # noqa: SIM115 (closed in main)
        self.reason: str | None = None
        self.message = ""
        self.stop_at: float | None = None
        self.peak = 0
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None

    def note(self, text: str) -> None:
        self.log.write(f"[opensci] {text}\n".encode())

    def stop(self, reason: str, message: str) -> None:
        """Begin stopping the command (TERM now, KILL after the grace period); the first reason wins."""
        with self.lock:
            if self.reason is not None or self.proc is None:
                return
            self.reason, self.message = reason, message
            self.stop_at = time.monotonic() + float(self.spec.get("kill_grace", 3))
        self.note(message)
        signal_tree(self.proc.pid, signal.SIGTERM)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stop("cancelled", f"cancelled ({signal.Signals(signum).name}): stopping the job")

    def watch(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + float(self.spec["time_limit"])
        limit = int(self.spec["memory_bytes"])
        while self.proc.poll() is None:
            _, rss = tree(self.proc.pid)
            self.peak = max(self.peak, rss)
            now = time.monotonic()
            if rss > limit:
                self.stop(
                    "memory",
                    f"memory limit exceeded: the job used {human_size(rss)} of {human_size(limit)}; "
                    "stopping it",
                )
            elif now > deadline:
                self.stop("timeout", f"time limit of {self.spec['time_limit']} s reached; stopping the job")
            if self.stop_at is not None and now > self.stop_at:
                signal_tree(self.proc.pid, signal.SIGKILL)
            time.sleep(TICK)

    def limits(self) -> None:
        """In the child, before exec: no core dumps; the job's own process group (done by the session)."""
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    def main(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        started = time.time()
        host = socket.gethostname()
        try:
            self.proc = subprocess.Popen(
                self.spec["argv"],
                cwd=self.spec["workdir"],
                env={**passed_through(os.environ), **self.spec["env"]},
                stdin=subprocess.DEVNULL,
                stdout=self.log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self.limits,
            )
        except OSError as exc:
            self.note(f"could not start the command: {exc}")
            write_json(
                self.job_dir / "status.json",
                {
                    "exit_code": 127,
                    "reason": "failed",
                    "message": f"could not start the command: {exc}",
                    "started_at": started,
                    "ended_at": time.time(),
                    "host": host,
                    "cpu_seconds": 0.0,
                    "max_rss_bytes": 0,
                },
            )
            return 0
        write_json(
            self.job_dir / "running.json",
            {"shim_pid": os.getpid(), "pid": self.proc.pid, "host": host, "started_at": started},
        )
        watcher = threading.Thread(target=self.watch, daemon=True)
        watcher.start()
        code = self.proc.wait()
        ended = time.time()
        signal_tree(self.proc.pid, signal.SIGKILL)  # anything the command left behind in its tree
        watcher.join(timeout=2)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        status = {
            "exit_code": code if code >= 0 else 128 - code,
            "signal": signal.Signals(-code).name if code < 0 else None,
            "reason": self.reason,
            "message": self.message,
            "started_at": started,
            "ended_at": ended,
            "host": host,
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
            "max_rss_bytes": max(self.peak, usage.ru_maxrss * 1024),
        }
        write_json(self.job_dir / "status.json", status)
        self.log.close()
        return 0


if __name__ == "__main__":
    sys.exit(Run(Path(sys.argv[1])).main())
