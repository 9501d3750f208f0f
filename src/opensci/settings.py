"""Configuration: one Settings object, read from OPENSCI_* environment variables and an optional TOML file.

Precedence, highest first: environment variables, `opensci.toml` (in the working directory, or the file
named by OPENSCI_CONFIG), then the defaults below. Every field carries a description; the README's table
of settings is checked against them by a test.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _config_file() -> Path:
    return Path(os.environ.get("OPENSCI_CONFIG", "opensci.toml"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPENSCI_", extra="ignore")

    home: Path = Field(
        Path("./var"),
        description="Data directory: the SQLite database, git repositories, blobs, derived data, job files.",
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of the database. Empty means SQLite at HOME/opensci.db; "
        "for PostgreSQL use postgresql+psycopg://user:password@host/dbname.",
    )
    base_url: str = Field(
        "http://127.0.0.1:8000",
        description="Public URL of this server, used in clone instructions and links.",
    )
    secret_key: str = Field(
        "",
        description="Secret for signing cookies. Empty means a random key kept in HOME/secret_key.",
    )
    open_registration: bool = Field(True, description="Whether anyone may register an account.")
    max_upload_bytes: int = Field(
        5 * 1024**3,
        description="Largest request body accepted (file uploads, commits, git pushes), in bytes.",
    )
    secure_cookies: bool | None = Field(
        None,
        description="Mark cookies Secure (HTTPS only). Unset means: when BASE_URL starts with https.",
    )
    session_days: int = Field(30, description="How long a web login lasts, in days.")
    log_level: str = Field("info", description="Log level: debug, info, warning or error.")
    git_binary: str = Field("git", description="The git executable used for smart HTTP.")
    storage_pack_max_bytes: int = Field(
        1024**3,
        ge=1024**2,
        description="Size at which the blob store starts a new pack file, in bytes.",
    )
    storage_gc_grace_seconds: int = Field(
        86400,
        ge=0,
        description="Blob store garbage collection spares objects and chunks used more recently than this.",
    )
    storage_default_quota_bytes: int = Field(
        0,
        ge=0,
        description="Blob store bytes each user or organization may hold, unless an operator set its own "
        "quota (`opensci storage quota`). 0 means unlimited.",
    )
    lfs_threshold_bytes: int = Field(
        10 * 1024**2,
        ge=0,
        description="Files larger than this, committed through the REST API or the Hub API, are "
        "stored in the blob store (deduplicated) and committed as Git LFS pointers.",
    )
    lfs_link_seconds: int = Field(
        3600,
        ge=60,
        description="How long the upload and download links handed out by the Git LFS batch API stay valid.",
    )
    sql_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest a SQL query over a dataset may run, streaming its result included; then it is "
        "stopped with 422 `query_timeout`.",
    )
    sql_memory_limit: str = Field(
        "1GB",
        description="Memory limit per SQL query (e.g. 512MB, 2GB): DuckDB's own limit, and the cap (plus "
        "256 MiB) on the data of the worker process that runs the query, which covers values DuckDB builds "
        "outside its limit; nothing spills to disk, so a query that needs more gets 413 `query_too_large`.",
    )

    sql_threads: int = Field(2, ge=1, description="DuckDB threads per SQL query.")
    sql_max_concurrent: int = Field(
        4,
        ge=1,
        description="SQL queries one server process runs at once; more wait briefly, then get 503 "
        "`too_many_queries`.",
    )
    sql_json_row_limit: int = Field(
        1000,
        ge=1,
        description="Most rows in a JSON answer of the SQL endpoint (`truncated: true` when rows were left "
        "out); CSV and Parquet downloads have no row limit.",
    )
    sql_votable_row_limit: int = Field(
        1_000_000,
        ge=1,
        description="Most rows in a VOTable answer of the SQL endpoint (built in memory); the rest are left "
        "out and marked QUERY_STATUS=OVERFLOW.",
    )
    hub_regular_upload_max_bytes: int = Field(
        50_000_000,
        ge=0,
        description="Hugging Face clients send files up to this size inline in the commit (any client "
        "works, Xet or not); larger files go through Git LFS (set HF_HUB_DISABLE_XET=1).",
    )
    storage_direct_io: bool = Field(
        True,
        description="Write pack files, and read a new object back to check it, with direct I/O (O_DIRECT, "
        "bypassing the page cache): one memory copy less per byte uploaded. Ordinary I/O is used where "
        "the filesystem refuses it.",
    )
    storage_verify_reads: bool = Field(
        True,
        description="Check every chunk as the blob store reads it, against its xxh3-64 checksum (sha256 "
        "is checked when chunks are written and by `opensci storage verify`).",
    )

    compute_executors: str = Field(
        "local",
        description="Executors jobs may use, comma-separated: `local` (subprocesses on this machine) and "
        "`slurm` (a Slurm cluster; see the `compute_slurm_*` settings).",
    )
    compute_default_executor: str = Field("local", description="Executor of a job that names none.")
    compute_scheduler: bool = Field(
        True,
        description="Run the job scheduler inside this server process (`opensci compute worker` runs it on "
        "its own). Any number of schedulers may share one PostgreSQL database.",
    )
    compute_local_cpus: int = Field(
        0,
        ge=0,
        description="CPUs the local executor hands out to jobs at once (a job takes `resources.cpus`); "
        "0 means all the machine's CPUs.",
    )
    compute_local_memory_bytes: int = Field(
        0,
        ge=0,
        description="Memory the local executor hands out to jobs at once, in bytes (a job takes its "
        "`resources.memory`; one asking more than all of it is refused); 0 means the machine's memory.",
    )
    compute_max_running_per_user: int = Field(
        4,
        ge=0,
        description="Jobs one user may have running at once (others wait in the queue); 0 means no limit.",
    )
    compute_max_queued_per_user: int = Field(
        1000,
        ge=0,
        description="Jobs one user may have waiting in the queue at once; a submission beyond it is refused "
        "(429 `too_many_queued_jobs`). 0 means no limit.",
    )
    compute_default_memory_bytes: int = Field(
        2 * 1024**3, ge=1024**2, description="Memory limit of a job that states none, in bytes."
    )
    compute_max_memory_bytes: int = Field(
        0, ge=0, description="Largest memory limit a job may ask for, in bytes; 0 means the machine's memory."
    )
    compute_default_time_limit: int = Field(
        3600, ge=1, description="Time limit of a job that states none, in seconds."
    )
    compute_max_time_limit: int = Field(
        7 * 86400, ge=1, description="Largest time limit a job may ask for, in seconds."
    )
    compute_sandbox: str = Field(
        "auto",
        description="Sandbox of local jobs: `bwrap` (bubblewrap: no network unless the job asks, no "
        "privileges even when the server runs as root, inputs and environment read-only, /tmp on the job's "
        "disk, nothing of the host's home or the platform's data visible), `none` (jobs run as the server's "
        "user and can read everything it can), or `auto` (bwrap when it is installed and works).",
    )
    compute_slurm_sandbox: str = Field(
        "auto",
        description="Sandbox of Slurm jobs on the nodes, as `compute_sandbox`: `auto` uses bubblewrap when "
        "it works on the server's machine, so the nodes need it at the same path; `none` runs jobs with the "
        "full rights of the Slurm user that submits them (the server's).",
    )
    compute_sandbox_uid_base: int = Field(
        200_000,
        ge=1000,
        description="When the server runs as root, each sandboxed job runs as a host user of its own, uid "
        "(and gid) this base plus the job's id modulo 65536: a user that owns nothing, so a job reads only "
        "what everyone may read, and jobs cannot reach each other's keys, processes or limits. The range "
        "must hold no real user. Not used by a server that is not root (its jobs run as the server's user).",
    )
    compute_input_cache_bytes: int = Field(
        100 * 1024**3,
        ge=0,
        description="Disk the cache of jobs' large input files may use (HOME/jobs/objects, files linked into "
        "job directories); the least recently used files no job uses are removed past it. 0 means no limit.",
    )
    compute_max_output_bytes: int = Field(
        100 * 1024**3,
        ge=0,
        description="Most bytes a job's outputs may hold (their files' sizes, holes included); a job that "
        "writes more fails with reason `outputs` and nothing is committed. 0 means no limit.",
    )
    compute_max_processes: int = Field(
        4096,
        ge=16,
        description="Most processes and threads one local job may have at once (a cgroup limit, where the "
        "server may make cgroups).",
    )
    compute_allow_network: bool = Field(
        True,
        description="Whether jobs may ask for network access (`env.network`); sandboxed jobs have none "
        "otherwise. With `false`, such jobs are refused.",
    )
    compute_max_log_bytes: int = Field(
        100 * 1024**2,
        ge=0,
        description="Most bytes of a job's output kept in its log; the rest is counted and dropped (the log "
        "says so). 0 means no limit.",
    )
    compute_python: str = Field(
        "",
        description="Python interpreter that runs the job shim and builds job environments; must exist at "
        "the same path on every Slurm node. Empty means the interpreter the server runs on.",
    )
    compute_env_timeout_seconds: int = Field(
        900, ge=10, description="Longest the installation of a job's requirements may take, in seconds."
    )
    compute_max_attempts: int = Field(
        2,
        ge=1,
        description="Times a job is started in all: a job lost to a crash (its processes gone without an "
        "exit status) is queued again until it has been tried this often, then it fails.",
    )
    compute_lease_seconds: int = Field(
        30,
        ge=2,
        description="A scheduler that has not renewed its claim on a running job for this long is presumed "
        "dead, and another scheduler takes the job over.",
    )
    compute_poll_seconds: float = Field(
        0.5, gt=0, description="How often the scheduler looks for new jobs and at running ones, in seconds."
    )
    compute_keep_work_dirs: bool = Field(
        False,
        description="Keep a finished job's working directory (checkout, inputs, outputs) under "
        "HOME/jobs/<id>/work; logs and status are always kept.",
    )
    compute_slurm_bin_dir: str = Field(
        "",
        description="Directory of the Slurm commands (sbatch, squeue, sacct, scontrol, scancel). Empty means "
        "they are found on PATH.",
    )
    compute_slurm_partition: str = Field(
        "",
        description="Slurm partition jobs are submitted to (`--partition`). Empty means the cluster's "
        "default.",
    )
    compute_slurm_account: str = Field(
        "",
        description="Slurm account jobs are charged to (`--account`). Empty means the submitting user's "
        "default.",
    )
    compute_slurm_sbatch_args: str = Field(
        "",
        description="More sbatch options for every job, split like a shell command line (e.g. "
        "`--qos=normal --constraint=avx2`).",
    )
    compute_slurm_time_margin_seconds: int = Field(
        60,
        ge=0,
        description="Added to a job's time limit in the time limit given to Slurm (which counts in whole "
        "minutes), so that the job's own limit, enforced exactly, speaks first.",
    )
    compute_slurm_use_sacct: bool = Field(
        True,
        description="Read how a job ended from Slurm's accounting (`sacct`); without it (or when the cluster "
        "has no accounting) from `scontrol show job`, which forgets finished jobs after Slurm's MinJobAge.",
    )
    compute_slurm_command_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest a Slurm command (sbatch, squeue, sacct …) may take before it counts as failed.",
    )

    @field_validator("sql_memory_limit")
    @classmethod
    def _memory_size(cls, value: str) -> str:
        """A size DuckDB and the worker's cap both understand, refused at start-up rather than per query."""
        from opensci.data.sql_worker import size_bytes  # stdlib only; settings load before any domain

        if size_bytes(value) <= 0:
            raise ValueError(f"not a memory size: {value!r} (write e.g. 512MB or 2GB)")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=_config_file()))

    # Derived locations, all below HOME (see DESIGN.md, "Layout on disk").
    @property
    def git_dir(self) -> Path:
        return self.home / "git"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def envs_dir(self) -> Path:
        return self.home / "envs"

    @property
    def enabled_executors(self) -> list[str]:
        return [x.strip() for x in self.compute_executors.split(",") if x.strip()]

    @property
    def tmp_dir(self) -> Path:
        return self.home / "tmp"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'opensci.db').resolve()}"

    @property
    def cookies_secure(self) -> bool:
        if self.secure_cookies is not None:
            return self.secure_cookies
        return self.base_url.startswith("https://")

    def ensure_dirs(self) -> None:
        for d in (self.home, self.git_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)

    def effective_secret_key(self) -> str:
        if self.secret_key:
            return self.secret_key
        path = self.home / "secret_key"
        if not path.exists():
            import secrets

            self.ensure_dirs()
            tmp = path.with_suffix(".tmp")
            tmp.write_text(secrets.token_urlsafe(48))
            tmp.chmod(0o600)
            os.replace(tmp, path)
        return path.read_text().strip()


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests build their own Settings and pass them to create_app."""
    return Settings()
