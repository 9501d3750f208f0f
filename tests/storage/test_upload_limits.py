"""Slow or stalled uploads pin no memory for long: chunk batches wait their turn before their buffer is
taken and must arrive by a deadline, manifest streams may pause only so long (their reader holding no
buffer meanwhile), idle receive buffers stay small, and a manifest that makes more bytes than announced
is refused before its bytes are read. Stalled clients are real sockets against a live server."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opensci.client.chunks import BATCH_BYTES, FRAME, MIN_SIZE
from opensci.storage import api as storage_api
from opensci.storage import readback
from opensci.storage.chunking import chunk_id
from opensci.storage.maintenance import stats
from opensci.storage.store import BlobStore
from tests.api_helpers import create_repo, error_code
from tests.conftest import Account, LiveServer
from tests.storage.test_api_uploads import Uploader, cut, frames, held, random_bytes, uploads

MiB = 1024 * 1024


class CountingBuffers(storage_api._Buffers):
    """The receive-buffer pool, counting the buffers taken."""

    def __init__(self) -> None:
        super().__init__()
        self.taken = 0

    def take(self, n: int) -> bytearray:
        self.taken += 1
        return super().take(n)


@pytest.fixture
def pools(monkeypatch: pytest.MonkeyPatch) -> CountingBuffers:
    """Fresh per-process limits and buffer pool (they are module globals, shared with other tests)."""
    buffers = CountingBuffers()
    monkeypatch.setattr(storage_api, "_buffers", buffers)
    monkeypatch.setattr(storage_api, "_receiving", storage_api._Admission(storage_api.MAX_RECEIVING_BYTES))
    monkeypatch.setattr(storage_api, "_streams", storage_api._Admission(storage_api.MAX_MANIFEST_STREAMS))
    return buffers


@pytest.fixture
def repo(client: TestClient, alice: Account) -> str:
    create_repo(client, alice, "data", kind="dataset", private=True)
    return "alice/data"


def stalled(server: LiveServer, path: str, who: Account, length: int, first: bytes) -> socket.socket:
    """A POST that announces `length` bytes of body, sends `first`, then sends nothing more."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    head = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: Bearer {who.token}",
        "Content-Type: application/octet-stream",
        f"Content-Length: {length}",
    ]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + first)
    return sock


