"""Reading an object: a seekable binary file over its chunks, checking each chunk as it is read.

Chunks that sit one after the other in the same pack (the usual case: a file written in one upload)
are read with one `pread` of up to SPAN_BYTES, then each is checked (its xxh3-64, else its name). The
last span read is kept, so small sequential reads cost no extra I/O or hashing.
"""

from __future__ import annotations

import io
import os
import threading
from array import array
from bisect import bisect_right
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opensci.storage.errors import ObjectDamaged
from opensci.storage.index import ENTRY, Location
from opensci.storage.packs import HEADER, IOV_MAX, check_chunk, pack_path, read_chunks

if TYPE_CHECKING:
    from opensci.storage.store import BlobStore

SPAN_BYTES = 8 * 1024 * 1024  # most bytes read (and returned) in one go
WINDOW = 256  # chunks located per database query
PREFETCH = 2  # spans read ahead by `blocks(prefetch=True)`


class BlobReader(io.RawIOBase):
    """The content of one object. Not shared between threads; close it (or use `with`)."""

    def __init__(self, store: BlobStore, oid: str, size: int, manifest: bytes, *, verify: bool) -> None:
        super().__init__()
        self.store = store
        self.oid = oid
        self.size = size
        self.verify = verify
        n = len(manifest) // ENTRY.size
        self._digests = [manifest[i * ENTRY.size : i * ENTRY.size + 32] for i in range(n)]
        self._starts = array("q", [0])
        for _, length in ENTRY.iter_unpack(manifest):
            self._starts.append(self._starts[-1] + length)
        if self._starts[-1] != size:
            raise ObjectDamaged(f"object {oid}: its manifest adds up to {self._starts[-1]} bytes, not {size}")
        self._locations: dict[int, Location] = {}
        self._located = range(0)  # the window of chunk indexes last looked up
        self._fds: dict[str, int] = {}
        self._pos = 0
        self._inflight: set[Future[_Loaded]] = set()
        self._stream: Generator[memoryview, None, None] | None = None  # sequential read-ahead
        self._read_end = -1  # where the last read stopped: the stream continues from there
        self._span: tuple[int, int, memoryview] | None = None  # (start, end, bytes) of the last span read

    # --- io.RawIOBase -------------------------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        out = memoryview(buffer).cast("B")
        done = 0
        for block in self._sequential(min(self.size, self._pos + len(out))):
            out[done : done + len(block)] = block
            done += len(block)
        return done

    def read(self, size: int | None = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        parts = list(self._sequential(end))
        if not parts:
            return b""
        return parts[0].tobytes() if len(parts) == 1 else b"".join(parts)

    def readall(self) -> bytes:
        return self.read(-1)

    def _sequential(self, end: int) -> Iterator[memoryview]:
        """Bytes [pos, end) for read/readinto, advancing pos. A read that starts where the previous one
        stopped (or a large one) is served from a stream that reads ahead on worker threads."""
        pos = self._pos
        continues = pos == self._read_end
        sequential = continues or end - pos > SPAN_BYTES
        if not continues:
            self._stop_stream()
        while pos < end:
            span = self._span
            if span is not None and span[0] <= pos < span[1]:
                block = span[2][pos - span[0] : min(end, span[1]) - span[0]]
            elif sequential:
                if self._stream is None:
                    self._stream = self.blocks(pos, self.size, prefetch=True)
                try:
                    block = next(self._stream)[: end - pos]
                except BaseException:
                    self._stop_stream()
                    raise
            else:
                block = next(self.blocks(pos, end))
            pos += len(block)
            self._pos = pos
            yield block
        self._read_end = pos

    def _stop_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()  # waits for its read-ahead
            self._stream = None

    def close(self) -> None:
        if not self.closed:
            self._stop_stream()
            wait(list(self._inflight))  # read-ahead still using these files
            self._inflight.clear()
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self._span = None
        super().close()

    def __enter__(self) -> BlobReader:
        return self

    # --- the bytes --------------------------------------------------------------------------------------

    def blocks(self, start: int, end: int, *, prefetch: bool = False) -> Iterator[memoryview]:
        """Checked bytes [start, end) as read-only views of up to SPAN_BYTES each (buffers never reused).

        With `prefetch`, the next spans are read and checked on worker threads while the caller uses
        this one (hashlib releases the GIL): streaming a large range then runs at about the speed of
        the slower of the two, not of both added."""
        pos = start
        span = self._span
        if span is not None and span[0] <= pos < span[1] and pos < end:
            stop = min(end, span[1])
            yield span[2][pos - span[0] : stop - span[0]]
            pos = stop
        if pos >= end:
            return
        runs = self._runs(pos, end)
        if not prefetch:
            for run in runs:
                pos = yield from self._emit(run, _load(run, self.verify), pos, end)
            return
        pending: deque[tuple[_Run, Future[_Loaded]]] = deque()
        try:
            for run in runs:
                pending.append((run, _executor().submit(_load, run, self.verify)))
                self._inflight.add(pending[-1][1])
                if len(pending) > PREFETCH:
                    done, future = pending.popleft()
                    self._inflight.discard(future)
                    pos = yield from self._emit(done, future.result(), pos, end)
            while pending:
                done, future = pending.popleft()
                self._inflight.discard(future)
                pos = yield from self._emit(done, future.result(), pos, end)
        finally:
            for _, future in pending:
                future.cancel()
            wait([f for _, f in pending])
            self._inflight.difference_update(f for _, f in pending)

    def _emit(self, run: _Run, loaded: _Loaded, pos: int, end: int) -> Generator[memoryview, None, int]:
        data, failure = loaded
        if failure is not None:
            k, reason = failure
            loc, digest = run.locations[k], run.digests[k]
            self.store._quarantine(self.oid, None if loc.damaged else (digest, loc))
            raise ObjectDamaged(
                f"object {self.oid} is damaged: chunk {digest.hex()} (pack {loc.pack_id}, offset "
                f"{loc.offset}): {reason}. The object is quarantined until it is uploaded again"
            )
        assert data is not None
        self._span = (run.start, run.end, data)
        stop = min(end, run.end)
        yield data[pos - run.start : stop - run.start]
        return stop

    def _runs(self, pos: int, end: int) -> Iterator[_Run]:
        i = bisect_right(self._starts, pos) - 1
        while i < len(self._digests) and self._starts[i] < end:
            for attempt in range(2):
                try:
                    run = self._plan(i)
                    break
                except FileNotFoundError:
                    # Compaction moved these chunks and deleted their old pack: ask the index again.
                    self._locations.clear()
                    self._located = range(0)
                    if attempt:
                        raise
            yield run
            i += len(run.locations)

    def _location(self, i: int, required: bool = True) -> Location | None:
        loc = self._locations.get(i)
        if loc is None and (required or i not in self._located):
            self._locations.clear()
            window = range(i, min(i + WINDOW, len(self._digests)))
            found = self.store._locate([self._digests[j] for j in window])
            self._located = window
            for j in window:
                hit = found.get(self._digests[j])
                if hit is not None:
                    self._locations[j] = hit
            loc = self._locations.get(i)
            if loc is None and required:
                self.store._quarantine(self.oid)
                raise ObjectDamaged(
                    f"object {self.oid} is damaged: its chunk {self._digests[i].hex()} "
                    "is missing from the store"
                )
        return loc

    def _plan(self, i: int) -> _Run:
        """Chunk i and those after it that follow it in the same pack, up to SPAN_BYTES: one read."""
        first = self._location(i)
        assert first is not None
        run = [first]
        nbytes = HEADER + first.length
        j = i + 1
        while j < len(self._digests) and nbytes < SPAN_BYTES and len(run) < IOV_MAX // 2:
            loc = self._location(j, required=False)
            if loc is None or loc.pack_id != first.pack_id or loc.offset != first.offset + nbytes:
                break
            if nbytes + HEADER + loc.length > SPAN_BYTES:
                break
            run.append(loc)
            nbytes += HEADER + loc.length
            j += 1
        return _Run(
            start=self._starts[i],
            end=self._starts[j],
            fd=self._fd(first.pack_id),
            locations=tuple(run),
            digests=tuple(self._digests[i:j]),
        )

    def _fd(self, pack_id: str) -> int:
        fd = self._fds.get(pack_id)
        if fd is None:
            fd = os.open(pack_path(self.store.packs_dir, pack_id), os.O_RDONLY | os.O_CLOEXEC)
            self._fds[pack_id] = fd
        return fd


@dataclass(frozen=True)
class _Run:
    """Chunks that follow each other in one pack: the logical bytes [start, end) of the object."""

    start: int
    end: int
    fd: int
    locations: tuple[Location, ...]
    digests: tuple[bytes, ...]


_Loaded = tuple[memoryview | None, tuple[int, str] | None]  # (bytes, or (chunk index, why it is bad))


def _load(run: _Run, verify: bool) -> _Loaded:
    """Read and check a run (any thread: it touches nothing but the file and fresh buffers)."""
    headers, data, whole = read_chunks(run.fd, run.locations[0].offset, [loc.length for loc in run.locations])
    at = 0
    for k, loc in enumerate(run.locations):
        if loc.damaged:
            return None, (k, "the chunk is marked damaged")
        if k >= whole:
            return None, (k, "the pack ends before the chunk does")
        reason = check_chunk(
            headers[k], data[at : at + loc.length], run.digests[k], verify=verify, fast=loc.check
        )
        if reason is not None:
            return None, (k, reason)
        at += loc.length
    return data.toreadonly(), None


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="blob-read"
            )
        return _pool
