"""The client side of the chunk upload protocol: send only the chunks of a file the server lacks.

A file is cut into content-defined chunks with the parameters of the server's blob store (FastCDC 2020,
min 16 / avg 64 / max 256 KiB, normalized chunking 2: they must agree, or nothing deduplicates; a test
compares the two), each named by the BLAKE3 hash of its bytes, as the server names them. While the file
is still being cut, the client asks the repository which chunks of each part it lacks (on a thread of
its own), sends those in batches from several threads, and streams the file's manifest
(`/uploads/manifests`) as parts are stored: the server reads the file back from its chunks and hashes it
meanwhile, and answers with its sha256, which the commit names as a Git LFS pointer. Each byte is hashed
once here and twice on the server (its chunk, checked on arrival; the whole file), and nothing is left
to hash when the last batch is stored. A run after an interruption asks again, so only what is still
missing is sent: uploads resume by construction.

Memory stays small whatever the file's size: the file is read in blocks of a few MiB and batches are
streamed from disk while they are sent. This module needs httpx, pyfastcdc and blake3, nothing of the
server.
"""

from __future__ import annotations

import hashlib
import os
import queue
import struct
import threading
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, CancelledError, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from blake3 import blake3
from pyfastcdc import FastCDC

from opensci.client.errors import OpenSciError, TransferError
from opensci.client.fingerprints import BlockPrints, Fingerprint, Reuse

if TYPE_CHECKING:
    from opensci.client.client import Client

# The server's chunking parameters (opensci.storage.chunking), repeated: the SDK imports no server code.
MIN_SIZE = 16 * 1024
AVG_SIZE = 64 * 1024
MAX_SIZE = 256 * 1024
NORMALIZATION = 2

READ_BLOCK = 2 * 1024 * 1024  # bytes read at a time while chunking
CHUNKED_MIN_BYTES = 1024 * 1024  # files larger than this are uploaded as chunks
BATCH_BYTES = 16 * 1024 * 1024  # chunk bytes per request (the server takes up to 64 MiB)
MISSING_BATCH = 50_000  # chunk hashes per `missing` question (the server takes up to 100,000)
WORKERS = 4  # batches in flight at once
ASK_BATCHES = 4  # one `missing` question per this many batches' worth of new chunks
REGION_CHUNKS = 512  # a re-upload's manifest goes out at least every this many chunks (about 32 MiB)
FRAME = struct.Struct(">32sI")  # a chunk's frame in a batch: its name, length of the bytes that follow
PIECE_BYTES = 256 * 1024  # a batch body is sent in writes of about this size

Hashed = Callable[[int], None]
"""Called with the number of bytes just hashed."""
Sent = Callable[[int, int], None]
"""Called after each batch with (bytes of the file it completes, bytes that went over the wire)."""


@dataclass(frozen=True)
class FileChunks:
    """A local file cut into chunks: its sha256 and size, and each chunk's hash, offset and length."""

    path: Path
    oid: str
    size: int
    hashes: list[str]
    offsets: list[int]
    lengths: list[int]
    prints: bytes = b""  # the prints of its blocks (see `fingerprints`)

    def unique(self) -> list[str]:
        """The distinct chunk hashes, in order of first appearance."""
        return list(dict.fromkeys(self.hashes))

    def fingerprint(self) -> Fingerprint:
        """What `fingerprints` keeps of the file once it is uploaded."""
        return Fingerprint(self.oid, self.size, self.prints, _ids(self.hashes), array("I", self.lengths))


def new_chunker() -> FastCDC:
    return FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, normalized_chunking=NORMALIZATION)


