"""What the SDK returns: plain frozen dataclasses built from the server's JSON (unknown keys are ignored,
so a newer server does not break an older client; a `Job` also keeps the whole JSON in `raw`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True)
class OrgMembership:
    name: str
    display_name: str
    role: str


@dataclass(frozen=True)
class UserInfo:
    """The account behind the token (`whoami`)."""

    name: str
    display_name: str
    email: str
    is_admin: bool
    token_scope: str
    orgs: list[OrgMembership]
    description: str = ""
    affiliation: str = ""
    orcid: str = ""
    avatar_url: str = ""
    created_at: datetime | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> UserInfo:
        return cls(
            name=d["name"],
            display_name=d.get("display_name", ""),
            email=d.get("email", ""),
            is_admin=bool(d.get("is_admin")),
            token_scope=d.get("token_scope", ""),
            orgs=[OrgMembership(o["name"], o.get("display_name", ""), o["role"]) for o in d.get("orgs", [])],
            description=d.get("description", ""),
            affiliation=d.get("affiliation", ""),
            orcid=d.get("orcid", ""),
            avatar_url=d.get("avatar_url", ""),
            created_at=_dt(d.get("created_at")),
        )


@dataclass(frozen=True)
class Repo:
    """A repository of any kind (code, dataset or model)."""

    id: str
    owner: str
    name: str
    full_name: str
    kind: str
    private: bool
    description: str
    license: str
    tags: list[str]
    default_branch: str
    created_at: datetime | None
    updated_at: datetime | None
    url: str
    clone_url: str

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Repo:
        return cls(
            id=d["id"],
            owner=d["owner"],
            name=d["name"],
            full_name=d["full_name"],
            kind=d["kind"],
            private=bool(d["private"]),
            description=d.get("description", ""),
            license=d.get("license", ""),
            tags=list(d.get("tags") or []),
            default_branch=d["default_branch"],
            created_at=_dt(d.get("created_at")),
            updated_at=_dt(d.get("updated_at")),
            url=d.get("url", ""),
            clone_url=d.get("clone_url", ""),
        )


@dataclass(frozen=True)
class Commit:
    id: str
    title: str
    message: str
    author_name: str
    author_email: str
    date: datetime | None
    parents: list[str]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Commit:
        author = d.get("author") or {}
        return cls(
            id=d["id"],
            title=d.get("title", ""),
            message=d.get("message", ""),
            author_name=author.get("name", ""),
            author_email=author.get("email", ""),
            date=_dt(d.get("date")),
            parents=list(d.get("parents") or []),
        )


@dataclass(frozen=True)
class TreeEntry:
    """A file, folder or submodule; `path` is relative to the repository root, `size` is None for folders."""

    path: str
    name: str
    type: str
    oid: str
    size: int | None
    lfs_oid: str | None = None  # sha256 of the content of a Git LFS file (`oid` is its pointer's blob id)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TreeEntry:
        lfs = d.get("lfs")
        lfs_oid = (
            str(lfs["oid"]).removeprefix("sha256:") if isinstance(lfs, dict) and lfs.get("oid") else None
        )
        return cls(d["path"], d["name"], d["type"], d["oid"], d.get("size"), lfs_oid)


@dataclass(frozen=True)
class Tree:
    """The entries of a folder at one commit. Iterating a Tree iterates its entries."""

    commit: str
    path: str
    entries: list[TreeEntry]

    def __iter__(self) -> Iterator[TreeEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Tree:
        return cls(d["commit"], d.get("path", ""), [TreeEntry.from_json(e) for e in d["entries"]])


@dataclass(frozen=True)
class Ref:
    """A branch or tag: `name` (main), `ref` (refs/heads/main) and the commit id it points at."""

    name: str
    ref: str
    target: str

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Ref:
        return cls(d["name"], d["ref"], d["target"])


@dataclass(frozen=True)
class Refs:
    default_branch: str
    branches: list[Ref]
    tags: list[Ref]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Refs:
        return cls(
            d["default_branch"],
            [Ref.from_json(r) for r in d.get("branches", [])],
            [Ref.from_json(r) for r in d.get("tags", [])],
        )


@dataclass(frozen=True)
class Token:
    """An API token as listed: never the secret itself, only its first characters (`prefix`)."""

    id: str
    name: str
    scope: str
    prefix: str
    created_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Token:
        return cls(
            d["id"],
            d["name"],
            d["scope"],
            d.get("prefix", ""),
            _dt(d.get("created_at")),
            _dt(d.get("last_used_at")),
        )


@dataclass(frozen=True)
class NewToken(Token):
    """A token just created: `token` is the secret, shown this once."""

    token: str = field(default="", repr=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NewToken:
        t = Token.from_json(d)
        return cls(t.id, t.name, t.scope, t.prefix, t.created_at, t.last_used_at, token=d["token"])


@dataclass(frozen=True)
class Download:
    """The result of `Client.download`: the commit every file was read at, and where the files are."""

    commit: str
    local_dir: Path
    files: list[Path]


@dataclass(frozen=True)
class UploadResult:
    """The result of `Client.upload_with_result`: the commit, and what moved over the wire.

    Files larger than 1 MiB travel as content-defined chunks, and only the chunks the server lacks are
    sent: `bytes_sent` (chunk frames and file parts of the commit request) is then often far below
    `bytes_total` (the size of the files uploaded)."""

    commit: str
    files: list[str]
    bytes_total: int
    bytes_sent: int
    chunked_files: list[str] = field(default_factory=list)  # stored in the blob store, as Git LFS files
    changed: bool = True  # False: the branch already had these files; no commit was made (`commit`: head)

    @property
    def bytes_deduplicated(self) -> int:
        """Bytes of the files the server already had (never below 0: frames add a few bytes)."""
        return max(0, self.bytes_total - self.bytes_sent)


# --- jobs ------------------------------------------------------------------------------------------------

JOB_FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "timeout"})


def _int(value: Any) -> int | None:
    """An int, or None when absent or not a number (the raw JSON keeps whatever the server sent)."""
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class JobRef:
    """A repository a job reads (its code, or an input): the revision asked for and the commit it
    resolved to when the job was submitted."""

    repo: str
    kind: str
    rev: str | None
    commit: str | None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> JobRef:
        return cls(d["repo"], d.get("kind", ""), d.get("rev"), d.get("commit"))


@dataclass(frozen=True)
class JobOutput:
    """Where a job's `outputs/` goes: a branch of a dataset or model; `commit` once the job succeeded."""

    repo: str
    kind: str
    branch: str
    commit: str | None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> JobOutput:
        return cls(d["repo"], d.get("kind", ""), d.get("branch", ""), d.get("commit"))


