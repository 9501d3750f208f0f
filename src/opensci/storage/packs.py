"""Pack files: append-only files of self-describing chunk records, each written by one writer only.

A pack starts with a 16-byte header (`OSCIPACK`, format version, reserved) and holds records:

    b"OSCK" | length (4 bytes, big-endian) | the chunk's name (32) | the chunk's bytes

so the chunk index can always be rebuilt by scanning the packs, and any record can be checked against
its own name (the BLAKE3 of its bytes, or their sha256 in stores written before: `chunking.names`).
A writer holds an exclusive `flock` on its pack for as long as it may append to it; the lock dies with
the process, which is how maintenance tells an abandoned pack from one in use.
Durability order: bytes are appended, the file is fsynced, and only then does the database learn
where they are. Bytes past the last fsync belong to nobody and are cut off when a write fails.

Writers append with direct I/O (`O_DIRECT`) where the filesystem allows it: records are copied into
an aligned staging buffer of the writer's own and written from there, bypassing the page cache, so
an upload costs one memory copy instead of a copy into freshly allocated cache pages (on a virtual
machine whose free memory goes back to the host, that copy cost more CPU than hashing). Direct writes
cover whole blocks: the last partial block is written padded with zeros (then cut back to the last
record) and rewritten, from the copy the writer keeps of it, by the next append. Readers read through
the page cache as usual (the kernel keeps the two coherent).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import struct
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from xxhash import xxh3_64_digest

from opensci.storage.chunking import name_kind, names

PACK_MAGIC = b"OSCIPACK"
PACK_VERSION = 1
PACK_HEADER = struct.Struct(">8sII")
RECORD_MAGIC = b"OSCK"
RECORD_HEADER = struct.Struct(">4sI32s")
HEADER = RECORD_HEADER.size  # 40 bytes before each chunk's data
MAX_CHUNK = 16 * 1024 * 1024  # the largest chunk a record may hold (uploaded chunks included)
SCAN_BLOCK = 16 * 1024 * 1024
IOV_MAX = min(1024, os.sysconf("SC_IOV_MAX"))
ALIGN = 4096  # direct I/O: file offsets, lengths and buffer addresses are multiples of this
STAGE_BYTES = 8 * 1024 * 1024  # a direct writer's staging buffer (and its largest single write)


def pack_path(root: Path, pack_id: str) -> Path:
    return root / f"{pack_id}.pack"


def fsync_dir(path: Path) -> None:
    """Make a file's creation, rename or removal in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def try_lock(fd: int) -> bool:
    """Take the exclusive lock of a pack without waiting; False if a writer (or a compaction) holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def try_lock_path(path: Path) -> int | None:
    """Open an existing pack and take its exclusive lock: the fd, or None if a writer or another
    maintenance run holds it. Closing the fd releases the lock. FileNotFoundError if it is gone."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    if try_lock(fd):
        return fd
    os.close(fd)
    return None


def record_header(name: bytes, length: int) -> bytes:
    return RECORD_HEADER.pack(RECORD_MAGIC, length, name)


def check_chunk(
    header: bytes | memoryview,
    data: memoryview,
    name: bytes,
    *,
    verify: bool = True,
    fast: bytes | None = None,
) -> str | None:
    """Why a record (its header and the chunk's bytes) is not the stored copy of this chunk; None if it is.
    With `verify`, the bytes are checked against `fast` (their xxh3-64, from the index) when given,
    else against the chunk's name."""
    if len(header) != HEADER:
        return "the record is cut short"
    magic, n, digest = RECORD_HEADER.unpack(header)
    if magic != RECORD_MAGIC or n != len(data) or digest != name:
        return "the record header does not name this chunk"
    if verify and fast is not None:
        if xxh3_64_digest(data) != fast:
            return "the chunk's bytes do not match their checksum"
    elif verify and not names(name, data):
        return "the chunk's bytes do not match its name"
    return None


def read_chunks(fd: int, offset: int, lengths: Sequence[int]) -> tuple[list[memoryview], memoryview, int]:
    """Read consecutive records starting at `offset` with one scatter read: the chunks' bytes land
    back to back in one buffer, the headers aside. Returns (headers, data, how many records were
    read whole: fewer than asked when the pack ends early)."""
    heads = bytearray(HEADER * len(lengths))
    data = bytearray(sum(lengths))
    hv, dv = memoryview(heads), memoryview(data)
    buffers: list[memoryview] = []
    headers: list[memoryview] = []
    pos = 0
    for k, n in enumerate(lengths):
        headers.append(hv[k * HEADER : (k + 1) * HEADER])
        buffers.append(headers[-1])
        buffers.append(dv[pos : pos + n])
        pos += n
    done = 0
    for i in range(0, len(buffers), IOV_MAX):
        part = buffers[i : i + IOV_MAX]
        n = os.preadv(fd, part, offset + done)
        done += n
        if n < sum(len(b) for b in part):  # the pack is shorter than the index says
            break
    whole, left = 0, done
    for n in lengths:
        if left < HEADER + n:
            break
        left -= HEADER + n
        whole += 1
    return headers, dv, whole


