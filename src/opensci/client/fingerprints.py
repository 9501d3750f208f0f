"""What this machine uploaded last to each path: re-uploads of an edited file cut and name only what changed.

After an upload of a large file, the SDK keeps a fingerprint of it in its cache (`$OPENSCI_CACHE_DIR`,
else `$XDG_CACHE_HOME/opensci`, else `~/.cache/opensci`; `uploads/`, one file per server, repository and
path): the file's sha256, the xxh3-128 of each of its BLOCK-sized blocks, and its chunks (BLAKE3 name
and length, as the server's chunker cut them). The next upload to the same path compares the blocks of
the new file with those (xxh3 runs at memory speed) and takes every old chunk whose bytes lie in
unchanged blocks as it is; only the regions around changed blocks are cut with FastCDC again, from the
start of the first old chunk they touch until a cut lands on an old chunk boundary. That gives exactly
the chunks a cut of the whole file would give (a content-defined cut depends only on the bytes since the
previous cut), so deduplication is unchanged. The manifest then names the old file as its `base`: the
server resumes its sha256 at the first change instead of reading the file from its start.

A fingerprint is only a guide to which chunks to name: the server still checks every new chunk against
its name and computes the file's sha256 itself. Chunk names prove to the server that one has the content
(that is how an upload skips the bytes the server has), so the entries are private to their user (the
folder 0700, the files 0600), written atomically; a damaged or foreign entry is ignored, and an upload
that fails while it follows an entry drops it (`forget`), so a bad entry costs one failed upload at most.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import threading
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from blake3 import blake3
from xxhash import xxh3_128_digest

from opensci.client.errors import TransferError

BLOCK = 1024 * 1024  # bytes per fingerprinted block
MAX_CHUNK = 256 * 1024  # the chunker's largest chunk (chunks.MAX_SIZE)
PRINT = 16  # bytes of a block's print (xxh3-128)
MAGIC = b"opensci-upload-fingerprint 1\n"
_ENTRY = struct.Struct(">32sI")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def cache_dir() -> Path:
    """Where the SDK keeps fingerprints of what it uploaded."""
    own = os.environ.get("OPENSCI_CACHE_DIR")
    if own:
        return Path(own)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "opensci"


@dataclass(frozen=True)
class Fingerprint:
    """A file as it was uploaded: its sha256 and size, its blocks' prints, its chunks' names and lengths."""

    oid: str
    size: int
    prints: bytes
    names: bytes  # 32 bytes per chunk
    lengths: array  # type: ignore[type-arg]

    def offsets(self) -> list[int]:
        out, at = [], 0
        for n in self.lengths:
            out.append(at)
            at += n
        return out


class BlockPrints:
    """The prints of a file's BLOCK-sized blocks, fed its bytes in order, in pieces of any size."""

    def __init__(self) -> None:
        self._prints = bytearray()
        self._partial = bytearray()

    def update(self, data: memoryview | bytes) -> None:
        view = memoryview(data)
        if self._partial:
            take = min(BLOCK - len(self._partial), len(view))
            self._partial += view[:take]
            view = view[take:]
            if len(self._partial) < BLOCK:
                return
            self._prints += xxh3_128_digest(self._partial)
            self._partial.clear()
        whole = len(view) - len(view) % BLOCK
        for i in range(0, whole, BLOCK):
            self._prints += xxh3_128_digest(view[i : i + BLOCK])
        self._partial += view[whole:]

    def digest(self) -> bytes:
        if self._partial:
            return bytes(self._prints) + xxh3_128_digest(self._partial)
        return bytes(self._prints)


def _key(server: str, repo: str, path_in_repo: str) -> str:
    return hashlib.sha256(f"{server.rstrip('/')}\n{repo}\n{path_in_repo}".encode()).hexdigest()


def load(server: str, repo: str, path_in_repo: str) -> Fingerprint | None:
    """The fingerprint of what was last uploaded from here to that path, if one is kept and intact."""
    path = _entry(server, repo, path_in_repo)
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    body, check = raw[:-32], raw[-32:]
    if len(raw) < len(MAGIC) + 32 or not body.startswith(MAGIC) or hashlib.sha256(body).digest() != check:
        return None
    try:
        header_end = body.index(b"\n", len(MAGIC))
        header = json.loads(body[len(MAGIC) : header_end])
        oid, size, count = str(header["oid"]), int(header["size"]), int(header["chunks"])
        prints_len = -(-size // BLOCK) * PRINT
        at = header_end + 1
        prints = body[at : at + prints_len]
        at += prints_len
        entries = body[at:]
        if len(prints) != prints_len or len(entries) != count * _ENTRY.size or not _SHA256.match(oid):
            return None
    except (ValueError, KeyError, TypeError, RecursionError):  # not written by `save`
        return None
    names = b"".join(name for name, _ in _ENTRY.iter_unpack(entries))
    lengths = array("I", (n for _, n in _ENTRY.iter_unpack(entries)))
    if sum(lengths) != size or any(not 0 < n <= MAX_CHUNK for n in lengths):
        return None
    return Fingerprint(oid, size, prints, names, lengths)


def _entry(server: str, repo: str, path_in_repo: str) -> Path:
    return cache_dir() / "uploads" / _key(server, repo, path_in_repo)


def forget(server: str, repo: str, path_in_repo: str) -> None:
    """Drop what is kept of the last upload to that path (best effort)."""
    with contextlib.suppress(OSError):
        _entry(server, repo, path_in_repo).unlink(missing_ok=True)


def save(server: str, repo: str, path_in_repo: str, fp: Fingerprint) -> None:
    """Keep `fp` as what was last uploaded to that path (best effort: a cache that cannot be written is
    no reason to fail an upload that succeeded)."""
    folder = cache_dir() / "uploads"
    header = json.dumps({"oid": fp.oid, "size": fp.size, "chunks": len(fp.lengths)}).encode()
    entries = b"".join(_ENTRY.pack(fp.names[i * 32 : i * 32 + 32], n) for i, n in enumerate(fp.lengths))
    body = MAGIC + header + b"\n" + fp.prints + entries
    target = _entry(server, repo, path_in_repo)
    temp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # an existing one stays as it is
        folder.mkdir(exist_ok=True, mode=0o700)
        if folder.stat().st_mode & 0o077:  # made by an earlier version, or under another umask
            folder.chmod(0o700)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(body + hashlib.sha256(body).digest())
        os.replace(temp, target)
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)


