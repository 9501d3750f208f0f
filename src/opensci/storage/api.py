"""REST routes of the storage domain under /api/v1: our own chunk-level upload protocol.

A client cuts a file into content-defined chunks exactly as the blob store does (FastCDC, see
`storage.chunking`) and names each by the BLAKE3 hash of its bytes, then, on a repository it may write:

1. `POST /repos/{owner}/{name}/uploads/chunks/missing` `{"chunks": [BLAKE3 hex, ...]}` → `{"missing": [...]}`:
   which chunks the server lacks (the others are touched, so garbage collection spares them);
2. `POST /repos/{owner}/{name}/uploads/chunks`, an `application/octet-stream` body of frames
   `[32-byte BLAKE3][4-byte big-endian length][bytes]` → `{"stored": n, "received": m}`; every chunk is
   checked against its hash before anything is written;
3. `POST /repos/{owner}/{name}/uploads/objects` `{"oid", "size", "chunks": [...]}` → 201 `{"oid", "size"}`:
   the file, assembled from stored chunks and checked against its sha256 and size, held by the
   repository (counted in its owner's quota). Chunks the server lacks → 422 `missing_chunks` with their
   list in `missing`, so the client sends them and asks again.

   Or, instead, `POST /repos/{owner}/{name}/uploads/manifests?size=N[&oid=…]`, a body of the file's
   chunk names (32 raw bytes each, in file order) streamed *while* the chunks are sent, each once its
   chunk is stored → 201 `{"oid", "size"}`: the server reads and hashes the file as the manifest arrives,
   so checking the file costs nothing after the upload, and the client need not hash the whole file
   (the oid is the server's answer; given, it is checked). Same errors as `objects`.

The file is then committed as a Git LFS pointer with the `lfs` field of `POST /repos/{o}/{n}/commits`.
An interrupted upload resumes by asking step 1 again: only the chunks still missing are sent.

A slow or stalled client pins no memory for long: a process receives at most MAX_RECEIVING_BYTES of
batches at once (the others wait their turn, holding only their connection), each batch must arrive
within BATCH_GRACE seconds plus the time its length takes at MIN_BATCH_RATE, and a manifest stream may
pause at most MANIFEST_STALL seconds between parts (at most MAX_MANIFEST_STREAMS at once); past a
deadline the reply is 408 `upload_timeout` and nothing of the request is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import struct
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from opensci.accounts.models import Owner
from opensci.accounts.permissions import Actor
from opensci.deps import BlobsDep, SessionDep, SettingsDep, UserActorDep
from opensci.errors import InvalidInput, PayloadTooLarge
from opensci.repos import service
from opensci.repos.models import Repository
from opensci.settings import Settings
from opensci.storage import files, quota
from opensci.storage.errors import MissingChunks, UploadTimeout
from opensci.storage.index import check_oid, chunk_digest
from opensci.storage.packs import MAX_CHUNK
from opensci.storage.readback import Base, ContentReader
from opensci.storage.store import BlobStore

router = APIRouter(prefix="/api/v1", tags=["storage"])

MAX_HASHES = 100_000  # chunk hashes per `missing` question
MAX_BATCH_BYTES = 64 * 1024 * 1024  # body of one chunk batch
MAX_MANIFEST_CHUNKS = 1_000_000  # chunks of one object (64 GiB at the average chunk size)
FRAME = struct.Struct(">32sI")  # a chunk's frame header: its name, length of the bytes that follow
MAX_RECEIVING_BYTES = 4 * MAX_BATCH_BYTES  # batches received at once, per process (~16 SDK batches)
BATCH_GRACE = 60.0  # seconds any batch may take to arrive, on top of what its length needs …
MIN_BATCH_RATE = 256 * 1024  # … at this many bytes a second
MANIFEST_STALL = 600.0  # seconds a manifest stream may pause (the SDK sends a part per ~64 MiB of chunks)
MAX_MANIFEST_STREAMS = 64  # manifest streams at once, per process
KEEP_BUFFER_BYTES = 16 * 1024 * 1024 + 64 * 1024  # idle receive buffers kept: up to an SDK batch's body
BUFFER_STEP = 64 * 1024  # receive buffers are sized in multiples of this, to be reused more often

_UPLOADS = "/repos/{owner}/{name}/uploads"


class ChunkList(BaseModel):
    chunks: list[str] = Field(max_length=MAX_HASHES, description="Chunk names (BLAKE3), 64 hex digits each.")


class MissingOut(BaseModel):
    missing: list[str] = Field(description="The chunks of the question the server lacks, in its order.")


class ChunksStored(BaseModel):
    received: int = Field(description="Chunks in the batch.")
    stored: int = Field(description="Chunks the server did not hold before (the others were duplicates).")


class ObjectIn(BaseModel):
    oid: str = Field(description="sha256 of the whole file (its Git LFS oid).")
    size: int = Field(ge=0, description="Size of the whole file in bytes.")
    chunks: list[str] = Field(
        max_length=MAX_MANIFEST_CHUNKS,
        description="The file's chunk names (BLAKE3), in order (repeats allowed).",
    )


class ObjectOut(BaseModel):
    oid: str
    size: int


def _writable(actor: Actor, session: Session, owner: str, name: str) -> Repository:
    return service.get_repo(actor, session, owner, name, "write")


@router.post(f"{_UPLOADS}/chunks/missing", response_model=MissingOut)
def missing_chunks(
    owner: str, name: str, body: ChunkList, session: SessionDep, blobs: BlobsDep, actor: UserActorDep
) -> MissingOut:
    """Which of these chunks the server lacks. Ask before sending: only those need to be sent."""
    _writable(actor, session, owner, name)
    session.close()  # the answer needs no more of this session; free its connection
    hashes = [chunk_digest(h).hex() for h in body.chunks]
    absent = blobs.missing_chunks(hashes)
    return MissingOut(missing=[h for h in dict.fromkeys(hashes) if h in absent])


def parse_frames(body: bytes | memoryview) -> list[tuple[bytes, memoryview]]:
    """The chunks of a batch body; InvalidInput for a truncated or malformed frame."""
    view = memoryview(body)
    out: list[tuple[bytes, memoryview]] = []
    pos = 0
    while pos < len(view):
        if len(view) - pos < FRAME.size:
            raise InvalidInput(
                f"the batch ends inside a chunk header (byte {pos}); nothing was stored",
                code="truncated_batch",
            )
        digest, length = FRAME.unpack_from(view, pos)
        pos += FRAME.size
        if not 0 < length <= MAX_CHUNK:
            raise InvalidInput(
                f"chunk {digest.hex()} announces {length} bytes; a chunk holds 1 to {MAX_CHUNK}",
                code="invalid_chunk_size",
            )
        if len(view) - pos < length:
            raise InvalidInput(
                f"chunk {digest.hex()} announces {length} bytes but the batch ends after "
                f"{len(view) - pos}; nothing was stored",
                code="truncated_batch",
            )
        out.append((digest, view[pos : pos + length]))
        pos += length
    return out


@dataclass(eq=False)
class _Waiter:
    amount: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


def _grant(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Admission:
    """Room for requests in flight in this process (bytes of chunk batches being received, manifest
    streams): a request waits its turn (first come, first served) before its body is read, so a waiting
    request holds only its connection. Shared by every event loop of the process (a test client runs
    one per request): waiters are woken on their own loop."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._waiting: deque[_Waiter] = deque()
        self._lock = threading.Lock()

    @contextlib.asynccontextmanager
    async def hold(self, amount: int) -> AsyncIterator[None]:
        """Hold `amount` of the room (at most all of it) while the block runs; wait for it first."""
        amount = min(max(amount, 1), self.capacity)
        await self._acquire(amount)
        try:
            yield
        finally:
            self._release(amount)

    async def _acquire(self, amount: int) -> None:
        with self._lock:
            if not self._waiting and self.used + amount <= self.capacity:
                self.used += amount
                return
            loop = asyncio.get_running_loop()
            waiter = _Waiter(amount, loop, loop.create_future())
            self._waiting.append(waiter)
        try:
            await waiter.future
        except BaseException:  # cancelled: give back the room if it was granted meanwhile
            with self._lock:
                granted = waiter not in self._waiting
                if not granted:
                    self._waiting.remove(waiter)
            self._release(amount if granted else 0)
            raise

    def _release(self, amount: int) -> None:
        with self._lock:
            self.used -= amount
            woken: list[_Waiter] = []
            while self._waiting and self.used + self._waiting[0].amount <= self.capacity:
                waiter = self._waiting.popleft()
                self.used += waiter.amount
                woken.append(waiter)
        for waiter in woken:
            try:
                waiter.loop.call_soon_threadsafe(_grant, waiter.future)
            except RuntimeError:  # its loop is closed: nobody waits any more
                self._release(waiter.amount)


