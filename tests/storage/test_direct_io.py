"""Direct I/O in the blob store: pack writers that bypass the page cache write exactly the bytes ordinary
writes do, keep packs ending at their last record, cut back cleanly after a failure, and the read-back
that checks a new object works while other uploads append to the same pack."""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import queue
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from xxhash import xxh3_64_digest

from opensci.storage import readback
from opensci.storage.chunking import chunk_id
from opensci.storage.errors import ObjectDamaged
from opensci.storage.index import Location
from opensci.storage.maintenance import verify
from opensci.storage.packs import (
    ALIGN,
    HEADER,
    PACK_HEADER,
    STAGE_BYTES,
    PackWriter,
    open_direct,
    pack_path,
    scan_pack,
)
from opensci.storage.readback import SPAN_BYTES
from opensci.storage.store import BlobStore
from tests.conftest import need
from tests.storage.conftest import random_bytes, sha256
from tests.storage.test_api_uploads import cut
from tests.storage.test_corruption import chunk_locations, flip_byte

MiB = 1024 * 1024


def direct_writer(root: Path) -> PackWriter:
    writer = PackWriter(root, 1024**3, direct=True)
    need(writer.direct, f"the filesystem of {root} refuses O_DIRECT")
    return writer


def records(rng: random.Random, n: int) -> list[tuple[bytes, bytes]]:
    """Chunks of awkward sizes: tiny, around a block, typical, and one larger than the staging buffer."""
    sizes = [1, 7, ALIGN - 40, ALIGN, ALIGN + 1, 65_536, 200_001, STAGE_BYTES + 12_345]
    out = []
    for i in range(n):
        data = rng.randbytes(sizes[i % len(sizes)] if i % 3 else rng.randrange(1, 300_000))
        out.append((hashlib.sha256(data).digest(), data))
    return out


def test_direct_and_ordinary_writers_write_the_same_packs(tmp_path: Path) -> None:
    rng = random.Random(1)
    direct, plain = direct_writer(tmp_path / "direct"), PackWriter(tmp_path / "plain", 1024**3)
    assert not plain.direct
    chunks = records(rng, 40)
    at = 0
    while at < len(chunks):
        group = chunks[at : at + rng.randrange(1, 6)]
        at += len(group)
        assert direct.append(group) == plain.append(group)
        assert direct.path.stat().st_size == direct.offset  # no padding left after an append
        assert direct.path.read_bytes() == plain.path.read_bytes()
    direct.sync()
    assert [r.digest for r in scan_pack(direct.path)] == [d for d, _ in chunks]
    direct.close()
    plain.close()


def test_a_rewind_after_a_failed_upload_keeps_what_was_recorded(tmp_path: Path) -> None:
    rng = random.Random(2)
    writer = direct_writer(tmp_path)
    kept, dropped, later = records(rng, 3), records(rng, 4), records(rng, 2)
    writer.append(kept)
    writer.mark_recorded(writer.sync())
    end = writer.offset
    writer.append(dropped)  # never recorded: the upload failed
    writer.rewind()
    assert writer.offset == end and writer.path.stat().st_size == end
    writer.append(later)  # the block the rewind cut into is written again from the kept tail
    writer.sync()
    assert [r.digest for r in scan_pack(writer.path)] == [d for d, _ in kept + later]
    data = writer.path.read_bytes()
    assert data[: PACK_HEADER.size].startswith(b"OSCIPACK")
    writer.close()


@pytest.mark.parametrize("direct_io", [True, False])
def test_objects_stored_with_either_kind_of_io_read_back_and_verify(
    make_store: Callable[..., BlobStore], direct_io: bool
) -> None:
    store = make_store(storage_direct_io=direct_io)
    data = random_bytes(3 * MiB + 12345, 3)
    oid = store.put(io.BytesIO(data)).oid
    edited = data[:MiB] + random_bytes(5000, 4) + data[MiB:]
    pieces = cut(edited)  # as the server cuts it
    assert store.put_chunks([(h, b) for h, b in pieces]) > 0
    info = store.commit_manifest(sha256(edited), len(edited), [h for h, _ in pieces])
    assert info.oid == sha256(edited)
    assert b"".join(store.iter_range(oid)) == data
    assert b"".join(store.iter_range(info.oid)) == edited
    store.close()
    assert verify(store).ok


