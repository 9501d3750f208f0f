"""The `local` executor: the job's shim as a detached subprocess of this machine.

The shim runs in a session of its own, so it outlives a restart of the server: the handle
(`host:pid:start-time`) lets any server process on the same host find it again, and the start time
tells a live job from an unrelated process that reused its pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable

from opensci.compute.executors.base import ExecutorError, Launch, Observation, read_json
from opensci.compute.shim import remove_leftover_cgroups, signal_tree

HOST = socket.gethostname()


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields[0] == b"Z":
        return None  # a zombie has finished
    return fields[19].decode()


def parse_handle(handle: str) -> tuple[str, int, str]:
    host, pid, started = handle.rsplit(":", 2)
    return host, int(pid), started


class LocalExecutor:
    name = "local"

    def __init__(self, kill_grace: float = 3.0, on_exit: Callable[[], None] | None = None) -> None:
        self.kill_grace = kill_grace
        self.on_exit = on_exit  # called when a shim this process started ends (the scheduler wakes up)
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def submit(self, launch: Launch) -> str:
        try:
            with open(launch.job_dir / "shim.err", "ab") as err:
                proc = subprocess.Popen(
                    launch.argv,
                    cwd=launch.job_dir,
                    env=launch.env or None,
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as exc:
            raise ExecutorError(f"could not start the job: {exc}") from exc
        with self._lock:
            self._children[proc.pid] = proc
        if self.on_exit is not None:
            threading.Thread(target=self._notify_when_done, args=(proc,), daemon=True).start()
        return f"{HOST}:{proc.pid}:{_start_time(proc.pid) or ''}"

    def _notify_when_done(self, proc: subprocess.Popen[bytes]) -> None:
        # Wait without reaping (WNOWAIT): `poll` reaps, and gets the exit code at its first look at the
        # ended shim. (A thread blocked in `Popen.wait` would hold the Popen's lock, and `Popen.poll`
        # answers None, "still running", from the shim's exit until that thread has stored the code:
        # a shim that had just ended looked like one that never started.)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        if self.on_exit is not None:
            self.on_exit()

    def _reap(self, pid: int) -> int | None:
        """The exit code of a shim this process started and that has ended (reaping it), else None."""
        with self._lock:
            proc = self._children.get(pid)
        if proc is None or proc.poll() is None:
            return None
        with self._lock:
            self._children.pop(pid, None)
        return proc.returncode

    def poll(self, handle: str, launch: Launch) -> Observation:
        host, pid, started = parse_handle(handle)
        if host != HOST:
            raise ExecutorError(
                f"job {launch.job_id} runs on {host}; only a server on that host can watch it"
            )
        if launch.status_path.exists():
            self._reap(pid)
            return Observation("ended")
        code = self._reap(pid)
        alive = code is None and started and _start_time(pid) == started
        if alive:
            return Observation("running")
        if code is None:  # it ended between our two looks
            code = self._reap(pid)
        remove_leftover_cgroups(launch.job_dir)  # the shim did not end its own way
        if launch.status_path.exists():  # it wrote its status between our two looks
            return Observation("ended")
        err = (launch.job_dir / "shim.err").read_text(errors="replace")[-2000:].strip()
        if code is not None:
            return Observation(
                "ended",
                reason="failed",
                detail=f"the job's shim exited with {code}: {err}".strip(),
                exit_code=code,
            )
        running = read_json(launch.running_path)
        if running is not None:
            return Observation("lost", detail="the job's processes are gone and left no exit status")
        return Observation("lost", detail="the job never started")

    def cancel(self, handle: str, launch: Launch) -> None:
        """TERM to the shim (which stops the command's tree and records `cancelled`); if the shim has not
        ended after the grace period, KILL the command's tree and the shim."""
        _, pid, started = parse_handle(handle)
        if _start_time(pid) != started:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)

        def force() -> None:
            if _start_time(pid) != started:
                return
            running = read_json(launch.running_path)
            if running is not None:
                signal_tree(int(running["pid"]), signal.SIGKILL)
            signal_tree(pid, signal.SIGKILL)
            remove_leftover_cgroups(launch.job_dir)

        timer = threading.Timer(self.kill_grace + 2.0, force)
        timer.daemon = True
        timer.start()
