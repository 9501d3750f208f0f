"""Wire shapes of the compute domain: the job spec people submit (validated strictly) and its parts."""

from __future__ import annotations

import re
import shlex
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

INPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
REPO_NAME = re.compile(r"^[^/\s]+/[^/\s]+$")
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as `512M`, `4G`, `1.5GiB`: K, M, G, T count in powers of 1024,
    with or without `i` and `B`, as Slurm's `--mem=4G` does."""
    if isinstance(value, bool):
        raise ValueError("memory must be a number of bytes or a size such as 4G")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("memory must be positive")
        return value
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a size; write bytes or e.g. 512M, 4G")
    number, unit = float(m.group(1)), (m.group(2) or "").lower()
    size = int(number * 1024 ** _POWERS[unit[0]]) if unit else int(number)
    if size <= 0:
        raise ValueError("memory must be positive")
    return size


class RepoRev(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repo: str = Field(description="owner/name of the repository")
    rev: str | None = Field(None, description="branch, tag or commit; default: the default branch")

    @field_validator("repo")
    @classmethod
    def _name(cls, v: str) -> str:
        if not REPO_NAME.match(v):
            raise ValueError(f"{v!r} is not owner/name")
        return v


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repo: str = Field(description="owner/name of the dataset (or model) that receives the outputs")
    branch: str | None = Field(
        None, description="branch to commit to (created if new); default branch if unset"
    )

    _name = field_validator("repo")(RepoRev._name.__func__)  # type: ignore[attr-defined]


class EnvSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requirements: list[Annotated[str, Field(max_length=300)]] = Field(
        default_factory=list, max_length=200, description="pip requirements (wheels only)"
    )
    variables: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict, description="extra environment variables of the command"
    )
    network: bool = Field(False, description="whether the command may use the network (sandboxed jobs)")

    @field_validator("variables")
    @classmethod
    def _vars(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$", key):
                raise ValueError(f"{key!r} is not an environment variable name")
            if key.startswith("OPENSCI_") or key in ("PATH", "HOME", "VIRTUAL_ENV"):
                raise ValueError(f"{key} is set by the platform")
        return v


class ResourceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpus: int = Field(1, ge=1, le=1024)
    memory: int | str | None = Field(None, description="bytes, or a size such as 4G; default from settings")
    time_limit: int | None = Field(None, ge=1, description="seconds; default from settings")
    gpus: int = Field(0, ge=0, le=64)

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: int | str | None) -> int | None:
        return None if v is None else parse_size(v)


class JobSpec(BaseModel):
    """What to run: code at a revision, a command, named inputs, where outputs go, environment, resources."""

    model_config = ConfigDict(extra="forbid")
    code: RepoRev
    command: list[Annotated[str, Field(max_length=10_000)]] | str = Field(
        description="the command as shell words (a list), or one string split like a shell does"
    )
    inputs: dict[str, RepoRev] = Field(default_factory=dict, max_length=64)
    output: OutputSpec | None = None
    env: EnvSpec = Field(default_factory=EnvSpec)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    executor: str | None = None
    priority: int = Field(
        0, ge=-100, le=100, description="higher runs first; above 0 for administrators only"
    )

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str] | str) -> list[str]:
        if isinstance(v, str):
            try:
                v = shlex.split(v)
            except ValueError as exc:
                raise ValueError(f"cannot split the command: {exc}") from exc
        if not v or not v[0].strip():
            raise ValueError("the command is empty")
        if any("\x00" in w for w in v):
            raise ValueError("the command contains a NUL character")
        return v

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, v: dict[str, RepoRev]) -> dict[str, RepoRev]:
        for name in v:
            if not INPUT_NAME.match(name):
                raise ValueError(
                    f"input name {name!r}: use letters, digits, '.', '_' or '-' (it becomes inputs/<name>/)"
                )
        return v


class JobOut(BaseModel):
    """The shape of `GET /api/v1/jobs/{id}` (documented in the OpenAPI schema)."""

    model_config = ConfigDict(extra="allow")
    id: int
    status: str
    phase: str
    url: str
    submitter: str | None
    spec: dict[str, Any]
    code: dict[str, Any]
    inputs: dict[str, Any]
    output: dict[str, Any] | None
    executor: str
    resources: dict[str, Any]
    environment: dict[str, Any]
    usage: dict[str, Any]
    exit_code: int | None
    reason: str
    message: str
    attempts: int
    priority: int
    rerun_of: int | None
    created_at: str
    started_at: str | None
    ended_at: str | None
