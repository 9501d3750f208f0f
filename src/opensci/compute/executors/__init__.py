"""Executors by name: `local` (embedded default) and `slurm`."""

from __future__ import annotations

from collections.abc import Callable

from opensci.compute.executors.base import Executor, ExecutorError, Launch, Observation, Resources
from opensci.settings import Settings

__all__ = ["NAMES", "Executor", "ExecutorError", "Launch", "Observation", "Resources", "make_executor"]

NAMES = ("local", "slurm")


def make_executor(name: str, settings: Settings, on_exit: Callable[[], None] | None = None) -> Executor:
    """The executor called `name`; `on_exit`, where the executor can tell, is called when a job ends."""
    if name == "local":
        from opensci.compute.executors.local import LocalExecutor

        return LocalExecutor(on_exit=on_exit)
    if name == "slurm":
        from opensci.compute.executors.slurm import SlurmExecutor

        return SlurmExecutor(settings)
    raise ValueError(f"unknown executor {name!r}")