def test_a_damaged_chunk_found_by_the_read_back_is_quarantined(store: BlobStore) -> None:
    data = random_bytes(2 * MiB, 5)
    oid = store.put(io.BytesIO(data)).oid
    digest, loc = chunk_locations(store, oid)[3]
    flip_byte(store, loc)
    hashes = [h for h, _ in cut(data)]
    other = hashlib.sha256(data + b"x").hexdigest()
    with pytest.raises(ObjectDamaged):
        store.commit_manifest(other, len(data), hashes)  # the same chunks, read back for another oid
    assert store.missing_chunks([digest.hex()]) == {digest.hex()}  # quarantined: to be sent again


def test_the_read_back_works_while_an_upload_appends_to_the_pack(store: BlobStore) -> None:
    """Chunks at the very end of a pack that another upload keeps extending: a direct read that ends
    inside the growing last block must stop at the end it saw, not fail."""
    writer = direct_writer(store.packs_dir)
    rng = random.Random(6)
    written: queue.Queue[tuple[bytes, Location] | None] = queue.Queue()

    def appender() -> None:
        try:
            for _ in range(3000):
                data = rng.randbytes(rng.randrange(1, 3000))
                digest = hashlib.sha256(data).digest()
                [offset] = writer.append([(digest, data)])
                writer.mark_recorded(writer.sync())
                written.put((digest, Location(writer.id, offset, len(data), check=xxh3_64_digest(data))))
        finally:
            written.put(None)

    thread = threading.Thread(target=appender)
    thread.start()
    expected = hashlib.sha256()
    try:
        with store.content_reader(min_chunk=0) as reader:  # chunks of any size, to grow the pack quickly
            while (item := written.get()) is not None:
                digest, loc = item
                reader.feed([digest], {digest: loc})  # the last record of the pack, as it grows
                expected.update(_record_bytes(writer.path, loc))
            assert reader.hexdigest() == expected.hexdigest()
    finally:
        thread.join()
        writer.close()


def _record_bytes(path: Path, loc: Location) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(loc.offset + HEADER)
        return fh.read(loc.length)


def test_a_chunk_larger_than_a_read_span_is_read_back(store: BlobStore) -> None:
    """The protocol takes chunks up to 16 MiB (other clients may cut larger ones than ours)."""
    small, big = random_bytes(70_000, 7), random_bytes(SPAN_BYTES + 3 * MiB, 8)
    pieces = [(chunk_id(small), small), (chunk_id(big), big), (chunk_id(small), small)]
    store.put_chunks(pieces)
    content = small + big + small
    info = store.commit_manifest(sha256(content), len(content), [d for d, _ in pieces])
    assert b"".join(store.iter_range(info.oid)) == content


