"""Worker processes that run SQL queries, so that no query can take the server's memory.

DuckDB's `memory_limit` bounds only its buffer manager (hash tables, sorts, cached pages); values built
outside it — a string of 1.5 GB from `repeat`, lists from `string_agg` or `list` over big inputs — are
plain allocations no setting covers (DuckDB's documentation: "this limit only applies to the buffer
manager"). Checking function arguments before a query runs cannot catch every way to build a big value,
and a watchdog that interrupts a connection cannot stop one allocation in progress. So queries run in
worker processes whose data segment is capped with `RLIMIT_DATA` (heap and private mappings, where every
allocation goes; unlike `RLIMIT_AS` it does not count shared libraries or address space that allocators
merely reserve): an allocation past the cap fails inside DuckDB, which reports "Out of Memory", and the
query gets 413 while the server, which holds none of the query's data, is untouched. Before each query the
cap is set to the worker's current data size plus the query's memory limit plus `HEADROOM_BYTES` (threads'
stacks and arenas, one Arrow batch on its way out). The time limit kills the process, which also stops
work DuckDB cannot interrupt.

A worker is `python -m opensci.data.sql_worker`: it loads DuckDB and Arrow, then answers requests one at
a time (a framed JSON request on stdin: tables, the query, the limits; the answer on stdout). A worker
whose answer was read to its end serves the next query; one that was killed (time limit, an answer the
server stopped reading) is replaced, and one retires by itself when its memory grew by more than
`RETIRE_BYTES` or after `RETIRE_QUERIES` queries. `SPARES` loaded workers wait ahead of need, so a query
does not wait for Python to start (~0.2 s), and at most `IDLE_MAX` wait in all (each holds ~60 MB of its
own: Python, DuckDB and Arrow loaded). The cap needs Linux (/proc, RLIMIT_DATA covering mappings);
elsewhere only DuckDB's limit and the time limit apply.

Messages: one kind byte and a little-endian 8-byte length, then the payload. `S` the result's schema and
`B` a batch of rows, each as a small Arrow IPC stream; `E` an error (JSON `{"code", "message"}`); `D` the
end. `E` and `D` end an answer and say whether the worker retires (`"retire": true`). Batches are cut to
about `MESSAGE_BYTES` so an answer streams.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

HEADROOM_BYTES = 256 * 2**20
MESSAGE_BYTES = 8 * 2**20
RETIRE_BYTES = 128 * 2**20
RETIRE_QUERIES = 200
SPARES = 1  # loaded workers kept waiting
IDLE_MAX = 2  # workers kept for reuse at most
MEMORY_EXIT = 3  # the worker's exit code when it could not even report that memory ran out
KIND_SCHEMA, KIND_BATCH, KIND_ERROR, KIND_END = b"S", b"B", b"E", b"D"
_HEADER = struct.Struct("<cQ")
_LENGTH = struct.Struct("<Q")
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def size_bytes(text: str) -> int:
    """Bytes of a DuckDB memory size: `1GB` (10^9), `512MiB` (2^29), `100MB`, `1.5GB`, `2000000`."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*", text.lower().replace("bytes", "b"))
    if m is None:
        raise ValueError(f"not a memory size: {text!r} (write e.g. 512MB or 2GB)")
    number, unit, binary = m.groups()
    scale = 1024 ** ("kmgt".index(unit) + 1) if binary and unit else _UNITS[unit]
    return int(float(number) * scale)


# --- the server's side ------------------------------------------------------------------------------------


class WorkerGone(Exception):
    """The worker ended without finishing its answer (killed, or out of memory before it could say so)."""


class MessageTooLarge(Exception):
    """A message longer than the reader accepts."""