# --- the plan of a re-upload ------------------------------------------------------------------------------

Piece = tuple[str, int, int]
"""A chunk of the new file: its name (hex), offset, length."""


class Reuse:
    """Cuts a file that may be an edit of `old`, in file order: old chunks whose bytes are in unchanged
    blocks are taken as they are (`reused` counts them), the rest is cut with FastCDC (see the module's
    docstring). Iterate for lists of pieces, as `chunks._Cutter` gives them; `prints` then holds the
    new file's block prints. The file is read a block at a time into one buffer (a file that shrinks
    meanwhile is a TransferError)."""

    def __init__(self, path: Path, old: Fingerprint, chunker_factory: object, max_size: int) -> None:
        self.path = path
        self.old = old
        self.new_chunker = chunker_factory
        self.max_size = max_size
        self.size = 0
        self.prints = b""
        self.known: set[str] = set()  # names of the old chunks taken (the server holds them)
        self.reused_bytes = 0
        self.hashes: list[str] = []
        self.offsets: list[int] = []
        self.lengths: list[int] = []

    def __iter__(self) -> Iterator[list[Piece]]:
        old = self.old
        starts = {off: j for j, off in enumerate(old.offsets())}  # where each old chunk starts
        names = old.names
        with open(self.path, "rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size
            self.size = size
            for pieces in self._plan(fh.fileno(), size, starts, names):
                for h, off, n in pieces:
                    self.hashes.append(h)
                    self.offsets.append(off)
                    self.lengths.append(n)
                yield pieces

    def _read(self, fd: int, view: memoryview, offset: int) -> None:
        """Fill `view` from the file at `offset`."""
        got = 0
        while got < len(view):
            n = os.preadv(fd, [view[got:]], offset + got)
            if n <= 0:
                raise TransferError(f"{self.path} shrank while it was being uploaded; upload it again")
            got += n

    def _plan(
        self,
        fd: int,
        size: int,
        starts: dict[int, int],
        names: bytes,
    ) -> Iterator[list[Piece]]:
        old = self.old
        lengths = old.lengths
        nblocks = -(-size // BLOCK)
        prints = bytearray()
        same: list[bool] = []
        pos = 0  # the next byte of the new file to give a chunk to
        j: int | None = 0  # the old chunk that starts at `pos`, while the files agree up to it
        out: list[Piece] = []
        block = memoryview(bytearray(BLOCK))

        def unchanged(start: int, stop: int) -> bool | None:
            """Whether the blocks holding [start, stop) are all unchanged; None if not all read yet."""
            last = (stop - 1) // BLOCK
            if last >= len(same):
                return None
            return all(same[b] for b in range(start // BLOCK, last + 1))

        for b in range(nblocks):
            lo, hi = b * BLOCK, min(size, (b + 1) * BLOCK)
            self._read(fd, block[: hi - lo], lo)
            p = xxh3_128_digest(block[: hi - lo])
            prints += p
            old_hi = min(old.size, (b + 1) * BLOCK)
            same.append(old_hi - lo == hi - lo and old.prints[b * PRINT : (b + 1) * PRINT] == p)
            while pos < size:
                if j is not None and j < len(lengths):
                    n = lengths[j]
                    end = pos + n
                    ok = end <= size and (end < old.size or size == old.size)
                    verdict = unchanged(pos, end) if ok else False
                    if verdict is None:
                        break  # wait for the blocks to be read
                    if verdict:
                        name = names[j * 32 : j * 32 + 32].hex()
                        out.append((name, pos, n))
                        self.known.add(name)
                        self.reused_bytes += n
                        pos, j = end, j + 1
                        continue
                # a change: cut from here until a cut lands where an old chunk starts
                if hi < size and hi - pos < self.max_size + BLOCK:
                    break  # cut once enough of the file is read ahead
                pos, j, cut = self._cut(fd, pos, size, hi, starts)
                out.extend(cut)
            if out:
                yield out
                out = []
        self.prints = bytes(prints)

    def _cut(
        self, fd: int, pos: int, size: int, read: int, starts: dict[int, int]
    ) -> tuple[int, int | None, list[Piece]]:
        """Cut the new file from `pos` (a cut of the whole file would cut there too) until a chunk ends
        where an old chunk starts, or at the bytes read so far (`read`, MAX_SIZE ahead of the last cut
        taken unless the file ends there). Returns the next position, the old chunk starting there (or
        None), and the chunks cut."""
        cdc = self.new_chunker()  # type: ignore[operator]
        window = memoryview(bytearray(read - pos))
        self._read(fd, window, pos)
        out: list[Piece] = []
        at = pos
        for ch in cdc.cut_buf(window):
            if read < size and ch.offset + self.max_size > len(window):
                break
            piece = window[ch.offset : ch.offset + ch.length]
            out.append((blake3(piece).hexdigest(), pos + ch.offset, ch.length))
            at = pos + ch.offset + ch.length
            j = starts.get(at)
            if j is not None:
                return at, j, out
        return at, None, out

    def abandon(self) -> None:
        """Nothing runs on its own here (see `chunks._Cutter.abandon`)."""
