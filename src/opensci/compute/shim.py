"""The job shim: runs one job's command where an executor started it (standard library only).

    python shim.py JOB_DIR

Reads `JOB_DIR/job.json`, runs its `argv` in `workdir` with `env`, appends everything the command prints
to `JOB_DIR/log` (up to `max_log_bytes`; the rest is counted and dropped, so a chatty job cannot fill the
disk), and enforces the job's limits itself: the time limit, and the memory limit as the resident memory
of the whole process tree (checked four times a second). It writes `running.json` when the command has
started and `status.json` (atomically) when it has ended. SIGTERM, SIGINT or SIGHUP (a cancel,
`scancel`) stop the whole process tree: TERM first, KILL after the grace period.

In a sandbox (bubblewrap), the command is not the shim's child but the child of bubblewrap's own init,
whose CPU time never reaches the shim. So sandboxed jobs run this same file inside the sandbox as their
*reaper* (`python -S -I shim.py --reap FD -- COMMAND…`): it starts the command, waits for it, and writes
its exit status and CPU time to the pipe FD (`"@report-fd@"` in `argv` is replaced by the pipe the shim
opens); a command that cannot be started is reported as such (exit code 127), as outside a sandbox.

It depends on nothing but Python's standard library so that any node of a cluster can run it with the
interpreter that shares the job's storage.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")
CLOCK = os.sysconf("SC_CLK_TCK")
TICK = 0.25
REPORT_FD = "@report-fd@"  # in job.json's argv: the pipe the reaper reports on
COMMAND_FILE = "command.json"  # the command's environment, for the reaper (in the sandbox at /opensci/)
INFO_FD, BLOCK_FD = "@info-fd@", "@block-fd@"  # in job.json's argv: bubblewrap's pipes (see Network)
READ = 64 * 1024


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _processes() -> dict[int, tuple[int, int, int]]:
    """pid → (parent pid, resident pages, CPU clock ticks: its own and its waited-for children's) of every
    process this /proc shows."""
    out: dict[int, tuple[int, int, int]] = {}
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
            ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime
            out[int(entry.name)] = (int(fields[1]), int(fields[21]), ticks)
        except (IndexError, ValueError):
            continue
    return out


def proportional_memory(pids: list[int]) -> int:
    """The memory of these processes counting each shared page once (their summed Pss): a job that forks
    children sharing its pages uses no more than it did."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            continue
    return total


def tree(root: int) -> tuple[list[int], int, float]:
    """The pids of `root` and all its descendants, their resident memory in bytes, and the CPU seconds
    they and the children they have waited for used."""
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            found.append(pid)
            todo.extend(children.get(pid, ()))
    return found, sum(procs[p][1] for p in found) * PAGE, sum(procs[p][2] for p in found) / CLOCK


def signal_tree(root: int, sig: int) -> None:
    """Send `sig` to the process group of `root` and to every descendant (some may have left the group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(root, sig)
    for pid in tree(root)[0]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def signal_job(root: int, sig: int, *, sandboxed: bool) -> bool:
    """Send `sig` to a job's tree; whether it reached the command (it may not have started yet).

    In a sandbox, a signal other than KILL spares bubblewrap itself (`root` and its pid-1 child):
    bubblewrap dies of a TERM and takes the sandbox down with it (SIGKILL, as it runs with
    --die-with-parent), which would leave the command no grace period to save its work. Below them the
    reaper ignores it; the command and its children get it."""
    if not sandboxed or sig == signal.SIGKILL:
        signal_tree(root, sig)
        return True
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in _processes().items():
        children.setdefault(ppid, []).append(pid)
    reached = False
    level, depth = [root], 0  # 0: bubblewrap, 1: its pid 1, 2: the reaper, 3 and more: the command's
    while level:
        if depth >= 2:
            for pid in level:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
                    reached = reached or depth >= 3
        level, depth = [c for pid in level for c in children.get(pid, ())], depth + 1
    return reached


CGROUPS_FILE = "cgroups.json"  # in the job directory: the job's control groups, while they exist


def remove_leftover_cgroups(job_dir: Path) -> None:
    """Remove the control groups a shim that was killed could not remove itself (their processes gone)."""
    try:
        recorded = json.loads((job_dir / CGROUPS_FILE).read_text())
        groups = Cgroups({c: Path(d) for c, d in recorded["dirs"].items()}, v2=bool(recorded["v2"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    groups.remove()
    with contextlib.suppress(OSError):
        (job_dir / CGROUPS_FILE).unlink()


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


class Cgroups:
    """Control groups of one job (as root, where the kernel has them): a hard memory limit that counts all
    the memory the job pins (memfd and tmpfs pages too, which no process's resident memory shows), a
    limit on its processes and threads, and its exact CPU time (children it left behind included).
    cgroup v1 groups go below the shim's own; v2 groups below `/opensci` of the unified hierarchy."""

    CONTROLLERS = ("memory", "pids", "cpuacct")

    def __init__(self, dirs: dict[str, Path], v2: bool) -> None:
        self.dirs = dirs  # controller → directory (one directory for all under v2)
        self.v2 = v2

    @classmethod
    def make(cls, name: str, memory: int, processes: int) -> Cgroups | None:
        """New groups for a job, limits set; None where they cannot be made (not root, no controllers)."""
        if os.geteuid() != 0:
            return None
        mounts = _cgroup_mounts()
        try:
            if all(c in mounts for c in cls.CONTROLLERS):
                own = _own_cgroups()
                dirs = {c: Path(mounts[c]) / own.get(c, "/").lstrip("/") / name for c in cls.CONTROLLERS}
                for d in dirs.values():
                    d.mkdir()
                groups = cls(dirs, v2=False)
                groups._write("memory", "memory.limit_in_bytes", memory)
                groups._write("memory", "memory.memsw.limit_in_bytes", memory, optional=True)
                groups._write("pids", "pids.max", processes)
                return groups
            root = mounts.get("cgroup2")
            if root and {"memory", "pids", "cpu"} <= set(_read(Path(root) / "cgroup.controllers").split()):
                parent = Path(root) / "opensci"
                parent.mkdir(exist_ok=True)
                for d in (Path(root), parent):
                    with contextlib.suppress(OSError):
                        (d / "cgroup.subtree_control").write_text("+memory +pids +cpu")
                (parent / name).mkdir()
                groups = cls(dict.fromkeys(cls.CONTROLLERS, parent / name), v2=True)
                groups._write("memory", "memory.max", memory)
                groups._write("memory", "memory.swap.max", 0, optional=True)
                groups._write("pids", "pids.max", processes)
                return groups
        except OSError:
            return None
        return None

    def _write(self, controller: str, file: str, value: int, *, optional: bool = False) -> None:
        try:
            (self.dirs[controller] / file).write_text(str(value))
        except OSError:
            if not optional:
                self.remove()
                raise

    def enter(self, pid: int) -> None:
        """Put a process in the groups (its children follow)."""
        for d in dict.fromkeys(self.dirs.values()):
            (d / "cgroup.procs").write_text(str(pid))

    def oom_kills(self) -> int:
        text = _read(self.dirs["memory"] / ("memory.events" if self.v2 else "memory.oom_control"))
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def cpu_seconds(self) -> float | None:
        try:
            if self.v2:
                for line in _read(self.dirs["cpuacct"] / "cpu.stat").splitlines():
                    if line.startswith("usage_usec "):
                        return int(line.split()[1]) / 1e6
                return None
            return int(_read(self.dirs["cpuacct"] / "cpuacct.usage")) / 1e9
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        """Remove the groups once their processes are gone (they may take a moment to leave)."""
        for d in dict.fromkeys(self.dirs.values()):
            for _ in range(40):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _cgroup_mounts() -> dict[str, str]:
    """Mount points of cgroup v1 controllers by name, and of the v2 hierarchy as `cgroup2`."""
    found: dict[str, str] = {}
    for line in _read(Path("/proc/self/mounts")).splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        if fields[2] == "cgroup2":
            found.setdefault("cgroup2", fields[1])
        elif fields[2] == "cgroup":
            for option in fields[3].split(","):
                found.setdefault(option, fields[1])
    return found


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup v1 paths by controller."""
    own: dict[str, str] = {}
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(","):
            own[c] = path
    return own


class Network:
    """A job's own network, through slirp4netns: bubblewrap makes an empty network namespace, tells its
    init's pid on `--info-fd` and waits on `--block-fd`; slirp4netns gives the namespace a tap device with
    NAT to the outside world (not to the host's loopback, where its private services listen), then the
    command is let go. slirp4netns ends when its exit pipe closes, at the end of the job."""

    def __init__(self, slirp: str, userns: bool) -> None:
        self.slirp, self.userns = slirp, userns
        self.info_r, self.info_w = os.pipe()
        self.block_r, self.block_w = os.pipe()
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_w: int | None = None

    def argv(self, argv: list[str]) -> list[str]:
        fds = {INFO_FD: str(self.info_w), BLOCK_FD: str(self.block_r)}
        return [fds.get(word, word) for word in argv]

    @property
    def fds(self) -> tuple[int, int]:
        return self.info_w, self.block_r

    def started(self) -> None:
        """After bubblewrap started: close its ends of the pipes."""
        os.close(self.info_w)
        os.close(self.block_r)

    def connect(self, timeout: float = 15.0) -> None:
        """Give the sandbox its network and let the command start; OSError if that fails."""
        info = b""
        deadline = time.monotonic() + timeout
        while not info.rstrip().endswith(b"}"):
            if not select.select([self.info_r], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise OSError("the sandbox did not say where it is")
            part = os.read(self.info_r, READ)
            if not part:
                raise OSError("the sandbox ended before its network was made")
            info += part
        pid = int(json.loads(info)["child-pid"])
        # bubblewrap tells the pid before it has set up the namespace's loopback; configuring the
        # namespace meanwhile would make it fail: wait until 127.0.0.1 is there.
        while b"127.0.0.1" not in _read_bytes(f"/proc/{pid}/net/fib_trie"):
            if time.monotonic() > deadline:
                raise OSError("the sandbox did not set up its loopback in time")
            time.sleep(0.002)
        ready_r, ready_w = os.pipe()
        exit_r, self.exit_w = os.pipe()
        argv = [self.slirp, "--configure", "--mtu=65520", "--disable-host-loopback", "--enable-sandbox"]
        argv += ["--enable-seccomp", "--ready-fd", str(ready_w), "--exit-fd", str(exit_r)]
        if self.userns:
            argv.append(f"--userns-path=/proc/{pid}/ns/user")
        try:
            self.proc = subprocess.Popen(
                [*argv, str(pid), "tap0"],
                pass_fds=(ready_w, exit_r),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        finally:
            os.close(ready_w)
            os.close(exit_r)
        try:
            if not select.select([ready_r], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise OSError("slirp4netns did not get ready in time")
            if os.read(ready_r, 1) != b"1":
                raise OSError("slirp4netns could not configure the sandbox's network")
        finally:
            os.close(ready_r)
        os.write(self.block_w, b"1")
        os.close(self.block_w)
        self.block_w = -1

    def close(self) -> None:
        os.close(self.info_r)
        if self.block_w >= 0:
            os.close(self.block_w)
        if self.exit_w is not None:
            os.close(self.exit_w)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Run:
    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir
        self.spec: dict[str, Any] = json.loads((job_dir / "job.json").read_text())
        self.log = open(job_dir / "log", "ab", buffering=0)  # noqa: SIM115 (closed in main)
        self.max_log = int(self.spec.get("max_log_bytes") or 0)  # 0: no limit
        self.logged = 0  # bytes of the command's output written to the log
        self.dropped = 0  # bytes of it past the limit
        self.reason: str | None = None
        self.message = ""
        self.stop_at: float | None = None
        self.delivered = False  # the stop's TERM reached the command
        self.peak = 0
        self.cpu = 0.0  # CPU seconds of the tree as last seen (used when the reaper could not report)
        self.lock = threading.RLock()  # also taken by the signal handler, which may interrupt its holder
        self.proc: subprocess.Popen[bytes] | None = None
        self.cgroups: Cgroups | None = None

    def note(self, text: str) -> None:
        self.log.write(f"[opensci] {text}\n".encode("utf-8", "backslashreplace"))

    def stop(self, reason: str, message: str) -> None:
        """Begin stopping the command (TERM now, KILL after the grace period); the first reason wins. Before
        the command has started, it never starts (or gets its TERM as soon as it has)."""
        with self.lock:
            if self.reason is not None:
                return
            self.reason, self.message = reason, message
            self.stop_at = time.monotonic() + float(self.spec.get("kill_grace", 3))
        self.note(message)
        self.terminate()

    def terminate(self) -> None:
        """TERM to the command once it runs (in a sandbox the reaper may not have started it yet: the
        watcher asks again each tick); the grace period before KILL runs from then."""
        with self.lock:
            if self.proc is None or self.delivered:
                return
            if signal_job(self.proc.pid, signal.SIGTERM, sandboxed=bool(self.spec.get("sandboxed"))):
                self.delivered = True
                self.stop_at = time.monotonic() + float(self.spec.get("kill_grace", 3))

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stop("cancelled", f"cancelled ({signal.Signals(signum).name}): stopping the job")

    def watch(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + float(self.spec["time_limit"])
        limit = int(self.spec["memory_bytes"])
        while self.proc.poll() is None:
            pids, _, cpu = tree(self.proc.pid)
            used = proportional_memory(pids)
            self.peak = max(self.peak, used)
            self.cpu = max(self.cpu, cpu)
            now = time.monotonic()
            # With control groups the kernel enforces the limit exactly (files in memory included).
            if self.cgroups is None and used > limit:
                self.stop(
                    "memory",
                    f"memory limit exceeded: the job used {human_size(used)} of {human_size(limit)}; "
                    "stopping it",
                )
            elif now > deadline:
                self.stop("timeout", f"time limit of {self.spec['time_limit']} s reached; stopping the job")
            if self.reason is not None and not self.delivered:
                self.terminate()
            if self.stop_at is not None and now > self.stop_at:
                signal_tree(self.proc.pid, signal.SIGKILL)
            time.sleep(TICK)

    def copy_output(self, fd: int) -> None:
        """Append what the command prints to the log, up to the limit; count and drop the rest."""
        ended_line = True
        while data := os.read(fd, READ):
            keep = len(data) if not self.max_log else max(0, min(len(data), self.max_log - self.logged))
            if keep:
                self.log.write(data[:keep])
                self.logged += keep
                ended_line = data[keep - 1 : keep] == b"\n"
            if keep < len(data):
                if not self.dropped:
                    if self.logged and not ended_line:
                        self.log.write(b"\n")  # the note starts a line of its own
                    self.note(
                        f"the log reached its limit of {human_size(self.max_log)}: the rest of the "
                        "output is not kept (OPENSCI_COMPUTE_MAX_LOG_BYTES)"
                    )
                self.dropped += len(data) - keep

    def limits(self) -> None:
        """In the child, before exec: no core dumps, the job's control groups; the job's own process group
        (done by the session)."""
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if self.cgroups is not None:
            self.cgroups.enter(os.getpid())

    def main(self) -> int:
        try:
            return self._main()
        finally:
            if self.cgroups is not None:  # on every path, starting failures included
                self.cgroups.remove()
                with contextlib.suppress(OSError):
                    (self.job_dir / CGROUPS_FILE).unlink()

    def _main(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        started = time.time()
        host = socket.gethostname()
        out_r, out_w = os.pipe()
        report_r, report_w = os.pipe()
        prefix = [str(report_w) if word == REPORT_FD else word for word in self.spec["argv"]]
        env = {**passed_through(os.environ), **self.spec["env"]}
        cwd = self.spec["workdir"]
        if self.spec.get("sandboxed"):
            # The job's variables reach only the command inside the sandbox, through its reaper: bubblewrap
            # itself runs on the host (as root, maybe), where LD_PRELOAD and the like must not touch it.
            command_file = self.job_dir / COMMAND_FILE
            fd = os.open(command_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"env": env}, f)
            env, cwd = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, str(self.job_dir)
        if self.spec.get("cgroups"):
            self.cgroups = Cgroups.make(
                f"opensci-job-{self.spec['job_id']}-{os.getpid()}",
                int(self.spec["memory_bytes"]),
                int(self.spec.get("max_processes") or 4096),
            )
            if self.cgroups is None:
                self.note("cgroups: not available here; memory is limited by what the processes show")
            else:
                recorded = {"dirs": {c: str(d) for c, d in self.cgroups.dirs.items()}, "v2": self.cgroups.v2}
                write_json(self.job_dir / CGROUPS_FILE, recorded)  # for the executor, should this be killed
        network = Network(**self.spec["network"]) if self.spec.get("network") else None
        pass_fds = (report_w,) if REPORT_FD in self.spec["argv"] else ()
        if network is not None:
            prefix, pass_fds = network.argv(prefix), (*pass_fds, *network.fds)
        argv = [*prefix, *self.spec.get("command", [])]  # the placeholders are filled in the prefix only
        if self.reason is not None:  # cancelled before the command started: it never does
            if network is not None:
                network.started()
                network.close()
            return self.ended_before_start(started, host)
        try:
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self.limits,
                pass_fds=pass_fds,
            )
        except OSError as exc:
            if network is not None:
                network.started()
                network.close()
            message = f"could not start the command: {exc}"
            return self.could_not_start(message, started, host, not_started_code(exc))
        finally:
            os.close(out_w)
            os.close(report_w)
        if self.reason is not None:  # the cancel came while the command was being started
            self.terminate()
        if network is not None:
            network.started()
            try:
                network.connect()
            except (OSError, ValueError, KeyError) as exc:
                signal_tree(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                network.close()
                return self.could_not_start(f"could not give the job its network: {exc}", started, host)
        write_json(
            self.job_dir / "running.json",
            {"shim_pid": os.getpid(), "pid": self.proc.pid, "host": host, "started_at": started},
        )
        copier = threading.Thread(target=self.copy_output, args=(out_r,), daemon=True)
        copier.start()
        watcher = threading.Thread(target=self.watch, daemon=True)
        watcher.start()
        code = self.proc.wait()
        ended = time.time()
        signal_tree(self.proc.pid, signal.SIGKILL)  # anything the command left behind in its tree
        if network is not None:
            network.close()
        watcher.join(timeout=2)
        copier.join(timeout=5)  # a process that escaped the tree may hold the pipe: do not wait for it
        reaped = _report(report_r)
        group_cpu = None
        if self.cgroups is not None:
            if self.cgroups.oom_kills() and self.reason is None:
                limit = int(self.spec["memory_bytes"])
                self.reason = "memory"
                self.message = (
                    f"memory limit exceeded: the job used all of its {human_size(limit)} (files in memory "
                    "included) and the kernel stopped it"
                )
                self.note(self.message)
            group_cpu = self.cgroups.cpu_seconds()
            self.cgroups.remove()
        if reaped.get("error"):
            code = int(reaped.get("exit_code", 127))
            return self.could_not_start(str(reaped["error"]), started, host, code)
        if self.dropped:
            self.note(f"{human_size(self.dropped)} of output past the log's limit were not kept")
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = usage.ru_utime + usage.ru_stime  # the command's, when it is the shim's own child
        cpu = max(own + float(reaped.get("cpu_seconds", 0.0)), self.cpu)  # the tree as sampled: orphans too
        if group_cpu is not None:  # everything the job ran, children it left behind included
            cpu = max(cpu, group_cpu)
        status = {
            "exit_code": code if code >= 0 else 128 - code,
            "signal": signal.Signals(-code).name if code < 0 else None,
            "reason": self.reason,
            "message": self.message,
            "started_at": started,
            "ended_at": ended,
            "host": host,
            "cpu_seconds": round(cpu, 3),
            "max_rss_bytes": max(self.peak, usage.ru_maxrss * 1024, int(reaped.get("max_rss_bytes", 0))),
            "log_bytes_dropped": self.dropped,
        }
        write_json(self.job_dir / "status.json", status)
        self.log.close()
        return 0

    def ended_before_start(self, started: float, host: str) -> int:
        return self._never_ran(None, self.reason, self.message, started, host)

    def could_not_start(self, message: str, started: float, host: str, code: int = 127) -> int:
        self.note(message)
        return self._never_ran(code, "failed", message, started, host)

    def _never_ran(
        self, code: int | None, reason: str | None, message: str, started: float, host: str
    ) -> int:
        """Record the end of a job whose command never ran (status.json), and close the log."""
        write_json(
            self.job_dir / "status.json",
            {
                "exit_code": code,
                "reason": reason,
                "message": message,
                "started_at": started,
                "ended_at": time.time(),
                "host": host,
                "cpu_seconds": 0.0,
                "max_rss_bytes": 0,
            },
        )
        self.log.close()
        return 0


def not_started_code(exc: OSError) -> int:
    """The shell's exit code for a command that could not start: 126 when its program is there but cannot
    be run (not executable, not a program), 127 when it is not found."""
    return 126 if exc.errno in (errno.EACCES, errno.ENOEXEC, errno.EPERM, errno.EISDIR) else 127


def _report(fd: int) -> dict[str, Any]:
    """What the reaper wrote on its pipe (nothing outside a sandbox, or when it was killed)."""
    data = b""
    try:
        while select.select([fd], [], [], 2.0)[0] and (part := os.read(fd, READ)):
            data += part
    finally:
        os.close(fd)
    try:
        report = json.loads(data) if data else {}
    except ValueError:
        return {}
    return report if isinstance(report, dict) else {}


def reap(args: list[str]) -> int:
    """Inside the sandbox (`--reap FD [--user UID:GID] -- COMMAND…`): take the command's environment from
    /opensci/command.json, become UID:GID when started as root (the sandbox's capabilities allow only
    that; the change drops them) and forbid gaining privileges, run the command as this process's child,
    wait for it, and report on FD its exit status and CPU time (with its waited-for children's), or why it
    could not start (exit code 127). A cancel's TERM reaches the command from the shim; the reaper ignores
    it, to report afterwards."""
    fd = int(args[0])
    os.set_inheritable(fd, False)
    rest, user, nproc = args[1:], None, None
    while rest[:1] in (["--user"], ["--nproc"]):
        if rest[0] == "--user":
            uid, gid = (int(x) for x in rest[1].split(":"))
            user = (uid, gid)
        else:
            nproc = int(rest[1])
        rest = rest[2:]
    command = rest[1:] if rest[:1] == ["--"] else rest
    stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    for sig in stops:
        signal.signal(sig, signal.SIG_IGN)
    try:
        with open(f"/opensci/{COMMAND_FILE}") as f:
            env = json.load(f)["env"]
        if nproc is not None:  # processes and threads of the job's own user: per job where it has one
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        if user is not None and os.getuid() == 0:
            os.setgroups([])
            os.setgid(user[1])
            os.setuid(user[0])
        _no_new_privileges()
        _no_user_namespaces()
        os.environ.clear()
        os.environ.update(env)  # the command's PATH is the one its program is looked up in
        pid = os.posix_spawnp(command[0], command, env, setsigdef=stops)
    except OSError as exc:
        code = not_started_code(exc)
        os.write(fd, json.dumps({"error": f"could not start the command: {exc}", "exit_code": code}).encode())
        return code
    _, status, usage = os.wait4(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    report = {
        "exit_code": code,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "max_rss_bytes": usage.ru_maxrss * 1024,
    }
    os.write(fd, json.dumps(report).encode())
    if code < 0:  # end the way the command did, so the shim sees the same signal
        sig = signal.Signals(-code)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those cannot be handled, nor need to be
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig if sig != signal.SIGSTOP else signal.SIGKILL)
    return code


def _no_new_privileges() -> None:
    """prctl(PR_SET_NO_NEW_PRIVS): no set-user-id program can give the command more rights."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(38, 1, 0, 0, 0)


# (audit arch, unshare, clone) of the machine's native and 32-bit system calls; clone3 is 435 on all.
SYSCALLS = {
    "x86_64": ((0xC000003E, 272, 56), (0x40000003, 310, 120)),
    "aarch64": ((0xC00000B7, 97, 220), (0x40000028, 337, 120)),
}
CLONE_NEWUSER = 0x10000000


def user_namespace_filter(machine: str) -> list[tuple[int, int, int, int]] | None:
    """A seccomp program (classic BPF: code, jump if true, jump if false, value) that refuses to make user
    namespaces: `unshare` or `clone` with CLONE_NEWUSER get EPERM; `clone3`, whose flags a filter cannot
    read, gets ENOSYS (libc then uses `clone`), as do x32 calls; everything else is allowed. None for a
    machine it does not know."""
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, enosys, eperm = 0x7FFF0000, 0x00050000 | 38, 0x00050000 | 1
    arches = SYSCALLS.get(machine)
    if arches is None:
        return None
    program = [(ld, 0, 0, 4)]  # the call's architecture
    for i, (audit, _, _) in enumerate(arches):  # to its block, or on
        program.append((jeq, len(arches) - i + 10 * i, 0, audit))
    program.append((ret, 0, 0, allow))  # a kind of call this filter does not know of
    for _, unshare, clone in arches:
        program += [
            (ld, 0, 0, 0),  # the call's number
            (jge, 6, 0, 0x40000000),  # x32: ENOSYS
            (jeq, 5, 0, 435),  # clone3: ENOSYS
            (jeq, 1, 0, unshare),
            (jeq, 0, 2, clone),
            (ld, 0, 0, 16),  # its first argument: the flags (low 32 bits)
            (jset, 2, 0, CLONE_NEWUSER),
            (ret, 0, 0, allow),
            (ret, 0, 0, enosys),
            (ret, 0, 0, eperm),
        ]
    return program


def _no_user_namespaces() -> None:
    """Install `user_namespace_filter` on this process and all it starts (no_new_privs is set): a user
    namespace would give the job root-like rights over kernel interfaces it otherwise never reaches.
    Raises OSError when the kernel refuses it (nothing is started then)."""
    program = user_namespace_filter(os.uname().machine)
    if program is None:
        return
    code = b"".join(struct.pack("=HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(code, len(code))

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = Program(len(program), ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        err = ctypes.get_errno()
        raise OSError(err, f"cannot forbid user namespaces (seccomp): {os.strerror(err)}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--reap"]:
        sys.exit(reap(sys.argv[2:]))
    sys.exit(Run(Path(sys.argv[1])).main())