_receiving = _Admission(MAX_RECEIVING_BYTES)
_streams = _Admission(MAX_MANIFEST_STREAMS)


class _Buffers:
    """Receive buffers of chunk batches, reused from batch to batch (a fresh 16 MiB buffer costs 4,096
    page faults on first touch, and joining the received parts a second copy). A buffer comes back once
    the blob store no longer keeps its chunks in memory for the manifest (see `storage.recent`). Only
    buffers up to `max_bytes` (an SDK batch) are kept idle: at most keep x max_bytes, ~128 MiB."""

    def __init__(self, keep: int = 8, max_bytes: int = KEEP_BUFFER_BYTES) -> None:
        self.keep = keep  # batches of 16 MiB: one SDK upload's worth
        self.max_bytes = max_bytes
        self._idle: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self, n: int) -> bytearray:
        """A buffer of at least `n` bytes: the smallest idle one that fits, else a new one."""
        with self._lock:
            fits = [(len(b), i) for i, b in enumerate(self._idle) if len(b) >= n]
            if fits:
                return self._idle.pop(min(fits)[1])
        return bytearray(-(-n // BUFFER_STEP) * BUFFER_STEP)

    def give(self, buffer: bytearray) -> None:
        with self._lock:
            if len(self._idle) < self.keep and len(buffer) <= self.max_bytes:
                self._idle.append(buffer)


_buffers = _Buffers()


def _too_large() -> PayloadTooLarge:
    return PayloadTooLarge(f"a chunk batch holds at most {MAX_BATCH_BYTES} bytes; send smaller batches")


def batch_deadline(length: int) -> float:
    """Seconds a batch of `length` bytes may take to arrive."""
    return BATCH_GRACE + length / MIN_BATCH_RATE


async def _read_batch(request: Request, buffer: bytearray | None, length: int) -> memoryview:
    """The request body, in `buffer` when it is given (for a body of the declared `length`)."""
    if buffer is None:
        parts: list[bytes] = []
        got = 0
        async for part in request.stream():
            got += len(part)
            if got > MAX_BATCH_BYTES:
                raise _too_large()
            parts.append(part)
        return memoryview(b"".join(parts))
    view = memoryview(buffer)[:length]
    got = 0
    async for part in request.stream():
        if got + len(part) > length:  # the server stops at Content-Length: never, in practice
            raise InvalidInput("the batch is longer than its Content-Length", code="truncated_batch")
        view[got : got + len(part)] = part
        got += len(part)
    return view[:got]


@router.post(
    f"{_UPLOADS}/chunks",
    response_model=ChunksStored,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def put_chunks(
    owner: str,
    name: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    blobs: BlobsDep,
    actor: UserActorDep,
) -> ChunksStored | Response:
    """Store a batch of chunks, framed as `[BLAKE3 (32 bytes)][length (4 bytes, big-endian)][bytes]`,
    repeated. Every chunk is checked against its hash first: one wrong chunk (422 `digest_mismatch`) or
    a truncated frame (422 `truncated_batch`) stores nothing of the batch. A batch that takes longer to
    arrive than `BATCH_GRACE` seconds plus its length at `MIN_BATCH_RATE` is refused (408
    `upload_timeout`), and so is one named by sha256 as older SDKs did (422 `outdated_client`). While
    the repository's owner has a quota, the new chunks count against it until a file holds them (413
    `quota_exceeded`, nothing of the batch stored)."""
    repo = await run_in_threadpool(_writable, actor, session, owner, name)
    owner_id = repo.owner_id
    limited = await run_in_threadpool(quota.limit_for, session, settings, owner_id) is not None
    session.close()
    declared = request.headers.get("content-length")
    length = int(declared) if declared is not None and declared.isdigit() else None
    if length is not None and length > MAX_BATCH_BYTES:
        raise _too_large()
    expected = MAX_BATCH_BYTES if length is None else length
    async with _receiving.hold(expected):  # the batch's turn: until then, its body is not read
        buffer = _buffers.take(length) if length else None
        handed = False  # to the blob store, which gives the buffer back when it is done with its chunks
        try:
            try:
                async with asyncio.timeout(batch_deadline(expected)):
                    body = await _read_batch(request, buffer, length or 0)
            except TimeoutError:
                raise UploadTimeout(
                    f"the batch of {expected} bytes did not arrive within {batch_deadline(expected):.0f} "
                    f"seconds ({BATCH_GRACE:.0f} plus {MIN_BATCH_RATE // 1024} KiB a second); nothing "
                    "was stored: send it again"
                ) from None
            chunks = parse_frames(body)
            if not chunks:
                raise InvalidInput("the batch holds no chunks", code="empty_batch")
            received = len(chunks)
            reserved = 0
            if limited:
                reserved = await run_in_threadpool(_reserve, session, settings, blobs, owner_id, chunks)
            release = None if buffer is None else functools.partial(_buffers.give, buffer)
            handed = release is not None
            held = len(buffer) if buffer is not None else 0
            stored_bytes = 0
            try:
                stored, stored_bytes = await run_in_threadpool(
                    functools.partial(blobs.put_chunks_counted, chunks, release=release, held=held)
                )
            finally:
                if reserved > stored_bytes:  # stored meanwhile by another upload, or not at all
                    await run_in_threadpool(_release, session, owner_id, reserved - stored_bytes)
            del chunks, body
        except ClientDisconnect:  # the client gave up before the batch was whole: nothing was stored
            return Response(status_code=400)
        finally:
            if buffer is not None and not handed:
                _buffers.give(buffer)
    return ChunksStored(received=received, stored=stored)


def _reserve(
    session: Session,
    settings: Settings,
    blobs: BlobStore,
    owner_id: str,
    chunks: list[tuple[bytes, memoryview]],
) -> int:
    """Count the bytes of the batch's chunks the store lacks against the owner's quota (QuotaExceeded if
    they do not fit); returns them."""
    distinct = {digest: len(data) for digest, data in chunks}
    absent = blobs.missing_chunks([digest.hex() for digest in distinct])
    new_bytes = sum(size for digest, size in distinct.items() if digest.hex() in absent)
    try:
        holder = session.get(Owner, owner_id)
        if holder is None:
            return 0
        quota.reserve_chunks(session, settings, holder, new_bytes)
    finally:
        session.close()
    return new_bytes


def _release(session: Session, owner_id: str, size: int) -> None:
    try:
        quota.release_chunks(session, owner_id, size)
    finally:
        session.close()


def _missing_reply(exc: MissingChunks) -> JSONResponse:
    return JSONResponse(
        {"error": exc.code, "message": exc.message, "missing": exc.missing}, status_code=exc.status
    )


def hold(session: Session, settings: Settings, repo: Repository, oid: str, size: int) -> None:
    """Record that the repository holds the object, and commit (two uploads of the same object racing
    to record it both succeed: see `files.hold_object`)."""
    files.hold_object(session, settings, repo, oid, size)
    session.commit()


def commit_object(
    session: Session, settings: Settings, blobs: BlobStore, repo: Repository, body: ObjectIn
) -> ObjectOut:
    oid = check_oid(body.oid)
    if body.size > settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"a file of {body.size} bytes is larger than this server accepts ({settings.max_upload_bytes} "
            "bytes, OPENSCI_MAX_UPLOAD_BYTES)"
        )
    if len(body.chunks) > max(body.size, 1):
        raise InvalidInput(
            f"{len(body.chunks)} chunks cannot make {body.size} bytes (a chunk holds at least one byte)",
            code="invalid_manifest",
        )
    if not files.holds(session, repo.id, oid) and not quota.owner_holds(session, repo.owner_id, oid):
        quota.check(session, settings, repo.owner, body.size)  # before reading the whole file back
    info = blobs.commit_manifest(oid, body.size, body.chunks)
    hold(session, settings, repo, info.oid, info.size)
    return ObjectOut(oid=info.oid, size=info.size)


@router.post(
    f"{_UPLOADS}/objects",
    status_code=201,
    response_model=ObjectOut,
    responses={422: {"description": "`missing_chunks` (with their list in `missing`), or a wrong oid/size"}},
)
def create_object(
    owner: str,
    name: str,
    body: ObjectIn,
    session: SessionDep,
    settings: SettingsDep,
    blobs: BlobsDep,
    actor: UserActorDep,
) -> ObjectOut | JSONResponse:
    """Assemble a file from stored chunks (checked against its sha256 and size) and record that the
    repository holds it, within its owner's quota (413 `quota_exceeded`). Commit it afterwards with the
    `lfs` field of the commit endpoint."""
    repo = _writable(actor, session, owner, name)
    try:
        return commit_object(session, settings, blobs, repo, body)
    except MissingChunks as exc:
        return _missing_reply(exc)


def _commit_streamed(
    session: Session,
    settings: Settings,
    blobs: BlobStore,
    actor: Actor,
    where: tuple[str, str],
    reader: ContentReader,
    size: int,
    expected: str | None,
) -> ObjectOut:
    repo = _writable(actor, session, *where)  # again: the stream may have lasted hours
    reader.end()
    if not reader.missing:
        oid = reader.hexdigest()
        if not files.holds(session, repo.id, oid) and not quota.owner_holds(session, repo.owner_id, oid):
            quota.check(session, settings, repo.owner, size)
    info = blobs.commit_read(reader, size, expected)
    hold(session, settings, repo, info.oid, info.size)
    return ObjectOut(oid=info.oid, size=info.size)


@router.post(
    f"{_UPLOADS}/manifests",
    status_code=201,
    response_model=ObjectOut,
    responses={422: {"description": "`missing_chunks` (with their list in `missing`), or a wrong oid/size"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def stream_manifest(
    owner: str,
    name: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    blobs: BlobsDep,
    actor: UserActorDep,
    size: Annotated[int, Query(ge=0, description="Size of the whole file in bytes.")],
    oid: Annotated[
        str | None, Query(description="The file's sha256, if the client knows it: checked, not trusted.")
    ] = None,
    base: Annotated[
        str | None,
        Query(
            description="The sha256 of a file of this repository that the new one may start like (the "
            "file it replaces): while the manifest names that file's chunks in its order, the server "
            "reads nothing and resumes its hash at the first change. A hint: ignored if the repository "
            "does not hold that file."
        ),
    ] = None,
) -> ObjectOut | Response:
    """Assemble a file from stored chunks named by a manifest streamed while the file is uploaded: the
    body is the chunks' names (32 raw bytes each), in file order, each sent once its chunk is stored.
    The server reads and hashes the file's content as the manifest arrives, so nothing is left to read
    when it ends; it answers with the file's sha256 (checked against `oid` when given) and records that
    the repository holds it, within its owner's quota (413 `quota_exceeded`). A manifest naming more
    bytes than `size` is refused before they are read (422 `size_mismatch`); a stream that pauses for
    more than `MANIFEST_STALL` seconds, 408 `upload_timeout`. With `base`, the sha256 of a file this
    repository holds that the new one starts like, the chunks they share at their start are not read:
    the hash resumes from the base's last checkpoint before the first chunk that differs."""
    repo = await run_in_threadpool(_writable, actor, session, owner, name)
    like = check_oid(base) if base is not None else None
    start = await run_in_threadpool(files.base_for, session, blobs, repo, like) if like else None
    session.close()  # the stream lasts as long as the upload: hold no connection meanwhile
    expected = check_oid(oid) if oid is not None else None
    if size > settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"a file of {size} bytes is larger than this server accepts ({settings.max_upload_bytes} "
            "bytes, OPENSCI_MAX_UPLOAD_BYTES)"
        )
    async with _streams.hold(1):
        return await _read_manifest(
            request, session, settings, blobs, actor, (owner, name), size, expected, start
        )


async def _next_part(parts: AsyncIterator[bytes]) -> bytes | None:
    """The next part of a streamed body; None at its end; UploadTimeout after MANIFEST_STALL seconds."""
    try:
        async with asyncio.timeout(MANIFEST_STALL):
            return await anext(parts)
    except StopAsyncIteration:
        return None
    except TimeoutError:
        raise UploadTimeout(
            f"the manifest stream paused for more than {MANIFEST_STALL:.0f} seconds; nothing was stored: "
            "upload the file again (only the chunks still missing are sent)"
        ) from None


FEED_BACKLOG = 65_536  # digests waiting to be fed before the stream is read on (~4 GiB of content)


class _Feeder:
    """Feeds a ContentReader on a worker thread, in the background, with every digest that arrived
    while it was busy: one feed per burst, not one per network part (each feed starts a lookup and a
    read pipeline anew, which leaves the hash idle meanwhile). Errors of a feed are raised by the next
    `add` or by `drain`."""

    def __init__(self, reader: ContentReader) -> None:
        self.reader = reader
        self.queued: list[bytes] = []
        self.task: asyncio.Future[None] | None = None

    def _start(self) -> None:
        batch, self.queued = self.queued, []
        self.task = asyncio.ensure_future(run_in_threadpool(self.reader.feed, batch))
        self.task.add_done_callback(self._done)

    def _take(self) -> None:
        """Let go of a finished feed (raising its error), then start one with what is queued."""
        if self.task is not None and self.task.done():
            task, self.task = self.task, None
            task.result()
        if self.task is None and self.queued:
            self._start()

    def _done(self, task: asyncio.Future[None]) -> None:
        """On the event loop, as a feed ends: go on with what arrived meanwhile (an error waits for
        `add` or `drain`, which raise it)."""
        if task is self.task and not task.cancelled() and task.exception() is None:
            self._take()

    async def add(self, digests: list[bytes]) -> None:
        self.queued += digests
        self._take()
        if self.task is not None and len(self.queued) >= FEED_BACKLOG:  # the client outruns the reader
            await asyncio.wait([self.task])
            self._take()

    async def drain(self) -> None:
        """Until every digest added is fed."""
        while True:
            self._take()
            if self.task is None:
                return
            await asyncio.wait([self.task])

    async def abandon(self) -> None:
        """Wait for a feed under way (the reader may be closed then), whatever its outcome."""
        task, self.task = self.task, None
        if task is not None:
            await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # retrieved: the error being raised, if any, is another


async def _read_manifest(
    request: Request,
    session: Session,
    settings: Settings,
    blobs: BlobStore,
    actor: Actor,
    where: tuple[str, str],
    size: int,
    expected: str | None,
    start: Base | None = None,
) -> ObjectOut | Response:
    reader = blobs.content_reader(expected or "", size)
    if start is not None:
        reader.start_like(start)
    parts = request.stream()
    feeder = _Feeder(reader)
    try:
        pending = bytearray()
        count = 0
        while (part := await _next_part(parts)) is not None:
            pending += part
            whole = len(pending) - len(pending) % 32
            if not whole:
                continue
            digests = [bytes(pending[i : i + 32]) for i in range(0, whole, 32)]
            del pending[:whole]
            count += len(digests)
            if count > min(MAX_MANIFEST_CHUNKS, max(size, 1)):
                raise InvalidInput(
                    f"a manifest of {size} bytes lists at most {min(MAX_MANIFEST_CHUNKS, max(size, 1))} "
                    "chunks",
                    code="invalid_manifest",
                )
            await feeder.add(digests)
        if pending:
            raise InvalidInput("the manifest ends inside a chunk hash (32 bytes)", code="invalid_manifest")
        await feeder.drain()
        return await run_in_threadpool(
            _commit_streamed, session, settings, blobs, actor, where, reader, size, expected
        )
    except MissingChunks as exc:
        return _missing_reply(exc)
    except ClientDisconnect:  # the client gave up (its upload failed): nothing was recorded
        return Response(status_code=400)
    finally:
        await feeder.abandon()
        reader.close()
        await parts.aclose()
