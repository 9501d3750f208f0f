"""Damaged bytes on disk: reads refuse them with a clear error, the scrub quarantines them, a fresh upload
repairs them."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opensci.cli.main import app as cli
from opensci.db import Database
from opensci.settings import Settings
from opensci.storage.errors import ObjectDamaged
from opensci.storage.index import ENTRY, Location, locate
from opensci.storage.maintenance import stats, verify
from opensci.storage.packs import HEADER, pack_path
from opensci.storage.store import BlobStore
from tests.storage.conftest import random_bytes

runner = CliRunner()


def chunk_locations(store: BlobStore, oid: str) -> list[tuple[bytes, Location]]:
    row = store._row(oid)
    digests = [row.manifest[i : i + 32] for i in range(0, len(row.manifest), ENTRY.size)]
    with store.db.session() as session:
        found = locate(session, digests)
    return [(d, found[d]) for d in digests]


def flip_byte(store: BlobStore, loc: Location, at: int = 100) -> None:
    path = pack_path(store.packs_dir, loc.pack_id)
    with open(path, "r+b") as fh:
        fh.seek(loc.offset + HEADER + at)
        byte = fh.read(1)
        fh.seek(loc.offset + HEADER + at)
        fh.write(bytes([byte[0] ^ 0x01]))


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("OPENSCI_HOME", str(settings.home))
    monkeypatch.setenv("OPENSCI_DATABASE_URL", settings.effective_database_url)
    return settings


def test_a_flipped_byte_is_refused_on_read_and_quarantined_by_verify(
    store: BlobStore, db: Database, cli_env: Settings
) -> None:
    data = random_bytes(3_000_000, 30)
    other = data[:1_000_000] + random_bytes(500_000, 31)  # shares its first chunks with `data`
    oid = store.put(io.BytesIO(data)).oid
    other_oid = store.put(io.BytesIO(other)).oid
    healthy_oid = store.put(io.BytesIO(random_bytes(700_000, 32))).oid
    result = runner.invoke(cli, ["storage", "verify"])
    assert result.exit_code == 0, result.output
    assert "no damage found" in result.output

    digest, loc = chunk_locations(store, oid)[2]  # inside the region both files share
    flip_byte(store, loc)

    # A read reaching the damaged chunk fails loudly, never with wrong bytes.
    with store.open(oid) as fh, pytest.raises(ObjectDamaged) as exc:
        fh.read()
    assert digest.hex() in exc.value.message and "damaged" in exc.value.message
    assert exc.value.code == "object_damaged"
    # Reads before the damage still work for a ranged request that stays clear of it.
    assert b"".join(store.iter_range(healthy_oid)) == random_bytes(700_000, 32)

    report = verify(store)
    assert not report.ok
    assert report.damaged_chunks == 1
    assert report.damaged_objects == 2  # both files using the chunk
    assert set(report.damaged_object_examples) == {oid, other_oid}
    assert not store.has(oid) and not store.has(other_oid) and store.has(healthy_oid)
    assert store.stat(oid).state == "damaged"
    with pytest.raises(ObjectDamaged) as exc:
        store.open(other_oid)
    assert "quarantined" in exc.value.message

    result = runner.invoke(cli, ["storage", "verify"])
    assert result.exit_code == 1
    assert "DAMAGED" in result.output and oid in result.output
    result = runner.invoke(cli, ["storage", "verify", "--json"])
    assert result.exit_code == 1
    report_json = json.loads(result.stdout)
    assert report_json["ok"] is False and report_json["damaged_objects"] == 2

    # Uploading the file again repairs it, and at once the other file that shared the chunk.
    store.put(io.BytesIO(data))
    assert store.has(oid) and store.has(other_oid)
    assert b"".join(store.iter_range(oid)) == data
    assert b"".join(store.iter_range(other_oid)) == other
    report = verify(store)
    assert report.ok, report
    assert report.repaired_objects == 0  # nothing left for the scrub to heal
    assert runner.invoke(cli, ["storage", "verify"]).exit_code == 0


@pytest.mark.parametrize("repair", ["upload of one file", "the damaged chunk sent again"])
def test_repairing_a_shared_chunk_heals_every_object_that_uses_it(
    store: BlobStore, cli_env: Settings, repair: str
) -> None:
    """Three files share a chunk; a fourth shares it too but has a damaged chunk of its own. Once the
    shared chunk is replaced by good bytes, the three are served again at once (no scrub needed), and
    the fourth stays quarantined until its own chunk is repaired."""
    shared = random_bytes(1_000_000, 40)
    datas = [shared + random_bytes(400_000, 41 + i) for i in range(4)]
    oids = [store.put(io.BytesIO(d)).oid for d in datas]
    entries = chunk_locations(store, oids[0])
    digest, loc = entries[2]  # inside the region all four share
    assert all(digest in dict(chunk_locations(store, oid)) for oid in oids)
    flip_byte(store, loc)
    flip_byte(store, chunk_locations(store, oids[3])[-1][1])  # the fourth file's alone
    assert runner.invoke(cli, ["storage", "verify"]).exit_code == 1
    assert (stats(store).damaged_chunks, stats(store).damaged_objects) == (2, 4)

    if repair == "upload of one file":
        store.put(io.BytesIO(datas[1]))
    else:  # what a chunk upload does (the SDK and the chunk API, after `missing_chunks` named it)
        assert store.missing_chunks([digest]) == {digest}
        start = sum(n.length for _, n in entries[:2])
        assert store.put_chunk(digest, datas[0][start : start + loc.length])

    s = stats(store)
    assert (s.damaged_chunks, s.damaged_objects) == (1, 1), s
    for oid, data in zip(oids[:3], datas[:3], strict=True):
        assert store.has(oid)
        assert b"".join(store.iter_range(oid)) == data
    assert not store.has(oids[3])
    result = runner.invoke(cli, ["storage", "stats"])
    assert "objects: 4 " in result.output and ", 1 damaged" in result.output.splitlines()[0], result.output

    store.put(io.BytesIO(datas[3]))  # repairs the fourth file's own chunk: now it is whole
    assert store.has(oids[3]) and stats(store).damaged_objects == 0
    assert verify(store).ok


def test_verify_finds_damage_nobody_read_yet(store: BlobStore) -> None:
    data = random_bytes(2_000_000, 33)
    oid = store.put(io.BytesIO(data)).oid
    _, loc = chunk_locations(store, oid)[-1]
    flip_byte(store, loc, at=loc.length - 1)
    assert store.has(oid)  # nobody knows yet
    report = verify(store)
    assert report.newly_damaged_chunks == 1 and report.damaged_objects == 1
    with pytest.raises(ObjectDamaged):
        store.open(oid)


def test_a_truncated_pack_is_damage_too(make_store: Callable[..., BlobStore]) -> None:
    store = make_store()
    data = random_bytes(2_000_000, 34)
    oid = store.put(io.BytesIO(data)).oid
    store.close()
    _, loc = chunk_locations(store, oid)[-1]
    path: Path = pack_path(store.packs_dir, loc.pack_id)
    with open(path, "r+b") as fh:
        fh.truncate(loc.offset + 10)
    with pytest.raises(ObjectDamaged):
        b"".join(store.iter_range(oid))
    report = verify(store)
    assert report.damaged_chunks == 1 and report.damaged_objects == 1


def test_a_missing_pack_is_reported(make_store: Callable[..., BlobStore]) -> None:
    store = make_store()
    oid = store.put(io.BytesIO(random_bytes(500_000, 35))).oid
    store.close()
    _, loc = chunk_locations(store, oid)[0]
    pack_path(store.packs_dir, loc.pack_id).unlink()
    report = verify(store)
    assert report.missing_packs == [loc.pack_id]
    assert report.damaged_objects == 1
    with pytest.raises(ObjectDamaged):
        store.open(oid)
