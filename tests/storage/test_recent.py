"""Chunks kept in memory between their batch and the manifest that names them (`storage.recent`)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from opensci.storage.chunking import chunk_id
from opensci.storage.errors import DigestMismatch
from opensci.storage.recent import RecentChunks
from opensci.storage.store import BlobStore
from tests.storage.conftest import random_bytes, sha256


def batch(*parts: bytes) -> tuple[bytearray, list[tuple[bytes, memoryview]]]:
    buffer = bytearray(b"".join(parts))
    view, at, chunks = memoryview(buffer), 0, []
    for p in parts:
        chunks.append((chunk_id(p), view[at : at + len(p)]))
        at += len(p)
    return buffer, chunks


def counter() -> tuple[list[int], Callable[[], None]]:
    calls: list[int] = []
    return calls, lambda: calls.append(1)


def test_a_buffer_is_released_once_when_its_last_chunk_is_taken() -> None:
    recent = RecentChunks(max_bytes=1000)
    a, b = b"a" * 100, b"b" * 200
    _, chunks = batch(a, b)
    released, release = counter()
    recent.keep(chunks, release)
    dest = memoryview(bytearray(500))
    assert recent.take(chunk_id(b), dest) == 200 and bytes(dest[:200]) == b
    assert released == []
    assert recent.take(chunk_id(b), dest) is None  # each chunk is taken once
    assert recent.take(chunk_id(a), dest[:50]) is None and recent.has(chunk_id(a))  # too big: it stays
    assert recent.take(chunk_id(a), dest) == 100
    assert released == [1] and not recent.has(chunk_id(a))


def test_old_and_overflowing_batches_are_given_back() -> None:
    recent = RecentChunks(max_bytes=300, max_age=0.05)
    first, release_first = counter()
    second, release_second = counter()
    third, release_third = counter()
    recent.keep(batch(b"x" * 200)[1], release_first)
    recent.keep(batch(b"y" * 200)[1], release_second)  # no room for both: the oldest goes
    assert first == [1] and second == [] and not recent.has(chunk_id(b"x" * 200))
    time.sleep(0.1)
    assert recent.take(chunk_id(b"z"), memoryview(bytearray(10))) is None
    assert second == [1]  # too old
    recent.keep(batch(b"w" * 400)[1], release_third)  # larger than the whole budget: not kept
    assert third == [1] and not recent.has(chunk_id(b"w" * 400))


def test_an_object_is_hashed_from_memory_and_the_buffers_come_back(store: BlobStore) -> None:
    data = random_bytes(3_000_000, 5)
    half = len(data) // 2
    a, b = data[:half], data[half:]
    buffer, chunks = batch(a, b)
    released, release = counter()
    assert store.put_chunks(chunks, release=release) == 2
    assert released == []  # kept for the manifest
    info = store.commit_manifest(sha256(a + b), len(a + b), [d for d, _ in chunks])
    assert info.size == len(data) and b"".join(store.iter_range(info.oid)) == data
    assert released == [1] and not store.recent.has(chunks[0][0])
    buffer[:] = bytes(len(buffer))  # reusing the buffer now changes nothing stored
    assert b"".join(store.iter_range(info.oid)) == data


def test_a_failed_batch_gives_its_buffer_back(store: BlobStore) -> None:
    _, chunks = batch(b"good" * 1000)
    bad = [(chunk_id(b"other"), chunks[0][1])]
    released, release = counter()
    with pytest.raises(DigestMismatch):
        store.put_chunks(bad, release=release)
    assert released == [1]


def test_the_budget_counts_the_whole_buffer_and_idle_buffers_go_back_alone() -> None:
    """A batch of one new 8-byte chunk among old ones still pins its whole receive buffer: that is what
    the budget counts. And buffers go back after MAX_AGE even if no other upload comes."""
    recent = RecentChunks(max_bytes=300, max_age=0.1)
    first, release_first = counter()
    second, release_second = counter()
    recent.keep(batch(b"a" * 8)[1], release_first, held=200)
    recent.keep(batch(b"b" * 8)[1], release_second, held=200)
    assert first == [1] and second == []  # 400 held bytes do not fit 300
    time.sleep(0.5)
    assert second == [1] and not recent.has(chunk_id(b"b" * 8))