def _uncache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_a_read_takes_what_the_page_cache_holds_and_reads_the_rest_directly(tmp_path: Path) -> None:
    """Bytes the page cache holds are copied from it (RWF_NOWAIT: nothing is read from the disk); the
    direct read of the rest starts at the block where the cached part ends."""
    path = tmp_path / "pack"
    data = random_bytes(6 * MiB + 1000, 10)
    path.write_bytes(data)
    _uncache(path)
    with open(path, "rb", buffering=0) as fh:  # the first 1.5 MiB in the cache, no read-ahead past them
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        fh.read(MiB + MiB // 2)
    direct = open_direct(path, os.O_RDONLY)
    need(direct is not None, f"the filesystem of {tmp_path} refuses O_DIRECT")
    assert direct is not None
    cached = os.open(path, os.O_RDONLY)
    calls: list[tuple[bool, int, int, int]] = []  # nowait, asked from, asked to, got to
    fill = readback._fill

    def watched(fd: int, view: memoryview, start: int, got: int, n: int, *, nowait: bool = False) -> int:
        done = fill(fd, view, start, got, n, nowait=nowait)
        calls.append((nowait, got, n, done))
        return done

    buffer = mmap.mmap(-1, 8 * MiB)
    try:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(readback, "_fill", watched)
            n = len(data) + (-len(data)) % ALIGN
            assert readback._read((cached, direct), buffer, 0, n) == len(data)
        assert buffer[: len(data)] == data
        nowait, _, _, done = calls[0]
        assert nowait and MiB + MiB // 2 <= done < len(data), calls  # the cached part …
        assert calls[1] == (False, done - done % ALIGN, n, len(data)), calls  # … then directly
    finally:
        buffer.close()
        os.close(cached)
        os.close(direct)


def test_the_read_back_gathers_cached_spans_and_reads_the_others_directly(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file re-uploaded a moment after a download finds its old chunks in the page cache: a span the
    cache holds whole is read with one scatter read, each chunk straight to its place for the hash; one
    it does not hold is read with direct I/O (a read through the cache of bytes it lacks goes at the
    kernel's read-ahead). Both make the same content."""
    need(direct_writer(store.packs_dir).direct, "direct I/O")
    data = random_bytes(3 * SPAN_BYTES, 9)
    oid = store.put(io.BytesIO(data)).oid
    [pack] = {loc.pack_id for _, loc in chunk_locations(store, oid)}
    path = pack_path(store.packs_dir, pack)
    spans: list[bool] = []  # gathered, per span
    fills: list[bool] = []  # nowait, per fill of a span not gathered
    read_span, fill = readback._read_span, readback._fill

    def watched_span(*args: Any) -> tuple[bool, int]:
        result = read_span(*args)
        spans.append(result[0])
        return result

    def watched_fill(fd: int, view: memoryview, start: int, got: int, n: int, *, nowait: bool = False) -> int:
        fills.append(nowait)
        return fill(fd, view, start, got, n, nowait=nowait)

    monkeypatch.setattr(readback, "_read_span", watched_span)
    monkeypatch.setattr(readback, "_fill", watched_fill)
    hashes = [h for h, _ in cut(data)]

    def read_back() -> None:
        spans.clear()
        fills.clear()
        store.recent.clear()  # as after a restart: nothing of the upload is in the store's own memory
        assert store.commit_manifest(oid, len(data), hashes).oid == oid == sha256(data)

    _uncache(path)
    with open(path, "rb", buffering=0) as fh:  # the first span and more in the cache
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        while fh.tell() < SPAN_BYTES + SPAN_BYTES // 2:
            fh.read(MiB)
    read_back()
    assert spans[0] is True and len(spans) >= 3, spans

    _uncache(path)
    read_back()
    assert spans[0] is False and False in fills, (spans, fills)  # nothing cached: read directly
    assert b"".join(store.iter_range(oid)) == data


@pytest.mark.parametrize("cached", [True, False])
def test_a_span_of_more_records_than_one_scatter_read_takes_is_read_back(
    store: BlobStore, cached: bool
) -> None:
    """Chunks of other clients may be tiny: 3,000 of them make one span of 6,000 pieces to read, several
    scatter reads of IOV_MAX each (or one direct read when the cache does not hold them)."""
    pieces = [random_bytes(100 + i % 7, 1000 + i) for i in range(3000)]
    named = [(chunk_id(p), p) for p in pieces]
    store.put_chunks(named)
    locations = store._locate([d for d, _ in named])
    assert len({loc.pack_id for loc in locations.values()}) == 1
    path = pack_path(store.packs_dir, next(iter(locations.values())).pack_id)
    _uncache(path)
    if cached:
        path.read_bytes()
    store.recent.clear()
    with store.content_reader(min_chunk=0) as reader:
        reader.feed([d for d, _ in named])
        assert reader.hexdigest() == sha256(b"".join(pieces))
        assert not reader.missing