def _readinto_full(fh: object, view: memoryview) -> int:
    """Fill `view` from the file; fewer bytes only at its end."""
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def _whole_sha256(path: Path, result: dict[str, object]) -> None:
    """sha256 and size of a file, read with a buffer of its own (run on a second thread: hashlib
    releases the GIL, so the file's hash and its chunks' hashes use two cores)."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(1024 * 1024)
    view = memoryview(buf)
    try:
        with open(path, "rb", buffering=0) as fh:
            while n := _readinto_full(fh, view):
                h.update(view[:n])
                size += n
        result["oid"], result["size"] = h.hexdigest(), size
    except BaseException as exc:  # re-raised by the caller
        result["error"] = exc


class _Cutter:
    """Cuts a file into chunks exactly as the server's blob store does, block by block, while (with
    `whole`) a second thread hashes the whole file (hashlib releases the GIL: two cores). Iterate for
    the chunks, as (hash, offset, length) lists; then `finish()` gives the file's sha256 and size.

    Boundaries equal `FastCDC.cut_stream`'s: a cut is taken only once MAX_SIZE bytes follow the chunk's
    start or the file has ended, so reading in blocks changes nothing."""

    def __init__(self, path: Path, on_hashed: Hashed | None = None, *, whole: bool = True) -> None:
        self.path = path
        self.on_hashed = on_hashed
        self._whole: dict[str, object] = {}
        self._thread = (
            threading.Thread(
                target=_whole_sha256, args=(path, self._whole), name="opensci-sha256", daemon=True
            )
            if whole
            else None
        )
        self.size = 0
        self.hashes: list[str] = []
        self.offsets: list[int] = []
        self.lengths: list[int] = []
        self.prints = BlockPrints()

    def __iter__(self) -> Iterator[list[tuple[str, int, int]]]:
        if self._thread is not None:
            self._thread.start()
        cdc = new_chunker()
        buf = bytearray(READ_BLOCK + MAX_SIZE)
        view = memoryview(buf)
        base = 0  # file offset of buf[0]
        carry = 0  # bytes at the start of buf left from the previous block
        with open(self.path, "rb", buffering=0) as fh:
            while True:
                n = _readinto_full(fh, view[carry : carry + READ_BLOCK])
                self.prints.update(view[carry : carry + n])
                eof = n < READ_BLOCK
                end = carry + n
                data = view[:end]
                used = 0
                block: list[tuple[str, int, int]] = []
                for ch in cdc.cut_buf(data):
                    if not eof and ch.offset + MAX_SIZE > end:
                        break
                    piece = data[ch.offset : ch.offset + ch.length]
                    block.append((blake3(piece).hexdigest(), base + ch.offset, ch.length))
                    used = ch.offset + ch.length
                for h, off, length in block:
                    self.hashes.append(h)
                    self.offsets.append(off)
                    self.lengths.append(length)
                self.size += used
                if self.on_hashed is not None and used:
                    self.on_hashed(used)
                if block:
                    yield block
                if eof:
                    break
                buf[: end - used] = buf[used:end]
                base += used
                carry = end - used

    def finish(self) -> FileChunks:
        """The file's chunks and sha256 (without `whole`, an empty oid), once every chunk was taken
        (TransferError if the file changed meanwhile)."""
        prints = self.prints.digest()
        if self._thread is None:
            return FileChunks(self.path, "", self.size, self.hashes, self.offsets, self.lengths, prints)
        self._thread.join()
        if "error" in self._whole:
            raise self._whole["error"]  # type: ignore[misc]
        if self._whole["size"] != self.size:
            raise TransferError(f"{self.path} changed while it was being read; upload it again")
        return FileChunks(
            self.path, str(self._whole["oid"]), self.size, self.hashes, self.offsets, self.lengths, prints
        )

    def abandon(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._thread.join()


def chunk_file(path: Path, on_hashed: Hashed | None = None) -> FileChunks:
    """Cut a file into chunks exactly as the server's blob store does, and hash them and the file."""
    cutter = _Cutter(path, on_hashed)
    try:
        for _ in cutter:
            pass
    finally:
        cutter.abandon()
    return cutter.finish()


# --- the protocol ----------------------------------------------------------------------------------------


def ask_missing(client: Client, repo: str, hashes: list[str]) -> set[str]:
    """The hashes among `hashes` the repository's server lacks (asked in batches)."""
    url = client.api_path(repo, "uploads", "chunks", "missing")
    missing: set[str] = set()
    for i in range(0, len(hashes), MISSING_BATCH):
        reply = client.request("POST", url, json={"chunks": hashes[i : i + MISSING_BATCH]})
        missing.update(reply.json()["missing"])
    return missing


@dataclass
class _Batch:
    entries: list[tuple[str, int, int]] = field(default_factory=list)  # hash, offset, length
    file_bytes: int = 0  # bytes of the file these chunks complete (every occurrence of each)

    @property
    def body_length(self) -> int:
        return sum(FRAME.size + length for _, _, length in self.entries)


