"""Reading a new object back once, to prove that its chunks make the announced sha256.

`BlobStore.commit_manifest` assembles an object from chunks uploaded moments ago (or long ago, shared
with other files) and must check the sha256 of their concatenation. That pass reads every byte once
and never again: what the page cache holds is copied from it (chunks of a file downloaded a moment ago),
the rest is read around the cache where the filesystem allows it (`O_DIRECT`, setting
`storage_direct_io`), into two reused aligned buffers, one filled on a worker thread while the other is
checked and hashed, with no cache pages to allocate. Every chunk is checked against its record header
and its xxh3-64 (its name when the index has no xxh3), as BlobReader does; damage quarantines the
chunk and raises ObjectDamaged, never a wrong verdict about the client's oid.

A client's manifest is checked before its bytes are read: the lengths of its chunks are known (from the
index, or from memory), so a manifest that makes more bytes than the announced size is refused as soon as
its running total passes that size (`size_mismatch`), and one that names a chunk shorter than the
chunker's MIN_SIZE before its last chunk (no file our chunker cuts has one: such a manifest only makes
the object slower to read for everyone who holds it) is refused as `invalid_manifest`. Between feeds a
reader holds no buffer, only the manifest so far and the running hash: a client streaming its manifest
may pause for minutes between parts.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opensci.errors import InvalidInput
from opensci.storage.chunking import MIN_SIZE
from opensci.storage.errors import DigestMismatch, ObjectDamaged
from opensci.storage.index import CHECKPOINT, ENTRY, Location, decode_checkpoints
from opensci.storage.packs import ALIGN, HEADER, IOV_MAX, check_chunk, open_direct, pack_path
from opensci.storage.reader import _executor
from opensci.storage.sha256 import Sha256

if TYPE_CHECKING:
    from opensci.storage.store import BlobStore

SPAN_BYTES = 8 * 1024 * 1024  # most record bytes read at once
BUFFER_BYTES = SPAN_BYTES + 2 * ALIGN  # a span, widened to whole blocks at both ends
CHECKPOINT_BYTES = 4 * 1024 * 1024  # the least content between two saved sha256 states
SLOTS = 3  # spans in memory at once as chunk bytes: one read, one checked, one hashed


@dataclass(frozen=True)
class Base:
    """A stored object that a new one may start like (the file an upload replaces): its manifest and
    its sha256 checkpoints. While a streamed manifest names the base's chunks in the base's order, the
    reader reads nothing; at the first other chunk it resumes the hash from the base's last
    checkpoint before it (chunk names are BLAKE3 hashes of the bytes, so the same names in the same
    order are the same content, with the same sha256 state). The chunks taken from the base are not read
    again, so damage in them is found as in any stored object: by reads, which check every chunk, and by
    `opensci storage verify`; an upload of the same content then repairs it."""

    oid: str
    manifest: bytes
    checkpoints: bytes

    def __post_init__(self) -> None:
        decode_checkpoints(self.checkpoints)  # ValueError for a damaged record


class _Moved(Exception):
    """A pack went away after its chunks were located; `done` chunks of the feed were hashed."""

    def __init__(self, done: int) -> None:
        super().__init__(done)
        self.done = done


@dataclass(frozen=True)
class _Span:
    """Manifest entries [first, first + len(locations)) whose records follow each other in one pack."""

    pack_id: str
    locations: tuple[Location, ...]
    digests: tuple[bytes, ...]

    @property
    def start(self) -> int:
        return self.locations[0].offset - self.locations[0].offset % ALIGN

    @property
    def stop(self) -> int:
        last = self.locations[-1]
        end = last.offset + HEADER + last.length
        return end + (-end) % ALIGN


def _spans(digests: Sequence[bytes], locations: dict[bytes, Location]) -> Iterator[_Span]:
    run: list[Location] = []
    names: list[bytes] = []
    nbytes = 0
    for d in digests:
        loc = locations[d]
        size = HEADER + loc.length
        if run and (
            loc.pack_id != run[0].pack_id
            or loc.offset != run[-1].offset + HEADER + run[-1].length
            or nbytes + size > SPAN_BYTES
        ):
            yield _Span(run[0].pack_id, tuple(run), tuple(names))
            run, names, nbytes = [], [], 0
        run.append(loc)
        names.append(d)
        nbytes += size
    if run:
        yield _Span(run[0].pack_id, tuple(run), tuple(names))


def _fill(fd: int, view: memoryview, start: int, got: int, n: int, *, nowait: bool = False) -> int:
    """Fill view[got:n] from the pack at `start` + got. Fewer bytes at the end of the pack, after a read
    that ends off a block (only the end of the pack makes one), and, with `nowait`, from the first byte
    the page cache does not hold (RWF_NOWAIT: nothing is read from the disk)."""
    while got < n:
        try:
            k = os.preadv(fd, [view[got:n]], start + got, os.RWF_NOWAIT if nowait else 0)
        except OSError:
            if nowait:  # EAGAIN: the rest is not in the cache (or the filesystem cannot tell)
                return got
            raise
        got += max(k, 0)
        if k <= 0 or (got % ALIGN and not nowait):
            break
    return got


def _read(fds: tuple[int, int | None], buffer: mmap.mmap, start: int, n: int) -> int:
    """Fill buffer[:n] from the pack at `start` (a block boundary); fewer bytes only at its end.

    `fds`: the pack opened through the page cache, and opened for direct reads (None where not wanted
    or refused). Bytes the page cache holds (a file downloaded, or re-uploaded, a moment ago) are copied
    from it; the rest is read with direct I/O where allowed: a read through the cache of bytes it does
    not hold goes at the speed of the kernel's small read-ahead, several times slower than one large
    direct read of the same bytes on an SSD."""
    cached, direct = fds
    view = memoryview(buffer)
    try:
        if direct is None:
            return _fill(cached, view, start, 0, n)
        got = _fill(cached, view, start, 0, n, nowait=True)  # what the cache holds
        if got < n:
            got = _fill(direct, view, start, got - got % ALIGN, n)
        return got
    finally:
        view.release()


def _gather(fd: int, span: _Span, heads: bytearray, joined: bytearray, *, nowait: bool) -> bool:
    """Read a span's records with one scatter read: each chunk's bytes straight to their place in
    `joined` (back to back, as they are hashed), each header to `heads`. With `nowait`, only from the page
    cache (RWF_NOWAIT). True if every record was read whole; False if the cache lacked some (or the pack
    ends early: the caller reads the span again as raw bytes, and finds out)."""
    hv, jv = memoryview(heads), memoryview(joined)
    iov: list[memoryview] = []
    at = 0
    for k, loc in enumerate(span.locations):
        iov += [hv[k * HEADER : (k + 1) * HEADER], jv[at : at + loc.length]]
        at += loc.length
    offset = span.locations[0].offset
    flags = os.RWF_NOWAIT if nowait else 0
    for i in range(0, len(iov), IOV_MAX):
        part = iov[i : i + IOV_MAX]
        try:
            n = os.preadv(fd, part, offset, flags)
        except OSError:
            if nowait:  # EAGAIN: not all in the cache
                return False
            raise
        want = sum(len(b) for b in part)
        if n < want:
            return False
        offset += n
    return True


def _read_span(
    fds: tuple[int, int | None], span: _Span, raw: mmap.mmap, heads: bytearray, joined: bytearray
) -> tuple[bool, int]:
    """On a worker thread: (True, 0) once the span's chunks are gathered in `joined` and their headers in
    `heads` (from the page cache; or through it, where direct I/O is not used); else (False, n) with the
    span's raw bytes in raw[:n] (see `_read`)."""
    if _gather(fds[0], span, heads, joined, nowait=fds[1] is not None):
        return True, 0
    return False, _read(fds, raw, span.start, span.stop - span.start)