RowT = TypeVar("RowT", bound=tuple[Any, ...])


def contiguous_runs(rows: Sequence[RowT], max_bytes: int = 8 * 1024 * 1024) -> Iterator[list[RowT]]:
    """Group index rows `(name, offset, length, ...)`, sorted by offset, into runs of records that
    follow each other in the pack, for one `read_chunks` each."""
    run: list[RowT] = []
    nbytes = 0
    for row in rows:
        size = HEADER + row[2]
        if run and (
            run[-1][1] + HEADER + run[-1][2] != row[1]
            or nbytes + size > max_bytes
            or len(run) >= IOV_MAX // 2
        ):
            yield run
            run, nbytes = [], 0
        run.append(row)
        nbytes += size
    if run:
        yield run


def open_direct(path: Path, flags: int) -> int | None:
    """The file opened again with O_DIRECT, or None where the system or filesystem refuses it."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return None
    try:
        return os.open(path, flags | direct | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return None
        raise


class PackWriter:
    """Appends chunk records to a new pack of its own. Not shared between threads.

    With `direct` (and a filesystem that supports it), appends bypass the page cache (see the module)."""

    def __init__(self, root: Path, max_bytes: int, *, direct: bool = False) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.id = uuid.uuid4().hex
        self.path = pack_path(root, self.id)
        root.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            if not try_lock(self.fd):
                raise RuntimeError(f"new pack {self.path} is locked by someone else")
            header = PACK_HEADER.pack(PACK_MAGIC, PACK_VERSION, 0)
            _pwrite_all(self.fd, [header], 0)
            os.fsync(self.fd)
            fsync_dir(root)
        except BaseException:
            os.close(self.fd)
            self.path.unlink(missing_ok=True)
            raise
        self.offset = len(header)  # where the next record goes
        self.synced = self.offset  # bytes known durable
        self.recorded = self.offset  # bytes the database may reference (never cut off)
        self.uncertain = False  # an index commit failed: did it happen? (then nothing may be cut off)
        self.closed = False
        self._direct_fd = open_direct(self.path, os.O_WRONLY) if direct else None
        self._stage: mmap.mmap | None = None  # direct writes go through this aligned buffer
        self._tail = header  # direct writes: the pack's bytes from the block `offset` is in, to `offset`
        self._padded = False  # a failed direct write may have left bytes after `offset` (see rewind)

    @property
    def direct(self) -> bool:
        """Whether appends bypass the page cache."""
        return self._direct_fd is not None

    @property
    def empty(self) -> bool:
        return self.offset == PACK_HEADER.size

    def has_room(self, nbytes: int) -> bool:
        """Whether `nbytes` more fit below the size limit."""
        return self.offset + nbytes <= self.max_bytes

    def fitting(self, chunks: Sequence[tuple[bytes, memoryview | bytes]]) -> int:
        """How many of these chunks, from the first, fit below the size limit (an empty pack takes
        at least one, whatever its size)."""
        n, nbytes = 0, 0
        for _, data in chunks:
            nbytes += HEADER + len(data)
            if not self.has_room(nbytes) and not (n == 0 and self.empty):
                break
            n += 1
        return n

    def append(self, chunks: Sequence[tuple[bytes, memoryview | bytes]]) -> list[int]:
        """Write records for (name, data) pairs in one system call; returns each record's offset."""
        buffers: list[bytes | memoryview] = []
        offsets: list[int] = []
        pos = self.offset
        for digest, data in chunks:
            if len(data) > MAX_CHUNK:
                raise ValueError(f"a chunk holds at most {MAX_CHUNK} bytes, not {len(data)}")
            offsets.append(pos)
            buffers.append(record_header(digest, len(data)))
            buffers.append(data)
            pos += HEADER + len(data)
        if buffers:
            if self._direct_fd is not None:
                self._append_direct(buffers)
            else:
                _pwrite_all(self.fd, buffers, self.offset)
            self.offset = pos
        return offsets

    def _append_direct(self, buffers: Sequence[bytes | memoryview]) -> None:
        """Write `buffers` at `offset` with direct I/O, whole blocks from the block `offset` is in (its
        head is the kept tail), the last block padded with zeros. Falls back to ordinary writes, for
        good, if the filesystem refuses the first direct write."""
        assert self._direct_fd is not None
        if self._stage is None:
            self._stage = mmap.mmap(-1, STAGE_BYTES)  # page-aligned
        stage = memoryview(self._stage)
        base = self.offset - len(self._tail)
        fill = len(self._tail)
        stage[:fill] = self._tail
        self._padded = True  # until this append succeeds, the file may hold bytes after `offset`
        try:
            for buffer in buffers:
                data = memoryview(buffer).cast("B")
                pos = 0
                while pos < len(data):
                    n = min(len(data) - pos, STAGE_BYTES - fill)
                    stage[fill : fill + n] = data[pos : pos + n]
                    fill += n
                    pos += n
                    if fill == STAGE_BYTES:
                        _pwrite_direct(self._direct_fd, stage, base)
                        base += fill
                        fill = 0
            keep = fill % ALIGN
            if fill:
                end = fill + (ALIGN - keep) % ALIGN
                stage[fill:end] = bytes(end - fill)
                _pwrite_direct(self._direct_fd, stage[:end], base)
                if end > fill:  # the pack ends at its last record, as with ordinary writes
                    os.ftruncate(self.fd, base + fill)
        except OSError as exc:
            if exc.errno != errno.EINVAL or base != self.offset - len(self._tail):
                raise
            os.close(self._direct_fd)  # refused before anything was written: write as usual
            self._direct_fd = None
            self._padded = False
            _pwrite_all(self.fd, buffers, self.offset)
            return
        finally:
            stage.release()
        self._tail = bytes(self._stage[fill - keep : fill])
        self._padded = False

    def sync(self) -> int:
        """fsync what was appended; returns the durable size."""
        end = self.offset
        if self.synced < end:
            os.fsync(self.fd)
            self.synced = end
        return end

    def mark_recorded(self, end: int) -> None:
        self.recorded = max(self.recorded, end)

    def rewind(self) -> None:
        """Drop everything appended since the database last learned about this pack (after an error)."""
        if self.offset != self.recorded or self._padded:
            os.ftruncate(self.fd, self.recorded)
            os.fsync(self.fd)
            self.offset = self.synced = self.recorded
            self._padded = False
            start = self.recorded - self.recorded % ALIGN
            self._tail = os.pread(self.fd, self.recorded - start, start)

    def close(self) -> None:
        """Release the file and its lock (after `sync`, or the unsynced tail belongs to nobody)."""
        if not self.closed:
            self.closed = True
            if self._direct_fd is not None:
                os.close(self._direct_fd)
            if self._stage is not None:
                with contextlib.suppress(BufferError):  # a view in a traceback still uses it
                    self._stage.close()
            os.close(self.fd)


