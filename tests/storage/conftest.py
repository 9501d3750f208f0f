"""Fixtures of the blob store tests: a store over the test's own home and database."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from blake3 import blake3
from sqlalchemy import update

from opensci.db import Database
from opensci.db.base import utcnow
from opensci.settings import Settings
from opensci.storage.models import StorageChunk, StorageObject
from opensci.storage.store import BlobStore


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    settings.ensure_dirs()
    database = Database(settings.effective_database_url)
    yield database
    database.dispose()


@pytest.fixture
def make_store(settings: Settings, db: Database) -> Iterator[Callable[..., BlobStore]]:
    """A BlobStore over the test's home and database; keyword arguments override settings."""
    stores: list[BlobStore] = []

    def make(**overrides: object) -> BlobStore:
        s = settings.model_copy(update=overrides) if overrides else settings
        store = BlobStore(s, db)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store: Callable[..., BlobStore]) -> BlobStore:
    return make_store()


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def sha256(data: bytes) -> str:
    """A file's sha256 (its Git LFS oid), in hex."""
    return hashlib.sha256(data).hexdigest()


def chunk_name(data: bytes) -> str:
    """A chunk's name (the BLAKE3 of its bytes), in hex."""
    return blake3(data).hexdigest()


def backdate(db: Database, seconds: float, oids: list[str] | None = None) -> None:
    """Make objects (all, or these) and every chunk look last used `seconds` ago."""
    when = utcnow() - timedelta(seconds=seconds)
    with db.session() as session:
        stmt = update(StorageObject).values(touched_at=when, created_at=when)
        if oids is not None:
            stmt = stmt.where(StorageObject.oid.in_(oids))
        session.execute(stmt)
        if oids is None:
            session.execute(update(StorageChunk).values(touched_at=when, created_at=when))
        session.commit()