class Worker:
    """One worker process; it runs one query at a time."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.killed = False
        self.finished = True  # the last answer was read to its end (E or D)
        self.retiring = False

    @property
    def _out(self) -> IO[bytes]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def send(self, request: dict[str, Any]) -> None:
        """Give the worker a query (it starts at once)."""
        assert self.proc.stdin is not None
        data = json.dumps(request).encode()
        self.finished = False
        try:
            self.proc.stdin.write(_LENGTH.pack(len(data)) + data)
            self.proc.stdin.flush()
        except OSError as exc:  # it died while loading, or retired
            raise WorkerGone(str(exc)) from exc

    def read(self, max_bytes: int) -> tuple[bytes, bytes]:
        """The next message (kind, payload). Blocks; DuckDB works meanwhile in the worker."""
        header = self._out.read(_HEADER.size)
        if len(header) < _HEADER.size:
            raise WorkerGone("no more messages")
        kind, length = _HEADER.unpack(header)
        if length > max_bytes:
            self.kill()
            raise MessageTooLarge(f"{length} bytes")
        payload = self._out.read(length)
        if len(payload) < length:
            raise WorkerGone("message cut short")
        if kind in (KIND_ERROR, KIND_END):
            self.finished = True
            self.retiring = bool(json.loads(payload or b"{}").get("retire"))
        return kind, payload

    def kill(self) -> None:
        """Stop the worker now (SIGKILL: stops even work DuckDB cannot interrupt)."""
        if self.proc.poll() is None:
            self.killed = True
            self.proc.kill()

    def exit_code(self) -> int | None:
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """End the worker (it exits at the end of its input; killed if it is still busy), reap it, close
        its pipes."""
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        if not self.finished or self.exit_code() is None:
            self.kill()
        self.exit_code()


_idle: list[Worker] = []
_idle_lock = threading.Lock()


def _spawn() -> Worker:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])  # the directory holding `opensci`
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "opensci.data.sql_worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd="/",
        env=env,
    )
    return Worker(proc)


def take() -> Worker:
    """A loaded worker (an idle one when there is one), for one query; give it back with `done`."""
    with _idle_lock:
        chosen = None
        while _idle and chosen is None:
            worker = _idle.pop()
            if worker.proc.poll() is None:
                chosen = worker
            else:
                worker.close()
        if chosen is None:
            chosen = _spawn()
        while len(_idle) < SPARES:
            _idle.append(_spawn())
    return chosen


def done(worker: Worker) -> None:
    """The query is over: keep the worker for the next one if its answer was read to the end, else end
    it."""
    reusable = worker.finished and not worker.killed and not worker.retiring and worker.proc.poll() is None
    with _idle_lock:
        if reusable and len(_idle) < IDLE_MAX:
            _idle.append(worker)
            return
    worker.close()


@atexit.register
def _close_idle() -> None:
    with _idle_lock:
        idle, _idle[:] = list(_idle), []
    for worker in idle:
        worker.close()


# --- the worker's side ------------------------------------------------------------------------------------


def data_bytes() -> int:
    """This process's data segment (what RLIMIT_DATA counts)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmData in /proc/self/status")


def cap_memory(budget: int | None) -> None:
    """Let this process allocate at most `budget` more bytes (None: no cap beyond the hard limit). Linux
    only: elsewhere (no /proc, and RLIMIT_DATA not enforced for mappings) only DuckDB's limit applies."""
    import resource

    if not Path("/proc/self/status").exists():
        return
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = hard if budget is None else data_bytes() + budget
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))


class _Channel:
    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd

    def request(self) -> dict[str, Any] | None:
        head = self._read(_LENGTH.size)
        if head is None:
            return None
        body = self._read(_LENGTH.unpack(head)[0])
        return None if body is None else json.loads(body)

    def _read(self, n: int) -> bytes | None:
        parts, left = [], n
        while left:
            part = os.read(self.read_fd, left)
            if not part:
                return None
            parts.append(part)
            left -= len(part)
        return b"".join(parts)

    def send(self, kind: bytes, payload: Any = b"") -> None:
        view = memoryview(payload).cast("B")
        self._write(memoryview(_HEADER.pack(kind, len(view))))
        self._write(view)

    def _write(self, view: memoryview) -> None:
        while len(view):
            view = view[os.write(self.write_fd, view) :]


def main() -> None:
    """Answer requests from stdin on stdout until stdin ends (see the module docstring)."""
    channel = _Channel(0, os.dup(1))
    os.dup2(2, 1)  # whatever a library prints goes to stderr, never into an answer
    import pyarrow as pa

    from opensci.data import sql_run

    pa.set_memory_pool(pa.system_memory_pool())  # plain malloc: every byte counts against the cap
    start = data_bytes() if Path("/proc/self/status").exists() else 0
    for served in range(1, RETIRE_QUERIES + 1):
        request = channel.request()
        if request is None:  # the server ended this worker
            return
        try:
            kind, answer = sql_run.serve(request, channel.send)
            cap_memory(None)
            grown = data_bytes() - start if start else 0
            answer["retire"] = served == RETIRE_QUERIES or grown > RETIRE_BYTES
            channel.send(kind, json.dumps(answer).encode())
        except BrokenPipeError:  # the server stopped reading: the answer was closed early
            return
        except MemoryError:
            os._exit(MEMORY_EXIT)
        if answer["retire"]:
            return


if __name__ == "__main__":
    main()
