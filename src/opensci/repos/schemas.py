"""Wire shapes of the repos domain."""

from __future__ import annotations

from datetime import datetime
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, Field

from opensci.repos.models import RepoKind


class RepoCreate(BaseModel):
    name: str
    kind: RepoKind = RepoKind.code
    private: bool = False
    owner: str | None = Field(None, description="User or organization; default: the caller.")
    description: str = ""
    license: str = ""
    tags: list[str] = []


class RepoUpdate(BaseModel):
    name: str | None = None
    owner: str | None = Field(None, description="Transfer to another user or organization.")
    private: bool | None = None
    description: str | None = None
    license: str | None = None
    tags: list[str] | None = None
    default_branch: str | None = None


class RepoOut(BaseModel):
    id: str
    owner: str
    name: str
    full_name: str
    kind: RepoKind
    private: bool
    description: str
    license: str
    tags: list[str]
    default_branch: str
    created_at: datetime
    updated_at: datetime
    url: str
    clone_url: str


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    page: int
    per_page: int
    total: int | None = None
    next_page: int | None = None


class CommitOut(BaseModel):
    id: str
    title: str
    message: str
    author: dict[str, str]
    date: datetime
    parents: list[str]


class LfsOut(BaseModel):
    oid: str = Field(description="sha256 of the content")
    size: int
    pointer_size: int


class TreeEntryOut(BaseModel):
    path: str
    name: str
    type: Literal["file", "dir", "submodule"]
    oid: str = Field(description="The git object id (of the pointer, for Git LFS files).")
    size: int | None = Field(description="Bytes of the content (of the stored object, for Git LFS files).")
    lfs: LfsOut | None = None


class TreeOut(BaseModel):
    commit: str
    path: str
    entries: list[TreeEntryOut]


class RefOut(BaseModel):
    name: str
    ref: str
    target: str


class RefsOut(BaseModel):
    default_branch: str
    branches: list[RefOut]
    tags: list[RefOut]


class RefCreate(BaseModel):
    type: Literal["branch", "tag"] = "branch"
    name: str
    revision: str | None = Field(
        None, description="Branch, tag or commit to point at; default: the default branch."
    )
    message: str | None = Field(None, description="For tags: makes an annotated tag with this message.")


class CommitCreated(BaseModel):
    commit: str
    branch: str
    parent: str | None
    changed: bool = Field(
        True, description="False when the files were already so: no commit was made, `commit` is the head."
    )
