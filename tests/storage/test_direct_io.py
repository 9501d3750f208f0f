"""Direct I/O in the blob store: pack writers that bypass the page cache write exactly the bytes ordinary
writes do, keep packs ending at their last record, cut back cleanly after a failure, and the read-back
that checks a new object works while other uploads append to the same pack."""

from __future__ import annotations

import hashlib
import io
import os
import queue
import random
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from xxhash import xxh3_64_digest

from opensci.storage import readback
from opensci.storage.chunking import chunk_id
from opensci.storage.errors import ObjectDamaged
from opensci.storage.index import Location
from opensci.storage.maintenance import verify
from opensci.storage.packs import ALIGN, HEADER, PACK_HEADER, STAGE_BYTES, PackWriter, pack_path, scan_pack
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


def test_the_read_back_takes_what_the_page_cache_holds_and_reads_the_rest_directly(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file re-uploaded a moment after a download finds its old chunks in the page cache: those are
    copied from it, and only what it lacks is read from the disk, with direct I/O (reads through the
    cache of bytes it does not hold go at the kernel's small read-ahead). A span wholly cached, one
    cached up to its middle (the direct read resumes at the block where the cache ends), and a pack not
    cached at all make the same content."""
    need(direct_writer(store.packs_dir).direct, "direct I/O")
    data = random_bytes(3 * SPAN_BYTES, 9)
    oid = store.put(io.BytesIO(data)).oid
    [pack] = {loc.pack_id for _, loc in chunk_locations(store, oid)}
    path = pack_path(store.packs_dir, pack)
    calls: list[tuple[bool, int, int, int]] = []  # nowait, asked from, asked to, got to
    fill = readback._fill

    def watched(fd: int, view: memoryview, start: int, got: int, n: int, *, nowait: bool = False) -> int:
        done = fill(fd, view, start, got, n, nowait=nowait)
        calls.append((nowait, got, n, done))
        return done

    monkeypatch.setattr(readback, "_fill", watched)
    hashes = [h for h, _ in cut(data)]

    def read_back() -> None:
        calls.clear()
        store.recent.clear()  # as after a restart: nothing of the upload is in the store's own memory
        assert store.commit_manifest(oid, len(data), hashes).oid == oid == sha256(data)

    _uncache(path)
    with open(path, "rb", buffering=0) as fh:  # a span and a half in the cache (a download stopped there)
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_RANDOM)  # and no read-ahead past it
        while fh.tell() < SPAN_BYTES + SPAN_BYTES // 2:
            fh.read(MiB)
    read_back()
    assert calls[0][0] and calls[0][3] == calls[0][2], calls  # the first span, wholly from the cache
    nowait, _, n, done = calls[1]
    assert nowait and 0 < done < n, calls  # the second, up to its middle …
    assert calls[2] == (False, done - done % ALIGN, n, n), calls  # … and directly from the block there on

    _uncache(path)
    read_back()
    assert calls[0][0] and calls[0][3] == 0, calls  # nothing in the cache
    assert calls[1] == (False, 0, calls[0][2], calls[0][2]), calls  # all of the span read directly
    assert b"".join(store.iter_range(oid)) == data
