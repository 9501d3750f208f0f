"""Configuration: one Settings object, read from OPENSCI_* environment variables and an optional TOML file.

Precedence, highest first: environment variables, `opensci.toml` (in the working directory, or the file
named by OPENSCI_CONFIG), then the defaults below. Every field carries a description; the README's table
of settings is checked against them by a test.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
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
        description="DuckDB memory limit per SQL query (e.g. 512MB, 2GB); nothing spills to disk, so a query "
        "that needs more gets 413 `query_too_large`.",
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
    storage_verify_reads: bool = Field(
        True,
        description="Check every chunk as the blob store reads it, against its xxh3-64 checksum (sha256 "
        "is checked when chunks are written and by `opensci storage verify`).",
    )

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
