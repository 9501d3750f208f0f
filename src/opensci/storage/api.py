"""REST routes of the storage domain under /api/v1: our own chunk-level upload protocol.

A client cuts a file into content-defined chunks exactly as the blob store does (FastCDC, see
`storage.chunking`), then, on a repository it may write:

1. `POST /repos/{owner}/{name}/uploads/chunks/missing` `{"chunks": [sha256 hex, ...]}` → `{"missing": [...]}`:
   which chunks the server lacks (the others are touched, so garbage collection spares them);
2. `POST /repos/{owner}/{name}/uploads/chunks`, an `application/octet-stream` body of frames
   `[32-byte sha256][4-byte big-endian length][bytes]` → `{"stored": n, "received": m}`; every chunk is
   checked against its hash before anything is written;
3. `POST /repos/{owner}/{name}/uploads/objects` `{"oid", "size", "chunks": [...]}` → 201 `{"oid", "size"}`:
   the file, assembled from stored chunks and checked against its sha256 and size, held by the
   repository (counted in its owner's quota). Chunks the server lacks → 422 `missing_chunks` with their
   list in `missing`, so the client sends them and asks again.

The file is then committed as a Git LFS pointer with the `lfs` field of `POST /repos/{o}/{n}/commits`.
An interrupted upload resumes by asking step 1 again: only the chunks still missing are sent.
"""

from __future__ import annotations

import struct

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from opensci.accounts.permissions import Actor
from opensci.deps import BlobsDep, SessionDep, SettingsDep, UserActorDep
from opensci.errors import InvalidInput, PayloadTooLarge
from opensci.repos import service
from opensci.repos.models import Repository
from opensci.settings import Settings
from opensci.storage import files, quota
from opensci.storage.errors import MissingChunks
from opensci.storage.index import check_oid
from opensci.storage.packs import MAX_CHUNK
from opensci.storage.store import BlobStore

router = APIRouter(prefix="/api/v1", tags=["storage"])

MAX_HASHES = 100_000  # chunk hashes per `missing` question
MAX_BATCH_BYTES = 64 * 1024 * 1024  # body of one chunk batch
MAX_MANIFEST_CHUNKS = 1_000_000  # chunks of one object (64 GiB at the average chunk size)
FRAME = struct.Struct(">32sI")  # a chunk's frame header: sha256, length of the bytes that follow

_UPLOADS = "/repos/{owner}/{name}/uploads"


class ChunkList(BaseModel):
    chunks: list[str] = Field(max_length=MAX_HASHES, description="Chunk sha256s, 64 hexadecimal digits each.")


class MissingOut(BaseModel):
    missing: list[str] = Field(description="The chunks of the question the server lacks, in its order.")


class ChunksStored(BaseModel):
    received: int = Field(description="Chunks in the batch.")
    stored: int = Field(description="Chunks the server did not hold before (the others were duplicates).")


class ObjectIn(BaseModel):
    oid: str = Field(description="sha256 of the whole file (its Git LFS oid).")
    size: int = Field(ge=0, description="Size of the whole file in bytes.")
    chunks: list[str] = Field(
        max_length=MAX_MANIFEST_CHUNKS, description="The file's chunk sha256s, in order (repeats allowed)."
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
    hashes = [check_oid(h) for h in body.chunks]
    absent = blobs.missing_chunks(hashes)
    return MissingOut(missing=[h for h in dict.fromkeys(hashes) if h in absent])


def parse_frames(body: bytes) -> list[tuple[bytes, memoryview]]:
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


async def _read_batch(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BATCH_BYTES:
        raise PayloadTooLarge(f"a chunk batch holds at most {MAX_BATCH_BYTES} bytes; send smaller batches")
    parts: list[bytes] = []
    got = 0
    async for part in request.stream():
        got += len(part)
        if got > MAX_BATCH_BYTES:
            raise PayloadTooLarge(
                f"a chunk batch holds at most {MAX_BATCH_BYTES} bytes; send smaller batches"
            )
        parts.append(part)
    return b"".join(parts)


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
    owner: str, name: str, request: Request, session: SessionDep, blobs: BlobsDep, actor: UserActorDep
) -> ChunksStored:
    """Store a batch of chunks, framed as `[sha256 (32 bytes)][length (4 bytes, big-endian)][bytes]`,
    repeated. Every chunk is checked against its hash first: one wrong chunk (422 `digest_mismatch`) or
    a truncated frame (422 `truncated_batch`) stores nothing of the batch."""
    await run_in_threadpool(_writable, actor, session, owner, name)
    session.close()
    body = await _read_batch(request)
    chunks = parse_frames(body)
    if not chunks:
        raise InvalidInput("the batch holds no chunks", code="empty_batch")
    stored = await run_in_threadpool(blobs.put_chunks, chunks)
    return ChunksStored(received=len(chunks), stored=stored)


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
