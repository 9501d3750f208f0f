"""Database side of the blob store: the chunk index, manifests, and the statements both backends share.

Every statement here works on SQLite and PostgreSQL (`INSERT … ON CONFLICT`, `UPDATE … RETURNING`).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from opensci.errors import InvalidInput
from opensci.storage.chunking import MIN_SIZE
from opensci.storage.models import ObjectState, StorageChunk, StorageObject, StoragePack

ENTRY = struct.Struct(">32sI")  # one manifest entry: chunk digest, chunk length
CHECKPOINT = struct.Struct(">I112s")  # chunks hashed so far, the sha256 state after them (see sha256)
BATCH = 500  # hashes per IN (...) list
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Location:
    """Where a chunk's record is: pack, offset of the record, length of the chunk's bytes."""

    pack_id: str
    offset: int
    length: int
    damaged: bool = False
    check: bytes | None = None  # xxh3-64 of the chunk's bytes (see StorageChunk.check)
    legacy: bool = False  # named by its sha256 (see StorageChunk.legacy): no upload may name it


def check_oid(value: str) -> str:
    """A sha256 in lowercase hex (the form Git LFS uses), or InvalidInput."""
    oid = value.strip().lower() if isinstance(value, str) else ""
    if not _HEX64.match(oid):
        raise InvalidInput(f"{value!r} is not a sha256 (64 hexadecimal digits)", code="invalid_oid")
    return oid


def chunk_digest(value: str | bytes) -> bytes:
    """A chunk's name (digest) given as 32 raw bytes or 64 hex digits → 32 raw bytes."""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        if len(raw) != 32:
            raise InvalidInput(f"a chunk's name is 32 bytes, not {len(raw)}", code="invalid_chunk_hash")
        return raw
    text = value.strip().lower() if isinstance(value, str) else ""
    if not _HEX64.match(text):
        raise InvalidInput(
            f"{value!r} is not a chunk's name (its BLAKE3: 64 hexadecimal digits)", code="invalid_chunk_hash"
        )
    return bytes.fromhex(text)


def encode_manifest(entries: Iterable[tuple[bytes, int]]) -> bytes:
    return b"".join(ENTRY.pack(d, n) for d, n in entries)


def decode_manifest(manifest: bytes) -> list[tuple[bytes, int]]:
    return list(ENTRY.iter_unpack(manifest))


def decode_checkpoints(checkpoints: bytes) -> list[tuple[int, bytes]]:
    """An object's sha256 checkpoints, in manifest order (ValueError if the record is damaged)."""
    if len(checkpoints) % CHECKPOINT.size:
        raise ValueError("sha256 checkpoints of a wrong length")
    return list(CHECKPOINT.iter_unpack(checkpoints))


def manifest_digests(manifest: bytes) -> Iterator[bytes]:
    """The chunk hashes of a manifest, without decoding lengths."""
    step = ENTRY.size
    for i in range(0, len(manifest), step):
        yield manifest[i : i + 32]