class _Packs:
    """The packs' file descriptors: through the page cache, and for direct reads where allowed."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self.direct = store.direct_io and hasattr(os, "RWF_NOWAIT")
        self.fds: dict[str, tuple[int, int | None]] = {}

    def fd(self, pack_id: str) -> tuple[int, int | None]:
        fds = self.fds.get(pack_id)
        if fds is None:
            path = pack_path(self.store.packs_dir, pack_id)
            cached = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                direct = open_direct(path, os.O_RDONLY) if self.direct else None
            except OSError:
                os.close(cached)
                raise
            fds = self.fds[pack_id] = (cached, direct)
        return fds

    def close(self) -> None:
        for cached, direct in self.fds.values():
            os.close(cached)
            if direct is not None:
                os.close(direct)
        self.fds.clear()


class ContentReader:
    """Reads an object's chunks back in manifest order, checks each, and hashes the content they make.

    Fed the whole manifest at once (`commit_manifest`), or piece by piece while a client streams it
    during its upload (`commit_streamed`), so that checking a new object costs nothing after its last
    chunk arrives. Chunks the store lacks (or holds damaged) are collected in `missing`; nothing is
    hashed after the first of them. Not shared between threads; close it (or use `with`)."""

    def __init__(
        self, store: BlobStore, oid: str = "", size: int | None = None, *, min_chunk: int = MIN_SIZE
    ) -> None:
        self.store = store
        self.oid = oid  # the object being checked, when known: marked damaged with a damaged chunk
        self.limit = size  # the announced size, when known: a manifest making more is refused early
        self.min_chunk = min_chunk  # the shortest chunk allowed before the last one
        self.size = 0
        self.missing: dict[bytes, None] = {}
        self._manifest = bytearray()  # the manifest so far, encoded (ENTRY per chunk)
        self._short: tuple[bytes, int] | None = None  # the last chunk, if shorter than MIN_SIZE
        self._whole = Sha256()
        self._checkpoints = bytearray()  # CHECKPOINT entries: chunk count, sha256 state after it
        self._saved_at = 0  # content hashed when the last checkpoint was taken
        self._base: Base | None = None
        self.resumed_at = 0  # bytes of content whose hash came from the base's checkpoint, not read
        self._matched = 0  # leading chunks of the manifest that are the base's, not read yet
        self._packs = _Packs(store)
        self._buffers: list[mmap.mmap] = []  # two raw buffers, for spans read as they are on disk
        self._slots: list[tuple[bytearray, bytearray]] = []  # three (chunk bytes, headers) of spans
        self._turn = 0  # spans read so far: span k uses raw buffer k % 2 and slot k % 3
        self._hashing: tuple[Future[None], int] | None = None  # a span's hash in flight, chunks after it

    def __enter__(self) -> ContentReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def hexdigest(self) -> str:
        self.end()
        return self._whole.hexdigest()

    @property
    def manifest(self) -> bytes:
        """The manifest fed so far, encoded as the index stores it."""
        self.end()
        return bytes(self._manifest)

    @property
    def checkpoints(self) -> bytes | None:
        """The sha256 states saved at chunk boundaries about every CHECKPOINT_BYTES (see `Base`), or
        None where states cannot be saved (see `sha256`)."""
        self.end()
        return bytes(self._checkpoints) if self._whole.state() is not None else None

    def start_like(self, base: Base) -> None:
        """Before the first feed: the object may start with the chunks of `base` (see `Base`)."""
        if self._manifest or self._matched:
            raise RuntimeError("start_like comes before the first feed")
        self._base = base

    def end(self) -> None:
        """The manifest is complete: hash what the base's chunks left unread, and wait for the hash."""
        if self._base is not None:
            try:
                self._resume(self._matched)
            finally:
                self._free()
        self._wait_hash()

    def _hashed(self, chunks: int) -> None:
        """Content was hashed up to the end of chunk `chunks`: save the state if the last saved is far
        enough back."""
        if self._whole.offset - self._saved_at >= CHECKPOINT_BYTES:
            state = self._whole.state()
            if state is not None:
                self._checkpoints += CHECKPOINT.pack(chunks, state)
                self._saved_at = self._whole.offset

    def _wait_hash(self) -> None:
        """Wait for the span being hashed on a worker thread (see `_check_and_hash`)."""
        if self._hashing is not None:
            future, chunks = self._hashing
            self._hashing = None
            future.result()
            self._hashed(chunks)

    def _drop_hash(self) -> None:
        """After a failure: wait for the span being hashed, whatever its outcome."""
        if self._hashing is not None:
            with contextlib.suppress(BaseException):
                self._hashing[0].result()
            self._hashing = None

    def _update(self, data: memoryview) -> None:
        """Hash `data`, the bytes of the chunks appended so far that are not hashed yet, here."""
        self._wait_hash()
        self._whole.update(data)
        self._hashed(len(self._manifest) // ENTRY.size)

    def feed(self, digests: Sequence[bytes], locations: dict[bytes, Location] | None = None) -> None:
        """The next chunks of the manifest (located here unless `locations` is given). ObjectDamaged
        for a chunk that fails its check; DigestMismatch (`size_mismatch`) once the chunks make more
        than the announced size, InvalidInput for a short chunk before the last, both before their
        bytes are read. Chunks still in memory from their upload moments ago (see `recent`) are hashed
        from there; the others are read from the packs. The buffers are freed before this returns."""
        try:
            self._feed(digests, locations)
        finally:
            self._free()

    def _feed(self, digests: Sequence[bytes], locations: dict[bytes, Location] | None) -> None:
        if self._base is not None:
            digests = self._match(digests)
            if not digests:
                return
        if locations is not None or self.missing:
            self._feed_packs(digests, locations)
            return
        recent = self.store.recent
        while digests:
            done = self._from_memory(digests)
            rest = digests[done:]
            if not rest:
                return
            stop = next((i for i, d in enumerate(rest) if i and recent.has(d)), len(rest))
            self._feed_packs(rest[:stop])
            digests = rest[stop:]
            if self.missing:  # nothing more is hashed; the rest is looked at for what else is missing
                self._feed_packs(digests)
                return

    def _match(self, digests: Sequence[bytes]) -> Sequence[bytes]:
        """Take the leading digests that go on naming the base's chunks in order; once one does not,
        resume (see `_resume`) and return the digests from it on."""
        base = self._base
        assert base is not None
        manifest, at = base.manifest, self._matched * ENTRY.size
        for i, digest in enumerate(digests):
            if manifest[at : at + 32] != digest:
                self._resume(self._matched)
                return digests[i:]
            self._matched += 1
            at += ENTRY.size
        return ()

    def _resume(self, matched: int) -> None:
        """The first `matched` chunks are the base's: take the manifest and the hash up to its last
        checkpoint within them, then read and hash the chunks from there to `matched` (still checked
        against the announced size)."""
        base = self._base
        assert base is not None
        self._base = None
        self._matched = 0
        usable = [(count, state) for count, state in decode_checkpoints(base.checkpoints) if count <= matched]
        start, state = usable[-1] if usable else (0, None)
        entries = base.manifest[: start * ENTRY.size]
        size = sum(n for _, n in ENTRY.iter_unpack(entries))
        if state is not None:
            try:
                self._whole = Sha256.resume(state, size)
            except ValueError:  # a state of another build of OpenSSL: hash from the start
                start, size, entries = 0, 0, b""
        if size:
            self.size = self._check_next(0, None, b"", size)  # no more than announced
            self._manifest += entries
            self.resumed_at = self._saved_at = size
            self._checkpoints += b"".join(CHECKPOINT.pack(*saved) for saved in usable)  # the same states
        step = ENTRY.size
        rest = [base.manifest[i * step : i * step + 32] for i in range(start, matched)]
        if rest:
            self._feed(rest, None)

    def _check_next(self, size: int, short: tuple[bytes, int] | None, digest: bytes, n: int) -> int:
        """Refuse the manifest if chunk `digest` of `n` bytes may not follow (a short chunk before it, or
        more bytes than announced); the size with it."""
        if short is not None:
            raise InvalidInput(
                f"the manifest names chunk {short[0].hex()} of {short[1]} bytes before its last chunk: "
                f"only a file's last chunk may be shorter than {self.min_chunk} bytes (cut files with "
                "FastCDC, min 16 / avg 64 / max 256 KiB, as the opensci SDK does); nothing was stored",
                code="invalid_manifest",
            )
        size += n
        if self.limit is not None and size > self.limit:
            raise DigestMismatch(
                f"the chunks add up to more than the announced {self.limit} bytes; nothing was stored",
                code="size_mismatch",
            )
        return size

    def _precheck(self, digests: Sequence[bytes], locations: dict[bytes, Location]) -> None:
        """`_check_next` for each chunk, before any is read."""
        size, short = self.size, self._short
        for d in digests:
            n = locations[d].length
            size = self._check_next(size, short, d, n)
            short = (d, n) if n < self.min_chunk else None

    def _append(self, digest: bytes, n: int) -> None:
        self.size = self._check_next(self.size, self._short, digest, n)
        self._manifest += ENTRY.pack(digest, n)
        self._short = (digest, n) if n < self.min_chunk else None

    def _from_memory(self, digests: Sequence[bytes]) -> int:
        """Hash the leading chunks of `digests` that are in memory; returns how many."""
        self._wait_hash()  # the buffer below may be the one a worker is hashing
        view = memoryview(self._slot(self._turn % SLOTS, SPAN_BYTES, 0)[0])
        recent = self.store.recent
        at = done = 0
        try:
            for d in digests:
                n = recent.take(d, view[at:])
                if n is None and at:
                    self._update(view[:at])  # one call per span (see _check_and_hash)
                    at = 0
                    n = recent.take(d, view)
                if n is None:
                    break
                self._append(d, n)
                at += n
                done += 1
            if at:
                self._update(view[:at])
        finally:
            view.release()
        return done

    def _feed_packs(self, digests: Sequence[bytes], locations: dict[bytes, Location] | None = None) -> None:
        """Read the chunks from the packs, check and hash them. Chunks that compaction moved meanwhile are
        located again."""
        for attempt in range(2):
            if locations is None:
                locations = self.store._locate(digests)
            for d in digests:
                loc = locations.get(d)
                if loc is None or loc.damaged or loc.legacy:  # a legacy name is no proof of the bytes
                    self.missing[d] = None
            if self.missing:
                return
            self._precheck(digests, locations)
            try:
                self._hash(digests, locations)
                return
            except _Moved as moved:  # compaction deleted a pack after we located its chunks
                if attempt:
                    raise FileNotFoundError(f"chunks of {self.oid or 'a new object'} keep moving") from None
                digests, locations = digests[moved.done :], None

    def _hash(self, digests: Sequence[bytes], locations: dict[bytes, Location]) -> None:
        spans = _spans(digests, locations)
        done = 0  # digests hashed
        reading: tuple[Future[tuple[bool, int]], int, int] | None = None
        try:
            current = next(spans, None)
            if current is not None:
                reading = self._read(current)
            while current is not None and reading is not None:
                future, slot, raw = reading
                try:
                    gathered, got = future.result()
                except FileNotFoundError:
                    raise _Moved(done) from None
                reading = None
                following = next(spans, None)
                if following is not None:  # read the next span while this one is checked and hashed
                    reading = self._read(following)
                self._check_and_hash(current, slot, None if gathered else raw, got)
                done += len(current.digests)
                current = following
        except BaseException:
            self._drop_hash()
            raise
        finally:
            if reading is not None:
                reading[0].cancel()
                with contextlib.suppress(BaseException):  # the first failure is the one being raised
                    reading[0].result()

    def _slot(self, k: int, need: int, chunks: int) -> tuple[bytearray, bytearray]:
        """Slot `k`, large enough for `need` bytes of chunks and `chunks` headers."""
        while len(self._slots) <= k:
            self._slots.append((bytearray(SPAN_BYTES), bytearray(HEADER * (SPAN_BYTES // MIN_SIZE + 1))))
        joined, heads = self._slots[k]
        if len(joined) < need or len(heads) < HEADER * chunks:  # a chunk larger than a span, or tiny ones
            joined = bytearray(max(len(joined), need))
            heads = bytearray(max(len(heads), HEADER * chunks))
            self._slots[k] = (joined, heads)
        return joined, heads

    def _read(self, span: _Span) -> tuple[Future[tuple[bool, int]], int, int]:
        """Start reading a span on a worker thread: (its future, its slot, its raw buffer). Spans take
        slots in turn; three of them, as span k + 1 is read while span k is checked and span k - 1 hashed
        (and raw buffers, two, as only the span being checked reads its raw buffer)."""
        slot, raw = self._turn % SLOTS, self._turn % 2
        self._turn += 1
        joined, heads = self._slot(slot, sum(loc.length for loc in span.locations), len(span.locations))
        n = span.stop - span.start
        while len(self._buffers) <= raw:
            self._buffers.append(mmap.mmap(-1, BUFFER_BYTES))
        if len(self._buffers[raw]) < n:  # one chunk larger than a span (up to MAX_CHUNK)
            with contextlib.suppress(BufferError):
                self._buffers[raw].close()
            self._buffers[raw] = mmap.mmap(-1, n)
        try:
            fds = self._packs.fd(span.pack_id)
        except FileNotFoundError as exc:
            failed: Future[tuple[bool, int]] = Future()
            failed.set_exception(exc)
            return failed, slot, raw
        return _executor().submit(_read_span, fds, span, self._buffers[raw], heads, joined), slot, raw

    def _check_and_hash(self, span: _Span, slot: int, raw: int | None, got: int) -> None:
        """Check each chunk of a span and hash their bytes, back to back in its slot, in one call on a
        worker thread while the next span is checked here: SHA-256 lets go of the GIL once per span, not
        once per chunk (a thread that gives the GIL up waits for it again up to the switch interval, 5
        ms, while another thread runs Python). One span is hashed at a time, in order.

        The chunks were gathered in the slot by the read (`raw` None), or are copied there from the raw
        bytes of the span, `got` of them in raw buffer `raw` (a direct read, or one the cache lacked)."""
        joined_buffer, heads_buffer = self._slots[slot]
        joined, heads = memoryview(joined_buffer), memoryview(heads_buffer)
        data = memoryview(self._buffers[raw])[:got] if raw is not None else None
        at_joined = 0
        try:
            for k, (loc, digest) in enumerate(zip(span.locations, span.digests, strict=True)):
                reason: str | None
                if data is None:
                    body = joined[at_joined : at_joined + loc.length]
                    header = heads[k * HEADER : (k + 1) * HEADER]
                    reason = check_chunk(header, body, digest, verify=True, fast=loc.check)
                else:
                    at = loc.offset - span.start
                    if at + HEADER + loc.length > len(data):
                        reason = "the pack ends before the chunk does"
                    else:
                        body = data[at + HEADER : at + HEADER + loc.length]
                        reason = check_chunk(
                            data[at : at + HEADER], body, digest, verify=True, fast=loc.check
                        )
                        joined[at_joined : at_joined + loc.length] = body
                if reason is not None:
                    self.store._quarantine(self.oid, (digest, loc))
                    raise ObjectDamaged(
                        f"chunk {digest.hex()} (pack {loc.pack_id}, offset {loc.offset}) is damaged: "
                        f"{reason}. It is quarantined; upload the file again to repair it"
                    )
                at_joined += loc.length
                self._append(digest, loc.length)
            self._wait_hash()
            self._hashing = (
                _executor().submit(self._whole.update, joined[:at_joined]),
                len(self._manifest) // ENTRY.size,
            )
        finally:
            joined.release()
            heads.release()
            if data is not None:
                data.release()

    def _free(self) -> None:
        """Let go of the read buffers and pack files between feeds (a stream may pause for minutes)."""
        self._packs.close()
        for buffer in self._buffers:
            with contextlib.suppress(BufferError):  # a view in a traceback still uses it: freed later
                buffer.close()
        self._buffers = []
        self._slots = []

    def close(self) -> None:
        self._drop_hash()
        self._free()
