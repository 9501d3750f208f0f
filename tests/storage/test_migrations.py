"""Upgrading a store's database keeps its chunk index: 0005 renames `storage_chunks.sha256` to `digest`
(chunks stored before BLAKE3 names keep their sha256 as their name, marked legacy), on SQLite and
PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from opensci.db import Database
from tests.conftest import BACKEND, PG_ADMIN_URL


@pytest.fixture
def empty_url(tmp_path: Path) -> Iterator[str]:
    if BACKEND == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    name = f"opensci_migrate_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{os.getpid()}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_upgrading_keeps_the_chunk_index_under_its_new_column_name(empty_url: str) -> None:
    db = Database(empty_url)
    try:
        db.upgrade("0004")
        name = bytes(range(32))
        with db.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO storage_packs (id, size, live_bytes, sealed, created_at) "
                    "VALUES ('p1', 100, 40, false, CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(
                sa.text(
                    'INSERT INTO storage_chunks (sha256, pack_id, "offset", length, damaged, created_at, '
                    "touched_at) VALUES (:d, 'p1', 16, 24, false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"d": name},
            )
        db.upgrade()
        with db.engine.connect() as conn:
            rows = conn.execute(sa.text('SELECT digest, pack_id, "offset", legacy FROM storage_chunks')).all()
        assert [(bytes(r[0]), r[1], r[2], bool(r[3])) for r in rows] == [(name, "p1", 16, True)]
        command.downgrade(db.alembic_config(), "0004")  # and back
        with db.engine.connect() as conn:
            assert bytes(conn.execute(sa.text("SELECT sha256 FROM storage_chunks")).scalar_one()) == name
    finally:
        db.dispose()
