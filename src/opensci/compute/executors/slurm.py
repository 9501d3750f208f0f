"""The `slurm` executor: the job's shim as a batch job of a Slurm cluster.

The job directory (`HOME/jobs/<id>/`) must be on storage the cluster's nodes share with the server, and the
shim's interpreter (`compute_python`) must exist at the same path on every node. `submit` writes
`slurm.sh` into the job directory (the shim's environment, then `exec` of the shim) and hands it to
`sbatch`, run with nothing of the server's environment but Slurm's own variables (`SLURM_CONF`,
`SBATCH_*`); Slurm's own output (the shim's crashes, Slurm's messages such as a kill at the time limit) goes
to `slurm.out` beside it. Slurm enforces the resources it allocates: CPUs, memory (`--mem`, rounded up to
MiB) and a time limit that is the job's own plus `compute_slurm_time_margin_seconds`, so that the shim,
which enforces the exact limit, normally speaks first.

`poll` asks `squeue` while the job is queued or running, then the accounting (`sacct`) for how it ended,
falling back on `scontrol show job` (which forgets finished jobs after Slurm's MinJobAge, 300 s by
default) where accounting is off. Every command runs with a timeout; when Slurm cannot be asked, the
methods raise ExecutorError (the scheduler tries again later) — only a job that Slurm answers it does not
know is reported `lost`.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from opensci.compute.executors.base import ExecutorError, Launch, Observation
from opensci.settings import Settings

MIB = 1024**2
SCRIPT = "slurm.sh"
OUTPUT = "slurm.out"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

# Slurm job states (squeue's long names) by what they mean here.
PENDING = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
)
RUNNING = frozenset(
    {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING", "UPDATE_DB"}
)
# A final state → (Observation reason, sentence); COMPLETED has no reason.
FINAL: dict[str, tuple[str | None, str]] = {
    "COMPLETED": (None, "Slurm reports the job completed"),
    "FAILED": ("failed", "Slurm reports the job failed"),
    "TIMEOUT": ("timeout", "Slurm stopped the job at its time limit"),
    "DEADLINE": ("timeout", "Slurm stopped the job at its deadline"),
    "OUT_OF_MEMORY": ("memory", "Slurm stopped the job: it ran out of memory (its cgroup's limit)"),
    "CANCELLED": ("cancelled", "the job was cancelled in Slurm"),
    "REVOKED": ("cancelled", "Slurm revoked the job"),
    "NODE_FAIL": ("node_failure", "the Slurm node running the job failed"),
    "BOOT_FAIL": ("node_failure", "the Slurm node for the job failed to boot"),
    "PREEMPTED": ("failed", "Slurm preempted the job for another one"),
}


@dataclass(frozen=True)
class SlurmState:
    state: str  # e.g. COMPLETED; without the "by <uid>" of a cancel
    exit_code: int | None
    source: str  # which command said so


def sbatch_options(cpus: int, memory_bytes: int, time_limit: int, gpus: int, margin: int) -> list[str]:
    """The resource options of a job: CPUs, memory in MiB (rounded up), whole minutes (Slurm's unit) of at
    least the time limit plus the margin, and GPUs as generic resources."""
    minutes = max(1, math.ceil((time_limit + margin) / 60))
    options = [
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={cpus}",
        f"--mem={max(1, math.ceil(memory_bytes / MIB))}M",
        f"--time={minutes}",
    ]
    if gpus:
        options.append(f"--gres=gpu:{gpus}")
    return options


def batch_script(launch: Launch) -> str:
    """A shell script that gives the shim exactly its environment and becomes the shim."""
    env = {"PATH": DEFAULT_PATH, **launch.env}
    lines = ["#!/bin/sh", f"# OpenSci job {launch.job_id}, written by the slurm executor"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items() if re.fullmatch(r"[A-Za-z_]\w*", k)]
    lines.append("exec " + shlex.join(launch.argv))
    return "\n".join(lines) + "\n"


def _exit_code(text: str) -> int | None:
    """Slurm's `code:signal` as one exit code: the code, or 128 + a real signal's number."""
    m = re.fullmatch(r"\s*(\d+):(\d+)\s*", text)
    if not m:
        return None
    code, sig = int(m.group(1)), int(m.group(2))
    if code == 0 and sig:
        return 128 + sig if sig < 65 else None  # Slurm puts its own codes (125: OOM) there too
    return code


class SlurmExecutor:
    name = "slurm"

    def __init__(self, settings: Settings) -> None:
        self.bin_dir = settings.compute_slurm_bin_dir
        self.partition = settings.compute_slurm_partition
        self.account = settings.compute_slurm_account
        self.extra_args = shlex.split(settings.compute_slurm_sbatch_args)
        self.time_margin = settings.compute_slurm_time_margin_seconds
        self.use_sacct = settings.compute_slurm_use_sacct
        self.timeout = settings.compute_slurm_command_timeout_seconds

    # --- commands ---------------------------------------------------------------------------------------

    def _binary(self, name: str) -> str:
        return str(Path(self.bin_dir) / name) if self.bin_dir else shutil.which(name) or name

    def _run(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command; ExecutorError when it cannot be run or does not answer in time."""
        argv = [self._binary(name), *args]
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=self.timeout, stdin=subprocess.DEVNULL, env=env
            )
        except FileNotFoundError as exc:
            raise ExecutorError(
                f"{name} was not found ({argv[0]}): install the Slurm client commands or set "
                "OPENSCI_COMPUTE_SLURM_BIN_DIR"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise ExecutorError(f"{name} did not answer within {self.timeout:g} s") from exc
        except OSError as exc:
            raise ExecutorError(f"could not run {name}: {exc}") from exc

    @staticmethod
    def _said(done: subprocess.CompletedProcess[str]) -> str:
        return (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}")[-500:]

    # --- the interface ----------------------------------------------------------------------------------

    def submit(self, launch: Launch) -> str:
        jd = launch.job_dir
        script = jd / SCRIPT
        try:
            script.write_text(batch_script(launch))
            script.chmod(0o755)
        except OSError as exc:
            raise ExecutorError(f"could not write the batch script into {jd}: {exc}") from exc
        r = launch.resources
        options = [
            "--parsable",
            f"--job-name=opensci-{launch.job_id}",
            f"--output={jd / OUTPUT}",
            "--open-mode=append",
            f"--chdir={jd}",
            "--no-requeue",
            *sbatch_options(r.cpus, r.memory_bytes, r.time_limit, r.gpus, self.time_margin),
        ]
        if self.partition:
            options.append(f"--partition={self.partition}")
        if self.account:
            options.append(f"--account={self.account}")
        # sbatch hands its environment to the job (--export=NONE would make the node load the user's login
        # environment instead): only the shim's, and what configures Slurm itself.
        env = {k: v for k, v in os.environ.items() if k == "SLURM_CONF" or k.startswith("SBATCH_")}
        env.update({"PATH": DEFAULT_PATH, **launch.env})
        done = self._run("sbatch", *options, *self.extra_args, str(script), env=env)
        if done.returncode != 0:
            raise ExecutorError(f"sbatch refused job {launch.job_id}: {self._said(done)}")
        # --parsable prints "jobid" or "jobid;cluster".
        handle = done.stdout.strip().splitlines()[-1].split(";")[0] if done.stdout.strip() else ""
        if not handle.isdigit():
            raise ExecutorError(
                f"sbatch answered something unexpected for job {launch.job_id}: {done.stdout!r}"
            )
        return handle

    def poll(self, handle: str, launch: Launch) -> Observation:
        _check(handle)
        queued = self._squeue(handle)
        if queued is not None:
            state, why = queued
            if state in PENDING:
                return Observation("pending", detail=f"waiting in Slurm's queue ({why})" if why else "")
            if state in RUNNING:
                return Observation("running", detail=state.lower() if state != "RUNNING" else "")
        final = self._final(handle)
        if final is None:
            if queued is not None:  # a final state in squeue, not yet in the accounting: look again soon
                return Observation("running", detail=f"Slurm is finishing the job ({queued[0]})")
            return Observation("lost", detail=f"Slurm does not know job {handle} (any more)")
        if final.state in PENDING or final.state in RUNNING:
            return Observation("pending" if final.state in PENDING else "running")
        reason, sentence = FINAL.get(final.state, ("failed", f"Slurm reports the job as {final.state}"))
        detail = sentence
        if reason is not None:
            tail = self._output_tail(launch)
            detail = f"{sentence} (Slurm job {handle}, {final.state})" + (f": {tail}" if tail else "")
        return Observation("ended", reason=reason, detail=detail, exit_code=final.exit_code)

    def cancel(self, handle: str, launch: Launch) -> None:
        """`scancel` ends the whole job: every step and process gets SIGTERM (the shim records the
        cancel), then SIGKILL after Slurm's KillWait."""
        _check(handle)
        done = self._run("scancel", handle)
        said = self._said(done)
        if done.returncode != 0 and not re.search(r"already completing or completed|Invalid job id", said):
            raise ExecutorError(f"scancel could not cancel Slurm job {handle}: {said}")

    # --- looking at jobs --------------------------------------------------------------------------------

    def _squeue(self, handle: str) -> tuple[str, str] | None:
        """(state, reason) while slurmctld holds the job; None when it does not (any more)."""
        done = self._run("squeue", "--noheader", f"--jobs={handle}", "--states=all", "--format=%T|%r")
        if done.returncode != 0:
            if "Invalid job id" in done.stderr:
                return None
            raise ExecutorError(f"squeue failed: {self._said(done)}")
        for line in done.stdout.splitlines():
            state, _, why = line.strip().partition("|")
            if state:
                return state, "" if why in ("None", "(null)") else why
        return None

    def _final(self, handle: str) -> SlurmState | None:
        """How a job ended, from the accounting; from slurmctld where accounting is off or has not
        recorded the end yet. None when neither knows the job."""
        accounted = self._sacct(handle) if self.use_sacct else None
        if accounted is not None and accounted.state in FINAL:
            return accounted
        current = self._scontrol(handle)
        if current is None and accounted is not None:
            # slurmctld has forgotten a job whose end the accounting never received.
            return None
        return current

    def _sacct(self, handle: str) -> SlurmState | None:
        done = self._run(
            "sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={handle}",
            "--format=JobIDRaw,State,ExitCode",
        )  # fmt: skip
        if done.returncode != 0:
            if "accounting storage is disabled" in done.stderr.lower():
                return None
            raise ExecutorError(f"sacct failed: {self._said(done)}")
        for line in done.stdout.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[0] == handle and parts[1]:
                return SlurmState(parts[1].split()[0], _exit_code(parts[2]), "sacct")
        return None

    def _scontrol(self, handle: str) -> SlurmState | None:
        done = self._run("scontrol", "--oneliner", "show", "job", handle)
        if done.returncode != 0:
            if "Invalid job id" in done.stderr:
                return None
            raise ExecutorError(f"scontrol show job failed: {self._said(done)}")
        state = re.search(r"\bJobState=(\S+)", done.stdout)
        if state is None:
            raise ExecutorError(f"scontrol show job answered something unexpected: {done.stdout[:300]!r}")
        code = re.search(r"\bExitCode=(\S+)", done.stdout)
        return SlurmState(state.group(1), _exit_code(code.group(1)) if code else None, "scontrol")

    @staticmethod
    def _output_tail(launch: Launch) -> str:
        """The last lines Slurm wrote for the job (its kill messages, a crash of the shim)."""
        try:
            with open(launch.job_dir / OUTPUT, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 1000))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return " / ".join(lines[-3:])[-500:]


def _check(handle: str) -> None:
    if not handle.isdigit():
        raise ExecutorError(f"{handle!r} is not a Slurm job id")