def batched(items: Sequence[Any], n: int = BATCH) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _insert(session: Session, table: Any) -> Any:
    """The dialect's INSERT, which has `on_conflict_do_nothing/do_update` on both backends."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"the blob store supports SQLite and PostgreSQL, not {name}")


def _dialect(session: Session) -> Any:
    return session.get_bind().dialect


def _in_list(dialect: Any, n: int) -> str:
    """`IN (?, …)` on SQLite; `= ANY(%s)` (one array parameter) on PostgreSQL."""
    return "= ANY(%s)" if dialect.name == "postgresql" else f"IN ({', '.join('?' * n)})"


def _in_params(dialect: Any, values: Sequence[Any]) -> list[Any]:
    return [list(values)] if dialect.name == "postgresql" else list(values)


def _when(dialect: Any, now: datetime) -> Any:
    """`now` as the chunk table's time columns store it (the column type's own conversion)."""
    processor = StorageChunk.__table__.c.touched_at.type.dialect_impl(dialect).bind_processor(dialect)
    return processor(now) if processor is not None else now


# The statements of the upload path run on the DB-API cursor, parameters converted once per statement:
# through the ORM, their per-value processing cost more CPU than SQLite's work (16,000 chunks a GiB).
_Q = {"qmark": "?", "format": "%s", "pyformat": "%s"}


def _sql(dialect: Any, text: str) -> str:
    return text.replace("?", _Q[dialect.paramstyle]) if dialect.name == "postgresql" else text


def touch_chunks(session: Session, digests: Sequence[bytes], now: datetime) -> set[bytes]:
    """Mark these chunks as relied upon now; returns those that exist and may be named by an upload (not
    damaged, not legacy).

    Touching and checking in one statement closes the race with garbage collection: a chunk the
    collector deletes first is reported missing here (and then written again); a chunk touched first
    is younger than the grace period and survives the collection.
    """
    dialect = _dialect(session)
    conn = session.connection()
    when = _when(dialect, now)
    found: set[bytes] = set()
    for part in batched(sorted(set(digests))):
        sql = _sql(
            dialect,
            "UPDATE storage_chunks SET touched_at = ? WHERE damaged = ? AND legacy = ? AND digest "
            f"{_in_list(dialect, len(part))} RETURNING digest",
        )
        rows = conn.exec_driver_sql(sql, (when, False, False, *_in_params(dialect, part)))
        found.update(bytes(r[0]) for r in rows)
    return found


ChunkRow = (
    tuple[bytes, str, int, int]
    | tuple[bytes, str, int, int, bytes | None]
    | tuple[bytes, str, int, int, bytes | None, bool]
)

_INSERT = (
    'INSERT INTO storage_chunks (digest, pack_id, "offset", length, damaged, "check", legacy, created_at, '
    "touched_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (digest) DO UPDATE SET "
    'pack_id = excluded.pack_id, "offset" = excluded."offset", length = excluded.length, '
    '"check" = excluded."check", damaged = excluded.damaged, touched_at = excluded.touched_at '
    "WHERE storage_chunks.damaged = ?"
)


def insert_chunks(session: Session, rows: Sequence[ChunkRow], now: datetime) -> None:
    """Index newly written chunks (digest, pack, offset, length[, xxh3 check[, legacy]]). An existing
    healthy entry wins (the new copy becomes dead space); a damaged entry is repaired to point at the new
    copy, and the objects it kept quarantined are healed (see `heal_objects`)."""
    if not rows:
        return
    dialect = _dialect(session)
    when = _when(dialect, now)
    repaired = damaged_chunks(session, [r[0] for r in rows])
    session.connection().exec_driver_sql(
        _sql(dialect, _INSERT),
        [
            (*r[:4], False, r[4] if len(r) > 4 else None, r[5] if len(r) > 5 else False, when, when, True)
            for r in sorted(rows, key=lambda r: r[0])  # one lock order for concurrent writers
        ],
    )
    if repaired:
        heal_objects(session, repaired)


def damaged_chunks(session: Session, digests: Sequence[bytes]) -> set[bytes]:
    """Which of these chunks the index holds marked damaged."""
    return {bytes(r[0]) for r in _select(session, "digest", "damaged = true AND", digests, BATCH)}


def heal_objects(session: Session, repaired: set[bytes]) -> list[str]:
    """Make ok again, in the caller's transaction, the quarantined objects whose manifest names one of
    the `repaired` chunks (damaged, now healthy) and whose every chunk is now present and healthy; those
    still missing a chunk or holding another damaged one stay quarantined. Returns the healed oids.

    Runs only when a damaged chunk was repaired, and reads only the quarantined objects."""
    candidates: list[tuple[str, set[bytes]]] = []
    rows = session.execute(
        select(StorageObject.oid, StorageObject.manifest)
        .where(StorageObject.state == ObjectState.damaged)
        .execution_options(yield_per=256)
    )
    for oid, manifest in rows:
        digests = set(manifest_digests(manifest))
        if not digests.isdisjoint(repaired):
            candidates.append((oid, digests))
    if not candidates:
        return []
    wanted: set[bytes] = set()
    for _, digests in candidates:
        wanted |= digests
    healthy = present_chunks(session, list(wanted))
    healed = sorted(oid for oid, digests in candidates if digests <= healthy)
    for part in batched(healed):
        session.execute(
            update(StorageObject)
            .where(StorageObject.oid.in_(part), StorageObject.state == ObjectState.damaged)
            .values(state=ObjectState.ok)
        )
    return healed


def _select(session: Session, columns: str, where: str, digests: Sequence[bytes], n: int) -> Iterator[Any]:
    """Rows of `SELECT columns FROM storage_chunks WHERE where AND digest IN digests`, `n` hashes per
    statement, straight from the DB-API cursor (this runs for every read and every upload)."""
    dialect = _dialect(session)
    cursor = session.connection().connection.cursor()
    try:
        for part in batched(list(set(digests)), n):
            sql = f"SELECT {columns} FROM storage_chunks WHERE {where} digest {_in_list(dialect, len(part))}"
            cursor.execute(_sql(dialect, sql), tuple(_in_params(dialect, part)))
            yield from cursor.fetchall()
    finally:
        cursor.close()


def locate(session: Session, digests: Sequence[bytes]) -> dict[bytes, Location]:
    """Where these chunks are (those the index has)."""
    return {
        bytes(d): Location(p, o, n, bool(bad), None if check is None else bytes(check), bool(legacy))
        for d, p, o, n, bad, check, legacy in _select(
            session, 'digest, pack_id, "offset", length, damaged, "check", legacy', "", digests, 256
        )
    }


def present_chunks(session: Session, digests: Sequence[bytes]) -> set[bytes]:
    """Which of these chunks the index holds healthy (a read: nothing is touched)."""
    return {bytes(r[0]) for r in _select(session, "digest", "damaged = false AND", digests, BATCH)}


def short_chunk(manifest: bytes) -> bool:
    """Whether a manifest names a chunk shorter than the chunker's MIN_SIZE before its last one: no file
    our chunker cuts does (see `readback`)."""
    return any(n < MIN_SIZE for _, n in ENTRY.iter_unpack(manifest[: -ENTRY.size]))


def keep_object(session: Session, oid: str, now: datetime) -> bool:
    """Touch the stored object `oid` and every chunk of its manifest, if it is healthy: not damaged,
    every chunk present and healthy, and cut as our chunker cuts. False (nothing kept) when it is absent
    or not healthy, for the caller to store its own manifest instead, which repairs it.

    So an upload of content already stored never replaces the manifest that every holder of the object
    reads (another user's upload of the same content, cut into tiny chunks, would make it slower for all)."""
    row = session.execute(
        select(StorageObject.state, StorageObject.manifest).where(StorageObject.oid == oid)
    ).one_or_none()
    if row is None or row.state != ObjectState.ok or short_chunk(row.manifest):
        return False
    digests = set(manifest_digests(row.manifest))
    if len(touch_chunks(session, list(digests), now)) != len(digests):
        return False
    return touch_object(session, oid, now)


def touch_object(session: Session, oid: str, now: datetime) -> bool:
    """Mark the stored object `oid` as relied upon now, if it is there and healthy (garbage collection
    re-checks this date as it deletes); whether it was."""
    result = session.execute(
        update(StorageObject)
        .where(StorageObject.oid == oid, StorageObject.state == ObjectState.ok)
        .values(touched_at=now)
    )
    return bool(result.rowcount)


def upsert_object(
    session: Session, oid: str, size: int, manifest: bytes, now: datetime, checkpoints: bytes | None = None
) -> None:
    """Make an object visible with this manifest (or repair a damaged one: replacing what is there; see
    `keep_object` for an object already stored healthy). The caller has made sure that every chunk of
    `manifest` is durable, indexed and healthy, in this same transaction."""
    stmt = _insert(session, StorageObject).values(
        oid=oid,
        size=size,
        chunk_count=len(manifest) // ENTRY.size,
        manifest=manifest,
        checkpoints=checkpoints,
        state=ObjectState.ok,
        created_at=now,
        touched_at=now,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[StorageObject.oid],
        set_={
            "touched_at": now,
            "state": ObjectState.ok,
            "manifest": stmt.excluded.manifest,
            "checkpoints": stmt.excluded.checkpoints,
            "chunk_count": stmt.excluded.chunk_count,
        },
    )
    session.execute(stmt)


def record_pack_size(session: Session, pack_id: str, size: int, *, sealed: bool = False) -> None:
    values: dict[str, Any] = {"size": size}
    if sealed:
        values["sealed"] = True
    session.execute(update(StoragePack).where(StoragePack.id == pack_id).values(**values))