def reply(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of the reply on a socket (then closed)."""
    data = b""
    with sock:
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            assert more, f"the connection closed without a reply: {data!r}"
            data += more
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        fields = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        while len(body) < int(fields["content-length"]):
            more = sock.recv(65536)
            assert more
            body += more
    return int(lines[0].split()[1]), json.loads(body)


def wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# --- chunk batches ---------------------------------------------------------------------------------------


def test_a_stalled_batch_times_out_with_408_and_stores_nothing(
    app: FastAPI,
    live_server: LiveServer,
    alice: Account,
    repo: str,
    pools: CountingBuffers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(storage_api, "BATCH_GRACE", 0.5)
    monkeypatch.setattr(storage_api, "MIN_BATCH_RATE", 1024 * MiB)
    [(name, data)] = cut(random_bytes(20_000, 1))
    body = frames([(name, data)])
    started = time.monotonic()
    sock = stalled(live_server, uploads(repo, "chunks"), alice, 16 * MiB, body[:100])
    status, error = reply(sock)
    assert (status, error["error"]) == (408, "upload_timeout"), error
    assert "send it again" in error["message"]
    assert time.monotonic() - started < 10
    assert stats(app.state.blobs).chunks == 0
    assert storage_api._receiving.used == 0
    assert [len(b) for b in pools._idle] == [16 * MiB]  # the buffer went back to the pool


def test_batches_wait_their_turn_holding_no_buffer(
    live_server: LiveServer,
    alice: Account,
    repo: str,
    pools: CountingBuffers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What QA saw: 12 batches announcing 64 MiB each and sending 100 bytes took 12 buffers of 64 MiB and
    held them forever. A process receives MAX_RECEIVING_BYTES of batches at once; the others wait their
    turn before any buffer is taken, and each stalled one times out."""
    monkeypatch.setattr(storage_api, "BATCH_GRACE", 1.0)
    monkeypatch.setattr(storage_api, "MIN_BATCH_RATE", 1024 * MiB)
    admitted = storage_api.MAX_RECEIVING_BYTES // storage_api.MAX_BATCH_BYTES
    assert admitted == 4
    socks = [
        stalled(live_server, uploads(repo, "chunks"), alice, storage_api.MAX_BATCH_BYTES, b"\0" * 100)
        for _ in range(12)
    ]
    wait_for(lambda: len(storage_api._receiving._waiting) == 12 - admitted)
    assert pools.taken == admitted and storage_api._receiving.used == storage_api.MAX_RECEIVING_BYTES
    for sock in socks:  # in turns of four, each after its own deadline
        status, error = reply(sock)
        assert (status, error["error"]) == (408, "upload_timeout"), error
    assert pools.taken == 12 and storage_api._receiving.used == 0
    assert pools._idle == []  # buffers of 64 MiB are not kept idle


def take_the_only_turn(
    live_server: LiveServer, alice: Account, repo: str, monkeypatch: pytest.MonkeyPatch, *, grace: float
) -> socket.socket:
    """Room for one MiB of batches at once, taken by a batch that stalls: the next one waits its turn; the
    stalled one gets 408 after `grace` seconds."""
    monkeypatch.setattr(storage_api, "_receiving", storage_api._Admission(MiB))
    monkeypatch.setattr(storage_api, "BATCH_GRACE", grace)
    monkeypatch.setattr(storage_api, "MIN_BATCH_RATE", 1024 * MiB)
    first = stalled(live_server, uploads(repo, "chunks"), alice, MiB, b"\0" * 100)
    wait_for(lambda: storage_api._receiving.used == MiB)
    return first


def test_a_batch_that_waited_its_turn_is_stored(
    live_server: LiveServer,
    alice: Account,
    repo: str,
    pools: CountingBuffers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = take_the_only_turn(live_server, alice, repo, monkeypatch, grace=1.0)
    chunks = cut(random_bytes(300_000, 2))
    body = frames(chunks)
    second = stalled(live_server, uploads(repo, "chunks"), alice, len(body), body)  # whole, but waits
    wait_for(lambda: len(storage_api._receiving._waiting) == 1)
    assert reply(first)[0] == 408
    assert reply(second) == (200, {"received": len(chunks), "stored": len(chunks)})


def test_a_client_that_disconnects_while_waiting_frees_its_turn(
    live_server: LiveServer,
    alice: Account,
    repo: str,
    pools: CountingBuffers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = take_the_only_turn(live_server, alice, repo, monkeypatch, grace=0.5)
    gone = stalled(live_server, uploads(repo, "chunks"), alice, MiB, b"\0" * 100)
    wait_for(lambda: len(storage_api._receiving._waiting) == 1)
    gone.close()
    assert reply(first)[0] == 408
    wait_for(lambda: storage_api._receiving.used == 0 and not storage_api._receiving._waiting)


# --- the idle buffer pool --------------------------------------------------------------------------------


def test_only_buffers_up_to_an_sdk_batch_are_kept_idle() -> None:
    """Eight idle buffers of 64 MiB were 512 MiB doing nothing: only buffers up to an SDK batch's body
    (16 MiB of chunks and their frames) are kept, so at most about 128 MiB stays idle."""
    buffers = storage_api._Buffers()
    sdk_body = BATCH_BYTES + FRAME.size * (BATCH_BYTES // MIN_SIZE + 1)  # the largest body the SDK sends
    big = buffers.take(storage_api.MAX_BATCH_BYTES)
    sdk = buffers.take(sdk_body)
    assert sdk_body <= len(sdk) <= storage_api.KEEP_BUFFER_BYTES and len(sdk) % storage_api.BUFFER_STEP == 0
    buffers.give(big)
    buffers.give(sdk)
    assert buffers._idle == [sdk]
    for _ in range(20):
        buffers.give(bytearray(storage_api.KEEP_BUFFER_BYTES))
    assert len(buffers._idle) == 8 and sum(len(b) for b in buffers._idle) < 129 * MiB


def test_the_smallest_idle_buffer_that_fits_is_taken() -> None:
    buffers = storage_api._Buffers()
    large, small = bytearray(4 * MiB), bytearray(MiB)
    buffers.give(large)
    buffers.give(small)
    assert buffers.take(1000) is small
    assert buffers.take(2 * MiB) is large
    assert len(buffers.take(1000)) == storage_api.BUFFER_STEP  # none idle: a new one, rounded up


# --- manifest streams ------------------------------------------------------------------------------------


def test_a_stalled_manifest_stream_times_out_with_408_and_holds_nothing(
    app: FastAPI,
    live_server: LiveServer,
    client: TestClient,
    alice: Account,
    repo: str,
    pools: CountingBuffers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(storage_api, "MANIFEST_STALL", 0.5)
    data = random_bytes(2 * MiB, 3)
    chunks = cut(data)
    up = Uploader(client, alice, repo)
    assert up.send(frames(chunks)).status_code == 200
    names = b"".join(bytes.fromhex(h) for h, _ in chunks)
    path = uploads(repo, "manifests") + f"?size={len(data)}"
    sock = stalled(live_server, path, alice, len(names), names[:96])  # three names, then nothing
    status, error = reply(sock)
    assert (status, error["error"]) == (408, "upload_timeout"), error
    assert held(app, repo) == set() and stats(app.state.blobs).objects == 0
    assert storage_api._streams.used == 0


def test_manifest_streams_wait_their_turn(
    live_server: LiveServer,
    client: TestClient,
    alice: Account,
    repo: str,
    pools: CountingBuffers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(storage_api, "_streams", storage_api._Admission(1))
    monkeypatch.setattr(storage_api, "MANIFEST_STALL", 1.0)
    data = random_bytes(MiB, 4)
    chunks = cut(data)
    assert Uploader(client, alice, repo).send(frames(chunks)).status_code == 200
    names = b"".join(bytes.fromhex(h) for h, _ in chunks)
    path = uploads(repo, "manifests") + f"?size={len(data)}"
    first = stalled(live_server, path, alice, len(names), names[:32])
    wait_for(lambda: storage_api._streams.used == 1)
    second = stalled(live_server, path, alice, len(names), names)  # whole, but waits for the first
    wait_for(lambda: len(storage_api._streams._waiting) == 1)
    assert reply(first)[0] == 408
    oid = hashlib.sha256(data).hexdigest()
    assert reply(second) == (201, {"oid": oid, "size": len(data)})


def test_a_reader_holds_no_buffer_between_feeds(store: BlobStore) -> None:
    """A stream pausing between parts of its manifest keeps only the manifest so far and the hash."""
    data = random_bytes(3 * MiB, 5)
    chunks = cut(data)
    store.put_chunks([(h, b) for h, b in chunks[: len(chunks) // 2]])  # read back from the packs
    store.put_chunks([(h, b) for h, b in chunks[len(chunks) // 2 :]], release=lambda: None)  # memory
    with store.content_reader("", len(data)) as reader:
        for h, _ in chunks:
            reader.feed([bytes.fromhex(h)])
            assert reader._buffers == [] and reader._slots == [] and reader._packs.fds == {}
        assert reader.hexdigest() == hashlib.sha256(data).hexdigest() and reader.size == len(data)


# --- manifests that make more than announced -------------------------------------------------------------


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The bytes each read of a pack by a ContentReader asked for."""
    asked: list[int] = []
    real = readback._read

    def spy(fd: int, buffer: Any, start: int, n: int) -> int:
        asked.append(n)
        return real(fd, buffer, start, n)

    monkeypatch.setattr(readback, "_read", spy)
    yield asked


LIMIT = 5 * 1024**3 - 1  # the largest size the server takes by default is 5 GiB


def test_a_streamed_manifest_making_more_than_announced_is_refused_before_reading(
    app: FastAPI, client: TestClient, alice: Account, repo: str, reads: list[int]
) -> None:
    """What QA saw: 320 names of one stored 16 MiB chunk, announced as 5 GiB - 1: the server hashed 5 GiB
    (4 s of CPU) before answering size_mismatch. The chunks' lengths are known first."""
    big = random_bytes(16 * MiB, 6)
    name = chunk_id(big).hex()
    app.state.blobs.put_chunks([(name, big)])
    headers = {**alice.headers, "Content-Type": "application/octet-stream"}
    started = time.process_time()
    r = client.post(
        uploads(repo, "manifests"), params={"size": LIMIT}, content=bytes.fromhex(name) * 320, headers=headers
    )
    assert error_code(r, 422) == "size_mismatch"
    assert reads == []
    assert time.process_time() - started < 2
    assert held(app, repo) == set()


def test_a_manifest_making_more_than_announced_is_refused_before_reading(
    app: FastAPI, client: TestClient, alice: Account, repo: str, reads: list[int]
) -> None:
    big = random_bytes(16 * MiB, 7)
    name = chunk_id(big).hex()
    app.state.blobs.put_chunks([(name, big)])
    up = Uploader(client, alice, repo)
    r = up.assemble("0" * 64, LIMIT, [name] * 320)
    assert error_code(r, 422) == "size_mismatch"
    assert reads == []


# --- quotas hold under concurrent batches ---------------------------------------------------------------


def test_batches_sent_at_once_never_take_an_owner_past_its_quota(
    app: FastAPI, live_server: LiveServer, alice: Account, repo: str, pools: CountingBuffers
) -> None:
    """The QA repro: 24 batches of one 900,000-byte chunk each, sent at once to an owner with a 1 MB
    quota: 12 were stored (10.8 MB), as each checked the quota before any had counted. The check and the
    count are now one conditional update: one batch fits, the others are 413, nothing else is stored."""
    from concurrent.futures import ThreadPoolExecutor

    from opensci.accounts.models import Owner
    from opensci.storage import quota

    owner_id = alice.user.id
    with app.state.db.session() as session:
        quota.set_limit(session, session.get(Owner, owner_id), 1_000_000)
        session.commit()
    batches = [frames(cut(random_bytes(900_000, 100 + i))) for i in range(24)]

    def send(body: bytes) -> int:
        headers = {**alice.headers, "Content-Type": "application/octet-stream"}
        url = f"{live_server.url}{uploads(repo, 'chunks')}"
        return httpx.post(url, content=body, headers=headers, timeout=60).status_code

    with ThreadPoolExecutor(24) as pool:
        statuses = list(pool.map(send, batches))
    assert sorted(statuses) == [200] + [413] * 23, statuses
    with app.state.db.session() as session:
        assert quota.pending(session, app.state.settings, owner_id) == 900_000
    assert stats(app.state.blobs).chunk_bytes < 1_000_000