def _batches(fc: FileChunks, wanted: set[str], limit: int) -> list[_Batch]:
    """The wanted chunks (each once, at its first occurrence) grouped into batches of about `limit`."""
    occurrences: dict[str, int] = {}
    first: dict[str, tuple[int, int]] = {}
    for h, off, length in zip(fc.hashes, fc.offsets, fc.lengths, strict=True):
        if h in wanted:
            occurrences[h] = occurrences.get(h, 0) + length
            first.setdefault(h, (off, length))
    out: list[_Batch] = []
    current = _Batch()
    size = 0
    for h, (off, length) in first.items():
        if current.entries and size + length > limit:
            out.append(current)
            current, size = _Batch(), 0
        current.entries.append((h, off, length))
        current.file_bytes += occurrences[h]
        size += length
    if current.entries:
        out.append(current)
    return out


def _frames(path: Path, batch: _Batch) -> Iterator[bytes]:
    """A batch's body, read from the file while it is sent, in pieces of about PIECE_BYTES (one write
    each: per-piece costs of the HTTP stack, paid per chunk, cost more CPU than the bytes)."""
    buf = bytearray(PIECE_BYTES + FRAME.size + MAX_SIZE)
    view = memoryview(buf)
    pos = 0
    with open(path, "rb", buffering=0) as fh:
        fd = fh.fileno()
        for h, off, length in batch.entries:
            if pos + FRAME.size + length > len(buf):
                yield bytes(view[:pos])
                pos = 0
            FRAME.pack_into(buf, pos, bytes.fromhex(h), length)
            pos += FRAME.size
            got = 0
            while got < length:
                n = os.preadv(fd, [view[pos + got : pos + length]], off + got)
                if n <= 0:
                    raise TransferError(f"{path} shrank while it was being uploaded; upload it again")
                got += n
            pos += length
            if pos >= PIECE_BYTES:
                yield bytes(view[:pos])
                pos = 0
    if pos:
        yield bytes(view[:pos])


def send_chunks(
    client: Client,
    repo: str,
    fc: FileChunks,
    wanted: set[str],
    *,
    workers: int = WORKERS,
    batch_bytes: int | None = None,
    on_sent: Sent | None = None,
) -> int:
    """Send the `wanted` chunks of a file in parallel batches; returns the bytes sent (frames included).
    A failure (or a callback raising) stops the batches not started yet and is raised."""
    url = client.api_path(repo, "uploads", "chunks")
    batches = _batches(fc, wanted, batch_bytes or BATCH_BYTES)
    lock = threading.Lock()
    sent = [0]
    stop = threading.Event()
    timeout = httpx.Timeout(client.timeout, read=max(client.timeout, 300.0))

    def one(batch: _Batch) -> None:
        if stop.is_set():
            return
        length = batch.body_length
        client.request(
            "POST",
            url,
            content=_frames(fc.path, batch),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)},
            timeout=timeout,
        )
        with lock:
            sent[0] += length
            if on_sent is not None:
                on_sent(batch.file_bytes, length)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="opensci-upload") as pool:
        futures = [pool.submit(one, b) for b in batches]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            stop.set()
            for f in pending:
                f.cancel()
            wait(pending)
            raise failed[0].exception()  # type: ignore[misc]
    return sent[0]


