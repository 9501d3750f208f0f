"""Tables of the repos domain: metadata only; content and history live in git."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, Boolean, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from opensci.accounts.models import Owner
from opensci.db.base import Base, UTCDateTime, new_id, utcnow


class RepoKind(StrEnum):
    code = "code"
    dataset = "dataset"
    model = "model"


class Repository(Base):
    __tablename__ = "repositories"
    __table_args__ = (
        UniqueConstraint("owner_id", "name_key"),
        Index("ix_repositories_kind_private", "kind", "private"),
    )

    # Immutable: names the bare repository on disk, so renames and transfers never move files.
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="RESTRICT"), index=True)
    name: Mapped[str] = mapped_column(String(96))
    name_key: Mapped[str] = mapped_column(String(96))
    kind: Mapped[RepoKind] = mapped_column(String(8))
    private: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str] = mapped_column(Text, default="")
    license: Mapped[str] = mapped_column(String(64), default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    default_branch: Mapped[str] = mapped_column(String(200), default="main")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    owner: Mapped[Owner] = relationship(lazy="joined")

    @property
    def full_name(self) -> str:
        return f"{self.owner.name}/{self.name}"

    @property
    def url_path(self) -> str:
        """The web and git path: `/owner/name`, or `/datasets/owner/name` for datasets."""
        prefix = "/datasets" if self.kind == RepoKind.dataset else ""
        return f"{prefix}/{self.owner.name}/{self.name}"