def _pwrite_all(fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> None:
    """pwritev every buffer, continuing after short writes."""
    pending = [memoryview(b).cast("B") for b in buffers]
    first = 0
    while first < len(pending):
        written = os.pwritev(fd, pending[first : first + IOV_MAX], offset)
        if written <= 0:
            raise OSError(errno.EIO, "pwritev wrote nothing")
        offset += written
        while written:
            head = pending[first]
            if written >= len(head):
                written -= len(head)
                first += 1
            else:
                pending[first] = head[written:]
                written = 0


def _pwrite_direct(fd: int, block: memoryview, offset: int) -> None:
    """Write whole aligned blocks with direct I/O, continuing after short writes."""
    done = 0
    while done < len(block):
        written = os.pwrite(fd, block[done:], offset + done)
        if written <= 0 or (done + written < len(block) and written % ALIGN):
            raise OSError(errno.EIO, "a direct write stopped inside a block")
        done += written


@dataclass(frozen=True)
class ScannedRecord:
    offset: int
    digest: bytes
    length: int
    legacy: bool = False  # named by its sha256 (written before chunks were named by BLAKE3)


class _Window:
    """Buffered positional reads over a file that may be damaged anywhere."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size
        self.start, self.buf = 0, b""

    def get(self, offset: int, n: int) -> memoryview:
        end = min(offset + n, self.size)
        if offset < self.start or end > self.start + len(self.buf):
            self.start = offset
            self.buf = os.pread(self.fd, max(end - offset, SCAN_BLOCK), offset)
        return memoryview(self.buf)[offset - self.start : end - self.start]

    def find(self, needle: bytes, offset: int) -> int:
        while offset < self.size:
            self.get(offset, SCAN_BLOCK)
            if not self.buf:
                return -1
            i = self.buf.find(needle, offset - self.start)
            if i >= 0:
                return self.start + i
            offset = max(offset + 1, self.start + len(self.buf) - len(needle) + 1)
        return -1


def scan_pack(path: Path, end: int | None = None) -> Iterator[ScannedRecord]:
    """Every valid record of a pack (in its first `end` bytes), in file order, re-hashing each one.

    A damaged or torn record is skipped: the scan resumes at the next record magic after it.
    """
    with open(path, "rb", buffering=0) as fh:
        fd = fh.fileno()
        size = os.fstat(fd).st_size
        win = _Window(fd, size if end is None else min(end, size))
        if bytes(win.get(0, PACK_HEADER.size))[:8] != PACK_MAGIC:
            return
        pos = PACK_HEADER.size
        while pos + HEADER <= win.size:
            head = win.get(pos, HEADER)
            if len(head) < HEADER:
                return
            magic, length, digest = RECORD_HEADER.unpack(head)
            if magic == RECORD_MAGIC and length <= MAX_CHUNK and pos + HEADER + length <= win.size:
                data = win.get(pos + HEADER, length)
                kind = name_kind(digest, data) if len(data) == length else None
                if kind is not None:
                    yield ScannedRecord(pos, bytes(digest), length, legacy=kind == "sha256")
                    pos += HEADER + length
                    continue
            pos = win.find(RECORD_MAGIC, pos + 1)
            if pos < 0:
                return