class _Manifest:
    """The file's manifest, streamed to `/uploads/manifests` from a thread of its own while the upload
    goes on: the chunk ids of each part of the file, in order, released once the batches carrying that
    part's new chunks are acknowledged (stored). The server reads and hashes the file as they come."""

    def __init__(self, client: Client, repo: str, size: int, base: str | None = None) -> None:
        self._queue: queue.Queue[tuple[bytes, list[Future[None]]] | BaseException | None] = queue.Queue()
        self._reply: dict[str, object] = {}
        self._thread = threading.Thread(
            target=self._post, args=(client, repo, size, base), name="opensci-manifest", daemon=True
        )
        self._thread.start()

    def add(self, ids: bytes, batches: list[Future[None]]) -> None:
        self._queue.put((ids, batches))

    def end(self) -> None:
        self._queue.put(None)

    def abort(self, exc: BaseException) -> None:
        """Stop the stream: the server sees the request fail and stores nothing."""
        self._queue.put(exc)
        self._thread.join()

    def result(self) -> tuple[str, int]:
        """The server's answer, (oid, size), once `end` was called."""
        self._thread.join()
        if "error" in self._reply:
            raise self._reply["error"]  # type: ignore[misc]
        return _answer(self._reply)

    def _body(self) -> Iterator[bytes]:
        while (item := self._queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            ids, batches = item
            for batch in batches:
                batch.result()  # its chunks are stored (or the stream fails with it)
            yield ids

    def _post(self, client: Client, repo: str, size: int, base: str | None) -> None:
        try:
            self._reply.update(post_manifest(client, repo, size, self._body(), base=base))
        except BaseException as exc:
            self._reply["error"] = exc


def post_manifest(
    client: Client, repo: str, size: int, body: bytes | Iterator[bytes], *, base: str | None = None
) -> dict[str, object]:
    """Send a file's manifest (its chunk ids, 32 raw bytes each, in order) to be assembled and hashed by
    the server: its reply, `{"oid", "size"}`. `base`: the sha256 of the file of the repository this one
    replaces, so the server hashes only from the first chunk that differs."""
    url = client.api_path(repo, "uploads", "manifests")
    timeout = httpx.Timeout(client.timeout, read=None)  # the stream lasts as long as the upload
    reply = client.request(
        "POST",
        url,
        params={"size": size, **({"base": base} if base else {})},
        content=body,
        headers={"Content-Type": "application/octet-stream"},
        timeout=timeout,
    )
    return dict(reply.json())


def _ids(hashes: list[str]) -> bytes:
    return b"".join(bytes.fromhex(h) for h in hashes)


def _identity(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def upload_path(
    client: Client,
    repo: str,
    path: Path,
    *,
    workers: int = WORKERS,
    batch_bytes: int | None = None,
    on_hashed: Hashed | None = None,
    on_sent: Sent | None = None,
    like: Fingerprint | None = None,
) -> tuple[FileChunks, int]:
    """Upload a file with the chunk protocol in one pass: the chunks of each part of the file are asked
    about and sent while the rest is still being cut and hashed, and the manifest is streamed to the
    server as parts are stored, so cutting, hashing, sending and the server's check of the whole file
    all overlap. The file's sha256 (its Git LFS oid) is the server's answer: the server reads the file's
    content back from its own chunks, each checked against the name this client computed from the
    local file, so the client hashes each byte once. Returns the file's chunks (with that oid) and the
    bytes sent (frames included).

    `on_sent(file_bytes, wire_bytes)`: the file bytes the server had already (with 0 sent) as each part
    is asked about, then one call per batch sent; the file bytes add up to the file's size.

    `like`: the fingerprint of the file this one replaces, as uploaded from here (see `fingerprints`):
    the old chunks of unchanged regions are named without being cut again or asked about, and the server
    resumes its hash at the first change."""
    limit = batch_bytes or BATCH_BYTES
    ask_bytes = limit * ASK_BATCHES  # new chunks per question (and per part of the manifest)
    url = client.api_path(repo, "uploads", "chunks")
    timeout = httpx.Timeout(client.timeout, read=max(client.timeout, 300.0))
    before = _identity(path)
    cutter: _Cutter | Reuse = (
        _Cutter(path, on_hashed, whole=False) if like is None else Reuse(path, like, new_chunker, MAX_SIZE)
    )
    known = cutter.known if isinstance(cutter, Reuse) else set()  # chunks the server holds
    asked: set[str] = set()
    group: dict[str, tuple[int, int]] = {}  # new hashes not asked about yet → (offset, length)
    group_bytes = 0
    region: list[str] = []  # every chunk cut since the last question, in file order
    repeats = 0  # bytes of chunks seen before in this file: already on their way
    lock = threading.Lock()
    sent = [0]
    slots = threading.BoundedSemaphore(max(1, workers) * 2)  # batches queued or in flight

    def report(file_bytes: int, wire_bytes: int) -> None:
        if on_sent is not None and (file_bytes or wire_bytes):
            with lock:
                on_sent(file_bytes, wire_bytes)

    def one(batch: _Batch) -> None:
        try:
            if stop.is_set():  # another batch failed: the upload stops
                raise CancelledError
            client.request(
                "POST",
                url,
                content=_frames(path, batch),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(batch.body_length),
                },
                timeout=timeout,
            )
            with lock:
                sent[0] += batch.body_length
            report(batch.file_bytes, batch.body_length)
        except BaseException:
            stop.set()
            raise
        finally:
            slots.release()

    manifest = _Manifest(client, repo, before[0], like.oid if like is not None else None)
    stop = threading.Event()
    with (
        ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="opensci-upload") as pool,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="opensci-ask") as asker,
    ):
        futures: list[Future[None]] = []  # batches
        questions: list[Future[None]] = []  # one per part of the file, in order

        def check() -> None:
            with lock:
                done = [f for f in [*questions, *futures] if f.done() and not f.cancelled()]
            for f in done:
                if f.exception() is not None:
                    raise f.exception()  # type: ignore[misc]

        def submit(batch: _Batch) -> Future[None]:
            while not slots.acquire(timeout=0.1):
                if stop.is_set():
                    raise CancelledError
            with lock:
                futures.append(pool.submit(one, batch))
                return futures[-1]

        def dispatch(group: dict[str, tuple[int, int]], region: list[str], repeats: int) -> None:
            """Ask about a part of the file, send its missing chunks, release its part of the manifest
            (on the asking thread: cutting never waits for the server)."""
            missing = ask_missing(client, repo, list(group)) if group else set()
            present = sum(n for h, (_, n) in group.items() if h not in missing) + repeats
            report(present, 0)
            batches: list[Future[None]] = []
            batch = _Batch()
            size = 0
            for h, (off, n) in group.items():
                if h not in missing:
                    continue
                if batch.entries and size + n > limit:
                    batches.append(submit(batch))
                    batch, size = _Batch(), 0
                batch.entries.append((h, off, n))
                batch.file_bytes += n
                size += n
            if batch.entries:
                batches.append(submit(batch))
            manifest.add(_ids(region), batches)

        def flush() -> None:
            nonlocal group, group_bytes, repeats, region
            with lock:
                questions.append(asker.submit(dispatch, group, region, repeats))
            group, group_bytes, repeats, region = {}, 0, 0, []
            check()

        try:
            for block in cutter:
                for h, off, n in block:
                    region.append(h)
                    if h in asked or h in known:
                        repeats += n
                        continue
                    asked.add(h)
                    group[h] = (off, n)
                    group_bytes += n
                if isinstance(cutter, Reuse) and on_hashed is not None:
                    on_hashed(sum(n for _, _, n in block))
                if group_bytes >= ask_bytes or (isinstance(cutter, Reuse) and len(region) >= REGION_CHUNKS):
                    flush()
            flush()
            wait(questions, return_when=FIRST_EXCEPTION)
            check()
            manifest.end()
            wait(futures, return_when=FIRST_EXCEPTION)
            check()
        except BaseException as exc:
            stop.set()
            with lock:
                for f in [*questions, *futures]:
                    f.cancel()
            cutter.abandon()
            manifest.abort(exc)
            raise
    if isinstance(cutter, Reuse):
        fc = FileChunks(path, "", cutter.size, cutter.hashes, cutter.offsets, cutter.lengths, cutter.prints)
    else:
        fc = cutter.finish()
    if _identity(path) != before or fc.size != before[0]:
        manifest.abort(TransferError("the file changed"))
        raise TransferError(f"{path} changed while it was being uploaded; upload it again")
    total = sent[0]
    body: bytes | None = None  # the whole manifest, when it is sent again at once
    for attempt in range(4):
        try:
            if body is None:
                oid, size = manifest.result()
            else:
                oid, size = _answer(post_manifest(client, repo, fc.size, body))
        except OpenSciError as exc:
            if exc.code not in ("missing_chunks", "object_damaged") or attempt == 3:
                raise
            # Collected (or found damaged) meanwhile: send them again, then the whole manifest at once.
            # Progress counted them as the server's: take them back, then count them as they go.
            again = ask_missing(client, repo, fc.unique())
            report(-sum(n for h, n in zip(fc.hashes, fc.lengths, strict=True) if h in again), 0)
            total += send_chunks(
                client, repo, fc, again, workers=workers, batch_bytes=batch_bytes, on_sent=report
            )
            body = _ids(fc.hashes)
            continue
        if size != fc.size:
            raise TransferError(f"the server assembled {size} bytes of {path}, not {fc.size}")
        return replace(fc, oid=oid), total
    raise AssertionError("unreachable")


def _answer(reply: dict[str, object]) -> tuple[str, int]:
    return str(reply["oid"]), int(reply["size"])  # type: ignore[call-overload]
