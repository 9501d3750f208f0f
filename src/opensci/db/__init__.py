"""Database: engine and sessions, the declarative base, Alembic migrations."""

from opensci.db.base import Base
from opensci.db.session import Database

__all__ = ["Base", "Database"]
