"""The spec of `opensci job submit`, from a job file (`-f job.yaml`, the keys of the API) and flags laid
over it. Every mistake found here is a usage error (exit code 2) and nothing is sent to the server."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

API_KEYS = ("code", "command", "inputs", "output", "env", "resources", "executor", "priority")


@dataclass
class Flags:
    """What was given on the command line (None or empty: not given)."""

    code: str | None = None
    command: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    output: str | None = None
    requirements: list[str] = field(default_factory=list)
    requirements_file: Path | None = None
    env: list[str] = field(default_factory=list)
    network: bool | None = None
    cpus: int | None = None
    memory: str | None = None
    time_limit: str | None = None
    gpus: int | None = None
    executor: str | None = None
    priority: int | None = None


def _bad(message: str, param: str | None = None) -> typer.BadParameter:
    return typer.BadParameter(message, param_hint=f"'{param}'" if param else None)


def load_file(path: Path) -> dict[str, Any]:
    """A job file: YAML (so JSON too) mapping the keys of the API spec."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise _bad(f"cannot read {path}: {reason}", "-f") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise _bad(f"{path} is not valid YAML{where}: {problem}", "-f") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _bad(
            f"{path} must map job fields ({', '.join(API_KEYS)}), not be a {type(data).__name__}", "-f"
        )
    unknown = sorted(str(k) for k in data if k not in API_KEYS)
    if unknown:
        raise _bad(
            f"{path}: unknown field(s) {', '.join(unknown)}; a job file has the keys {', '.join(API_KEYS)}",
            "-f",
        )
    return data


def _pairs(values: list[str], what: str, param: str, *, raw_value: bool = False) -> dict[str, str]:
    """`KEY=VALUE` items; with `raw_value` the value is kept as typed (it may be empty)."""
    out: dict[str, str] = {}
    for value in values:
        key, eq, rest = value.partition("=")
        if not eq or not key.strip() or not (raw_value or rest.strip()):
            raise _bad(f"{value!r} is not {what}", param)
        out[key.strip()] = rest if raw_value else rest.strip()
    return out


def read_requirements(path: Path) -> list[str]:
    """One requirement a line; blank lines and `#` comments skipped. pip options are refused."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise _bad(f"cannot read {path}: {reason}", "--requirements-file") from None
    found = []
    for number, line in enumerate(lines, 1):
        text = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not text:
            continue
        if text.startswith("-"):
            raise _bad(
                f"{path}, line {number}: pip options ({text.split()[0]}) are not supported; "
                "list one requirement a line, such as numpy==2.1.0",
                "--requirements-file",
            )
        found.append(text)
    return found


def _command(words: list[str]) -> list[str] | str:
    """The words after `--`; one word with spaces in it is a shell line, split by the server."""
    if len(words) == 1 and any(c.isspace() for c in words[0]):
        return words[0]
    return words


def build(data: dict[str, Any], flags: Flags) -> dict[str, Any]:
    """The spec to send: the job file's fields, then the flags (a flag wins; `--input` and `--env` add
    to or replace single entries; `--requirement`s replace the file's list)."""
    from opensci.client.errors import ValidationError
    from opensci.client.jobs import build_spec, check_size, parse_duration, parse_ref

    spec: dict[str, Any] = dict(data)
    try:
        if flags.code is not None:
            parse_ref(flags.code, "--code")
            spec["code"] = flags.code
        if flags.output is not None:
            parse_ref(flags.output, "--output")
            spec["output"] = flags.output
        if flags.inputs:
            inputs = dict(spec.get("inputs") or {})
            for name, ref in _pairs(flags.inputs, "NAME=OWNER/NAME[@REV]", "--input").items():
                parse_ref(ref, f"--input {name}")
                inputs[name] = ref
            spec["inputs"] = inputs
        if flags.command:
            spec["command"] = _command(flags.command)
        env = dict(spec.get("env") or {})
        requirements = list(flags.requirements)
        if flags.requirements_file is not None:
            requirements += read_requirements(flags.requirements_file)
        if requirements:
            env["requirements"] = requirements
        if flags.env:
            env["variables"] = {
                **(env.get("variables") or {}),
                **_pairs(flags.env, "KEY=VALUE", "--env", raw_value=True),
            }
        if flags.network is not None:
            env["network"] = flags.network
        if env:
            spec["env"] = env
        resources = dict(spec.get("resources") or {})
        if flags.cpus is not None:
            resources["cpus"] = flags.cpus
        if flags.memory is not None:
            resources["memory"] = check_size(flags.memory)
        if flags.time_limit is not None:
            resources["time_limit"] = parse_duration(flags.time_limit)
        if flags.gpus is not None:
            resources["gpus"] = flags.gpus
        if resources:
            spec["resources"] = resources
        if flags.executor is not None:
            spec["executor"] = flags.executor
        if flags.priority is not None:
            spec["priority"] = flags.priority
        body = build_spec(spec)
    except ValidationError as exc:
        raise _bad(exc.message) from None
    if "code" not in body:
        raise _bad("give the code to run: --code OWNER/NAME[@REV], or `code:` in a job file (-f)")
    if not body.get("command"):
        raise _bad("give the command after `--` (opensci job submit --code OWNER/NAME -- python run.py)")
    return body
