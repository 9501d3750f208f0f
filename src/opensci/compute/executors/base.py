"""The executor interface: what the scheduler asks of `local`, `slurm` (and later others).

The scheduler prepares a job directory (`HOME/jobs/<id>/`, on storage the executor's machines share)
holding `job.json` and the working directory, then asks an executor to run `launch.argv`: the job's shim
(`opensci/compute/shim.py`, standard library only), which runs the user's command, enforces the time and
memory limits, and writes the log (`log`), `running.json` while it runs and `status.json` when it ends.
An executor only starts, watches and stops that one command; everything it reports is an Observation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

Phase = Literal["pending", "running", "ended", "lost"]


@dataclass(frozen=True)
class Resources:
    cpus: int = 1
    memory_bytes: int = 2 * 1024**3
    time_limit: int = 3600  # seconds
    gpus: int = 0


@dataclass(frozen=True)
class Launch:
    job_id: int
    job_dir: Path  # HOME/jobs/<id>: job.json, work/, log, running.json, status.json
    argv: list[str]  # the shim command line; run it with job_dir as the working directory
    resources: Resources
    env: dict[str, str] = field(default_factory=dict)  # environment of the shim itself

    @property
    def log_path(self) -> Path:
        return self.job_dir / "log"

    @property
    def status_path(self) -> Path:
        return self.job_dir / "status.json"

    @property
    def running_path(self) -> Path:
        return self.job_dir / "running.json"


@dataclass(frozen=True)
class Observation:
    """What an executor sees of a submitted job.

    phase: `pending` (accepted, not started: e.g. waiting in Slurm's queue), `running`, `ended` (the shim
    or the cluster finished with it: the scheduler then reads `status.json`, and falls back on `reason`
    when the shim could not write it), `lost` (the executor no longer knows the handle and nothing
    says how it ended: the scheduler retries or fails the job).
    reason: the executor's own view of an abnormal end when it has one: `timeout`, `memory`,
    `cancelled`, `node_failure`, `failed`; `detail` is a sentence for people.
    """

    phase: Phase
    reason: str | None = None
    detail: str = ""
    exit_code: int | None = None


class ExecutorError(Exception):
    """The executor could not do what was asked (e.g. `sbatch` refused the job); the message says why."""


class Executor(Protocol):
    name: str

    def submit(self, launch: Launch) -> str:
        """Start the shim; return a handle (a string naming the job to this executor). Raises
        ExecutorError when the job cannot be started at all."""
        ...

    def poll(self, handle: str, launch: Launch) -> Observation:
        """Where the job is now. Cheap enough to call every second for each running job."""
        ...

    def cancel(self, handle: str, launch: Launch) -> None:
        """Stop the whole job (every process it started) now; returns at once, poll shows the end."""
        ...


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file the shim wrote atomically, or None if it is absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
