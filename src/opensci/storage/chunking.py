"""Content-defined chunking (FastCDC 2020) and the chunks' names, in one streaming pass.

The parameters are fixed, not settings: chunks dedupe only against chunks cut the same way, and our
client cuts files with the same parameters to send only what the server lacks.

A chunk is named by the BLAKE3 hash of its bytes (32 bytes): a cryptographic hash, so a chunk stored
under a name is the only content that name can stand for (dedup cannot be poisoned), and four to five
times faster than sha256 here (AVX-512: ~4.6 GB/s a core against ~1.1), which every upload pays twice:
the sender names each chunk, the server checks each name. Stores written before chunks were named by
BLAKE3 hold chunks named by their sha256; those stay valid (`names` accepts either), and new content is
stored under BLAKE3 names. Whole files keep their sha256, which is the Git LFS oid.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterator
from typing import BinaryIO

from blake3 import blake3
from pyfastcdc import FastCDC

MIN_SIZE = 16 * 1024
AVG_SIZE = 64 * 1024
MAX_SIZE = 256 * 1024
NORMALIZATION = 2  # normalized chunking level (FastCDC paper, section 3.5): sizes cluster near AVG_SIZE
READ_BLOCK = 4 * 1024 * 1024

Chunk = tuple[bytes, memoryview]  # (the chunk's name, its bytes)


def chunk_id(data: bytes | memoryview) -> bytes:
    """The name of a chunk: the BLAKE3 hash of its bytes."""
    return blake3(data).digest()


def names(digest: bytes, data: bytes | memoryview) -> bool:
    """Whether `digest` names these bytes: their BLAKE3, or their sha256 (chunks stored before BLAKE3)."""
    return name_kind(digest, data) is not None


def name_kind(digest: bytes, data: bytes | memoryview) -> str | None:
    """How `digest` names these bytes: "blake3", "sha256" (a legacy name), or None (it does not)."""
    if blake3(data).digest() == digest:
        return "blake3"
    if hashlib.sha256(data).digest() == digest:
        return "sha256"
    return None


def new_chunker() -> FastCDC:
    return FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, normalized_chunking=NORMALIZATION)


def read_block(stream: BinaryIO, n: int) -> bytes:
    """Up to n bytes; fewer only at the end of the stream (short reads of pipes and sockets are joined)."""
    data = stream.read(n)
    if not data or len(data) >= n:
        return data or b""
    parts = [data]
    got = len(data)
    while got < n:
        more = stream.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class _Hasher:
    """sha256 of the whole content, computed on a second thread (hashlib releases the GIL), so the
    whole-file hash and the chunk hashes use both cores."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.q: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="blobstore-sha256", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while (block := self.q.get()) is not None:
                self.h.update(block)
        except BaseException as exc:  # pragma: no cover - hashlib does not fail on bytes
            self.error = exc

    def update(self, block: bytes) -> None:
        self.q.put(block)

    def finish(self) -> bytes:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.h.digest()


class ChunkedStream:
    """Reads a stream once: yields its chunks block by block, and knows its sha256 and size at the end.

    Chunk boundaries are exactly those of `FastCDC.cut_stream`: a cut is only taken once at least
    MAX_SIZE bytes follow the chunk's start (or the stream has ended), so reading in blocks changes
    nothing.
    """

    def __init__(self, stream: BinaryIO, *, limit: int | None = None) -> None:
        self.stream = stream
        self.limit = limit  # stop reading once more than this many bytes came (the caller refuses them)
        self.size = 0
        self.digest: bytes | None = None

    @property
    def oid(self) -> str:
        assert self.digest is not None, "the stream was not read to its end"
        return self.digest.hex()

    def blocks(self) -> Iterator[list[Chunk]]:
        cdc = new_chunker()
        whole = hashlib.sha256()
        hasher: _Hasher | None = None
        carry = b""
        try:
            while True:
                block = read_block(self.stream, READ_BLOCK)
                eof = len(block) < READ_BLOCK
                self.size += len(block)
                if hasher is None and not eof:
                    hasher = _Hasher()
                if hasher is not None:
                    hasher.update(block)
                else:
                    whole.update(block)
                if self.limit is not None and self.size > self.limit:
                    return
                buf = carry + block if carry else block
                view = memoryview(buf)
                out: list[Chunk] = []
                carry = b""
                for ch in cdc.cut_buf(view):
                    if not eof and ch.offset + MAX_SIZE > len(buf):
                        carry = buf[ch.offset :]
                        break
                    data = view[ch.offset : ch.offset + ch.length]
                    out.append((chunk_id(data), data))
                if out:
                    yield out
                if eof:
                    break
            self.digest = hasher.finish() if hasher is not None else whole.digest()
            hasher = None
        finally:
            if hasher is not None:
                hasher.finish()
