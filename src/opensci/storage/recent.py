"""Chunks stored moments ago, kept in memory for the manifest that names them next.

An upload through the chunk protocol sends a file's new chunks in batches while it streams the manifest
that names them in order; the server hashes the file's content as the manifest arrives
(`readback.ContentReader`). Reading those chunks back from the packs costs a disk read and a check of
each, yet their bytes were in this process's memory moments before, checked against their names. So a
batch's receive buffer is kept here, within MAX_BYTES, until the manifest has taken its chunks (each is
taken once), newer batches need the room, or it has waited MAX_AGE seconds; the reader reads any chunk
not found here from the packs. Nothing here decides what is stored: committing the object re-checks
every chunk against the index, as for any manifest.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

MAX_BYTES = 128 * 1024 * 1024  # about two parts of an SDK upload's manifest (see client.chunks)
MAX_AGE = 30.0  # seconds; far below any garbage collection grace period


@dataclass(eq=False)
class _Batch:
    release: Callable[[], None]
    born: float
    nbytes: int
    left: set[bytes] = field(default_factory=set)  # names of its chunks not taken yet


class RecentChunks:
    """Thread-safe; one per blob store (per process)."""

    def __init__(self, max_bytes: int = MAX_BYTES, max_age: float = MAX_AGE) -> None:
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._chunks: dict[bytes, tuple[memoryview, _Batch]] = {}
        self._batches: OrderedDict[_Batch, None] = OrderedDict()  # oldest first
        self._bytes = 0
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def keep(
        self, chunks: Sequence[tuple[bytes, memoryview]], release: Callable[[], None], held: int = 0
    ) -> None:
        """Keep these chunks (views of one buffer of `held` bytes) for the manifest; `release` gives the
        buffer back once none of them is kept any more (at once if nothing is). The budget counts the
        whole buffer, whatever share of it the new chunks are."""
        nbytes = max(held, sum(len(view) for _, view in chunks))
        if not chunks or nbytes > self.max_bytes:
            release()
            return
        batch = _Batch(release, time.monotonic(), nbytes)
        freed: list[_Batch] = []
        with self._lock:
            freed += self._expire(room=nbytes)
            for digest, view in chunks:
                if digest not in self._chunks:
                    self._chunks[digest] = (view, batch)
                    batch.left.add(digest)
            if batch.left:
                self._batches[batch] = None
                self._bytes += nbytes
                if self._timer is None:  # idle batches go back even if no upload comes to push them out
                    self._timer = threading.Timer(self.max_age, self._tick)
                    self._timer.daemon = True
                    self._timer.start()
            else:
                freed.append(batch)
        for old in freed:
            old.release()

    def _tick(self) -> None:
        with self._lock:
            freed = self._expire(room=0)
            self._timer = None
            if self._batches:
                self._timer = threading.Timer(self.max_age / 2, self._tick)
                self._timer.daemon = True
                self._timer.start()
        for batch in freed:
            batch.release()

    def take(self, digest: bytes, dest: memoryview) -> int | None:
        """Copy the chunk into `dest` and forget it: its length; None if it is not here (or does not fit,
        then it stays)."""
        freed: list[_Batch] = []
        n: int | None = None
        with self._lock:
            found = self._chunks.get(digest)
            if found is not None and len(found[0]) <= len(dest):
                view, batch = found
                n = len(view)
                dest[:n] = view
                del self._chunks[digest]
                batch.left.discard(digest)
                if not batch.left:
                    self._forget(batch)
                    freed.append(batch)
            freed += self._expire(room=0)
        for batch in freed:
            batch.release()
        return n

    def has(self, digest: bytes) -> bool:
        return digest in self._chunks

    def clear(self) -> None:
        with self._lock:
            freed = list(self._batches)
            for batch in freed:
                self._forget(batch)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        for batch in freed:
            batch.release()

    def _forget(self, batch: _Batch) -> None:
        for digest in batch.left:
            self._chunks.pop(digest, None)
        batch.left.clear()
        self._batches.pop(batch, None)
        self._bytes -= batch.nbytes

    def _expire(self, room: int) -> list[_Batch]:
        """Forget batches too old, then the oldest until `room` more bytes fit; returns them."""
        now = time.monotonic()
        freed = []
        while self._batches:
            oldest = next(iter(self._batches))
            if now - oldest.born <= self.max_age and self._bytes + room <= self.max_bytes:
                break
            self._forget(oldest)
            freed.append(oldest)
        return freed