@dataclass(frozen=True)
class JobResources:
    """What the job may use: CPUs, memory (bytes), time limit (seconds) and GPUs."""

    cpus: int
    memory: int
    time_limit: int
    gpus: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> JobResources:
        return cls(
            int(d.get("cpus", 1)), int(d.get("memory", 0)), int(d.get("time_limit", 0)), int(d.get("gpus", 0))
        )


@dataclass(frozen=True)
class JobEnvironment:
    """The environment the command ran in: the requirements asked for, and once it was built, its key,
    Python version and every installed package as `name==version`."""

    requirements: list[str]
    key: str = ""
    python: str = ""
    packages: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> JobEnvironment:
        return cls(
            list(d.get("requirements") or []),
            str(d.get("key") or ""),
            str(d.get("python") or ""),
            list(d.get("packages") or []),
        )


@dataclass(frozen=True)
class JobUsage:
    """What the job used (known once its command ended; None where the executor could not tell)."""

    cpu_seconds: float | None = None
    max_rss_bytes: int | None = None
    wall_seconds: float | None = None
    host: str | None = None
    signal: str | None = None  # the signal that ended the command, by name (SIGTERM, SIGKILL)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> JobUsage:
        return cls(
            _float(d.get("cpu_seconds")),
            _int(d.get("max_rss_bytes")),
            _float(d.get("wall_seconds")),
            d.get("host"),
            None if d.get("signal") is None else str(d["signal"]),
        )


@dataclass(frozen=True)
class Job:
    """A job and its provenance, as `GET /api/v1/jobs/{id}` shows it.

    `status` is queued, running, succeeded, failed, cancelled or timeout; `phase` the step within it
    (waiting, preparing, pending, executing, collecting, done). `spec` is the request as normalized by
    the server. Every field of the server's JSON, also ones this SDK does not know yet, stays readable
    as `job["field"]` (and in `job.raw`)."""

    id: int
    status: str
    phase: str
    url: str
    submitter: str | None
    command: list[str]
    code: JobRef
    inputs: dict[str, JobRef]
    output: JobOutput | None
    executor: str
    resources: JobResources
    environment: JobEnvironment
    usage: JobUsage
    exit_code: int | None
    reason: str
    message: str
    attempts: int
    priority: int
    rerun_of: int | None
    cancel_requested: bool
    created_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    spec: dict[str, Any] = field(default_factory=dict, repr=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        """Whether the job has ended (succeeded, failed, cancelled or timed out)."""
        return self.status in JOB_FINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Job:
        output = d.get("output")
        return cls(
            id=int(d["id"]),
            status=d["status"],
            phase=d.get("phase", ""),
            url=d.get("url", ""),
            submitter=d.get("submitter"),
            command=list(d.get("command") or []),
            code=JobRef.from_json(d["code"]),
            inputs={name: JobRef.from_json(ref) for name, ref in (d.get("inputs") or {}).items()},
            output=JobOutput.from_json(output) if output else None,
            executor=d.get("executor", ""),
            resources=JobResources.from_json(d.get("resources") or {}),
            environment=JobEnvironment.from_json(d.get("environment") or {}),
            usage=JobUsage.from_json(d.get("usage") or {}),
            exit_code=_int(d.get("exit_code")),
            reason=d.get("reason") or "",
            message=d.get("message") or "",
            attempts=int(d.get("attempts") or 0),
            priority=int(d.get("priority") or 0),
            rerun_of=_int(d.get("rerun_of")),
            cancel_requested=bool(d.get("cancel_requested")),
            created_at=_dt(d.get("created_at")),
            started_at=_dt(d.get("started_at")),
            ended_at=_dt(d.get("ended_at")),
            spec=dict(d.get("spec") or {}),
            raw=dict(d),
        )


@dataclass(frozen=True)
class JobLog:
    """A piece of a job's log: `data` from byte `offset` to `next_offset`, read when the job was `status`."""

    data: bytes
    offset: int
    next_offset: int
    status: str

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class JobEnd:
    """How a followed job ended: the `end` event of its log stream."""

    status: str
    exit_code: int | None
    message: str

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"
