"""A blocking, file-like view of an ASGI request body, for service code that runs in a worker thread.

Large uploads (Git LFS PUTs, Hub commits) stream straight into the blob store this way: the service
reads the body as a file, from a thread, while the event loop keeps serving other requests; nothing is
spooled to disk first and at most one network chunk is held in memory.
"""

from __future__ import annotations

import io

import anyio.from_thread
from starlette.requests import Request


class RequestBody(io.RawIOBase):
    """Read by code started with `anyio.to_thread.run_sync` (or Starlette's `run_in_threadpool`)."""

    def __init__(self, request: Request) -> None:
        self._chunks = request.stream().__aiter__()
        self._buf = memoryview(b"")
        self._eof = False
        self.received = 0  # bytes read from the network so far

    def readable(self) -> bool:
        return True

    async def _pull(self) -> bytes | None:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            return None

    def _fill(self) -> None:
        while not self._buf and not self._eof:
            chunk = anyio.from_thread.run(self._pull)
            if chunk is None:
                self._eof = True
            else:
                self.received += len(chunk)
                self._buf = memoryview(chunk)

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        self._fill()
        n = min(len(buffer), len(self._buf))
        buffer[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n
