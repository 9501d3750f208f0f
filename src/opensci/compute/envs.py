"""Job environments: one virtual environment per distinct requirement list, built once and shared.

`HOME/envs/<key>/` where the key hashes the interpreter's version and the sorted requirements. A build
holds `<key>.lock` (an flock, so concurrent jobs and several server processes build each environment
once), installs wheels only (`--only-binary=:all:`: no package's build code runs on the server), and
marks the environment ready with `.opensci-env.json` — the resolved package versions — written last;
an environment without it is a leftover of a crash and is rebuilt.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from packaging.requirements import InvalidRequirement, Requirement

from opensci.errors import InvalidInput
from opensci.settings import Settings

READY = ".opensci-env.json"


class EnvError(Exception):
    """The environment could not be built (pip failed, timed out); the message says why."""


@dataclass(frozen=True)
class JobEnv:
    key: str
    path: Path
    python: str  # the environment's interpreter
    python_version: str
    packages: list[str]  # resolved `name==version`, sorted

    def as_record(self, requirements: list[str]) -> dict[str, object]:
        return {
            "key": self.key,
            "requirements": requirements,
            "python": self.python_version,
            "packages": self.packages,
        }


def _one_line(exc: InvalidRequirement) -> str:
    """packaging's reason as one sentence: the first line of its message, and the place that the caret
    diagram of the following lines points at ("expected … (at character 6)")."""
    lines = str(exc).splitlines() or ["not a requirement"]
    reason = lines[0].strip().rstrip(".")
    reason = reason[:1].lower() + reason[1:]
    caret = lines[-1].find("^") if len(lines) >= 3 else -1
    if caret >= 4:  # the diagram is indented by 4 spaces
        reason += f" (at character {caret - 4 + 1})"
    return reason


def _direct_url(text: str) -> InvalidInput:
    return InvalidInput(
        f"requirement {text!r}: direct URLs are not allowed; name a package on the index",
        code="invalid_spec",
    )


def check_requirements(requirements: list[str]) -> list[str]:
    """Requirements as pip understands them, normalized and sorted; options, paths and URLs refused."""
    out = []
    for line in requirements:
        text = line.strip()
        if any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise InvalidInput(
                f"requirement {text!r}: one requirement a line, without control characters",
                code="invalid_spec",
            )
        if text.startswith("-"):
            raise InvalidInput(f"requirement {text!r}: pip options are not allowed", code="invalid_spec")
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            if "://" in text:  # pip's `git+https://…` form, which is no requirement at all
                raise _direct_url(text) from None
            raise InvalidInput(
                f"requirement {text!r} is not valid: {_one_line(exc)}", code="invalid_spec"
            ) from None
        if req.url:
            raise _direct_url(text)
        if req.name.lower().endswith(_ARCHIVES):  # pip would look for such a file where it runs
            raise InvalidInput(
                f"requirement {text!r} names a file, not a package: give the package's name",
                code="invalid_spec",
            )
        out.append(str(req))
    return sorted(set(out))


_ARCHIVES = (".whl", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".egg")


def base_python(settings: Settings) -> str:
    """The interpreter job environments are made from (and that runs the shim)."""
    if settings.compute_python:
        return settings.compute_python
    return getattr(sys, "_base_executable", None) or sys.executable


@functools.cache
def _python_version(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


def env_key(python_version: str, requirements: list[str]) -> str:
    blob = json.dumps({"python": python_version, "requirements": requirements}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def ensure_env(settings: Settings, requirements: list[str], log: IO[bytes]) -> JobEnv:
    """The environment for these (checked) requirements, built now if it does not exist yet. pip's
    output goes to `log` (the job's log, so people see what was installed or why it failed)."""
    python = base_python(settings)
    version = _python_version(python)
    key = env_key(version, requirements)
    root = settings.envs_dir
    root.mkdir(parents=True, exist_ok=True)
    path = root / key
    with open(root / f"{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            ready = path / READY
            if ready.exists():
                log.write(f"[opensci] environment {key} (cached)\n".encode())
                return _loaded(key, path, json.loads(ready.read_text()))
            if path.exists():
                shutil.rmtree(path)
            wanted = " ".join(requirements) or "(no packages)"
            log.write(f"[opensci] building environment {key}: {wanted}\n".encode())
            _build(settings, python, path, requirements, log)
            packages = _freeze(path)
            record = {"python": version, "requirements": requirements, "packages": packages}
            tmp = path / (READY + ".tmp")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, ready)
            return _loaded(key, path, record)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _loaded(key: str, path: Path, record: dict[str, object]) -> JobEnv:
    packages = record.get("packages")
    return JobEnv(
        key=key,
        path=path,
        python=str(path / "bin" / "python"),
        python_version=str(record.get("python", "")),
        packages=list(packages) if isinstance(packages, list) else [],
    )


def _run(argv: list[str], log: IO[bytes], timeout: float, what: str) -> None:
    log.flush()
    try:
        proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise EnvError(f"{what} took longer than {timeout:.0f} s") from exc
    if proc.returncode != 0:
        raise EnvError(f"{what} failed (exit code {proc.returncode}); the log shows pip's output")


def _build(settings: Settings, python: str, path: Path, requirements: list[str], log: IO[bytes]) -> None:
    timeout = settings.compute_env_timeout_seconds
    _run([python, "-m", "venv", "--without-pip", str(path)], log, timeout, "creating the environment")
    if not requirements:
        return
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(path / "bin" / "python"),
            "install",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
            *requirements,
        ],
        log,
        timeout,
        "installing the requirements",
    )


def _freeze(path: Path) -> list[str]:
    """`name==version` of every distribution the environment holds (read from its metadata)."""
    from importlib.metadata import distributions

    site = list(path.glob("lib/python*/site-packages"))
    found = {f"{d.metadata['Name']}=={d.version}" for d in distributions(path=[str(p) for p in site])}
    return sorted(found, key=str.lower)


def base_python_of(env_path: Path) -> str:
    """The interpreter an environment was made from (its `bin/python` links there)."""
    return os.path.realpath(env_path / "bin" / "python")
