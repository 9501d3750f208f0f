"""SHA-256 whose running state can be saved and resumed: the blob store's checkpoints.

A file's Git LFS oid is the sha256 of its content, a sequential chain: after an edit at offset N of a
stored file, the new file's hash needs every byte from N on, but none before it, if the state of the
chain at N was kept. `hashlib` cannot export that state, so this module drives the same OpenSSL that
`hashlib` uses (the `libcrypto` it loaded, found in this process's memory map) through its public
SHA256_Init/Update/Final API, whose context, `SHA256_CTX` of `<openssl/sha.h>`, is a plain public struct of
112 bytes (the eight chaining words, the bit count, the pending block and its fill). It runs at the
speed of `hashlib` (SHA-NI where the CPU has it) and lets go of the GIL while it hashes (ctypes does).

Where no such libcrypto can be loaded, `RESUMABLE` is False: `Sha256` then wraps `hashlib.sha256`,
`state()` gives None and the blob store keeps no checkpoints (uploads still work, they hash everything).
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import struct
from typing import Any

STATE_SIZE = 112  # sizeof(SHA256_CTX)
_COUNTS = struct.Struct("<II")  # Nl, Nh: the bit count, after the eight 32-bit chaining words
_FILL = struct.Struct("<I")  # num: bytes waiting in the pending block, after the block (64 bytes)


def _libcrypto() -> Any | None:
    """The libcrypto `hashlib` is linked with, if its SHA-256 functions can be called."""
    import _hashlib  # noqa: F401  (loads libcrypto into the process)

    path = None
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)  # address, mode, offset, device, inode, path
                name = fields[5].strip() if len(fields) == 6 else ""
                if os.path.basename(name).startswith("libcrypto"):
                    path = name
                    break
    except OSError:
        return None
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
        init, update, final = lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final
    except (OSError, AttributeError):
        return None
    init.argtypes, init.restype = [ctypes.c_void_p], ctypes.c_int
    update.argtypes, update.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t], ctypes.c_int
    final.argtypes, final.restype = [ctypes.c_void_p, ctypes.c_void_p], ctypes.c_int
    return lib if _works(lib) else None


def _works(lib: Any) -> bool:
    """The library hashes as hashlib does, through a saved and restored state (a struct of another
    layout would not)."""
    data = bytes(range(256)) * 5
    ctx = ctypes.create_string_buffer(STATE_SIZE)
    lib.SHA256_Init(ctx)
    lib.SHA256_Update(ctx, data, 700)
    copy = ctypes.create_string_buffer(ctx.raw, STATE_SIZE)
    lib.SHA256_Update(copy, data[700:], len(data) - 700)
    out = ctypes.create_string_buffer(32)
    lib.SHA256_Final(out, copy)
    return out.raw == hashlib.sha256(data).digest() and _offset(ctx.raw) == 700


def _offset(state: bytes) -> int:
    """The number of bytes a saved state has hashed."""
    low, high = _COUNTS.unpack_from(state, 32)
    return ((high << 32) | low) // 8


_LIB = _libcrypto()
RESUMABLE = _LIB is not None


class Sha256:
    """`hashlib.sha256()` with `state()` and `Sha256.resume(state)`."""

    def __init__(self) -> None:
        if _LIB is None:
            self._hash: Any = hashlib.sha256()
            self._ctx = None
        else:
            self._ctx = ctypes.create_string_buffer(STATE_SIZE)
            _LIB.SHA256_Init(self._ctx)
        self.offset = 0  # bytes hashed

    @classmethod
    def resume(cls, state: bytes, offset: int) -> Sha256:
        """The hash that had hashed `offset` bytes when `state()` gave `state`. ValueError for a state
        that does not say so (another layout, or damage)."""
        if _LIB is None:
            raise ValueError("this server cannot resume a SHA-256 state (no libcrypto)")
        if len(state) != STATE_SIZE:
            raise ValueError(f"a SHA-256 state is {STATE_SIZE} bytes, not {len(state)}")
        if _offset(state) != offset or _FILL.unpack_from(state, 104)[0] != offset % 64:
            raise ValueError(f"not the SHA-256 state of {offset} bytes")
        self = cls.__new__(cls)
        self._ctx = ctypes.create_string_buffer(state, STATE_SIZE)
        self.offset = offset
        return self

    def update(self, data: bytes | bytearray | memoryview | mmap.mmap) -> None:
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        if not n:
            return
        self.offset += n
        if self._ctx is None:
            self._hash.update(data)
            return
        if isinstance(data, bytes):
            _LIB.SHA256_Update(self._ctx, data, n)  # type: ignore[union-attr]
            return
        view = memoryview(data)
        if view.readonly:
            _LIB.SHA256_Update(self._ctx, bytes(view), n)  # type: ignore[union-attr]
            return
        buffer = (ctypes.c_char * n).from_buffer(view)
        try:
            _LIB.SHA256_Update(self._ctx, buffer, n)  # type: ignore[union-attr]
        finally:
            del buffer
            view.release()

    def state(self) -> bytes | None:
        """The running state (STATE_SIZE bytes), or None where states cannot be resumed."""
        return None if self._ctx is None else self._ctx.raw

    def digest(self) -> bytes:
        if self._ctx is None:
            return bytes(self._hash.digest())
        ctx = ctypes.create_string_buffer(self._ctx.raw, STATE_SIZE)  # this hash may go on
        out = ctypes.create_string_buffer(32)
        _LIB.SHA256_Final(out, ctx)  # type: ignore[union-attr]
        return out.raw

    def hexdigest(self) -> str:
        return self.digest().hex()
