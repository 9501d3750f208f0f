"""Stream-parsing the commit body: NDJSON lines `{"key": K, "value": V}`, read as the bytes arrive.

A regular file travels inline, base64-encoded, in one (possibly huge) line. Such a line is not held in
memory: once it outgrows `spool_over` bytes, the value of its `"content"` key is decoded on the fly into
a temporary file, and the rest of the line is parsed with an empty content and `_file` set to that file.
"""

from __future__ import annotations

import binascii
import json
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

from opensci.errors import InvalidInput

_CONTENT = re.compile(rb'"content"\s*:\s*"')
MAX_LINE = 16 * 1024**2  # bytes of a line that is not a spooled file


def _bad(message: str) -> InvalidInput:
    return InvalidInput(f"malformed commit body: {message}", code="invalid_commit")


class NdjsonReader:
    """Feed it the body's chunks; `items` then holds the parsed lines in order."""

    def __init__(self, tmp_dir: Path, spool_over: int = 1024**2, max_line: int = MAX_LINE) -> None:
        self.tmp_dir, self.spool_over, self.max_line = tmp_dir, spool_over, max_line
        self.items: list[dict[str, Any]] = []
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already searched for a newline
        self._file: BinaryIO | None = None  # content being decoded (inside the string)
        self._carry = b""  # base64 characters not yet a multiple of 4
        self._spooled: Path | None = None  # the current line's decoded content

    def feed(self, chunk: bytes) -> None:
        while chunk:
            if self._file is not None:
                chunk = self._feed_content(chunk)
                continue
            self._buf += chunk
            chunk = b""
            self._take_lines()

    def close(self) -> list[dict[str, Any]]:
        if self._file is not None:
            raise _bad("the body ends inside a file's content")
        if self._buf.strip():
            self._line(bytes(self._buf))
        self._buf.clear()
        return self.items

    def _take_lines(self) -> None:
        while True:
            i = self._buf.find(b"\n", self._scanned)
            if i < 0:
                self._scanned = len(self._buf)
                break
            line = bytes(self._buf[:i])
            del self._buf[: i + 1]
            self._scanned = 0
            if line.strip():
                self._line(line)
        if len(self._buf) > self.spool_over and self._spooled is None:
            m = _CONTENT.search(self._buf)
            if m is not None:
                rest = bytes(self._buf[m.end() :])
                del self._buf[m.end() :]
                self._scanned = len(self._buf)
                fd, name = tempfile.mkstemp(prefix="hub-file-", dir=self.tmp_dir)
                self._spooled = Path(name)
                self._file = open(fd, "wb")  # noqa: SIM115 (closed at the end of the string)
                self.feed(rest)
                return
        if len(self._buf) > self.max_line:
            raise _bad(f"a line is longer than {self.max_line} bytes")

    def _feed_content(self, chunk: bytes) -> bytes:
        """Decode base64 up to the closing quote; return what follows it."""
        assert self._file is not None
        end = chunk.find(b'"')
        data = self._carry + (chunk if end < 0 else chunk[:end])
        held = b""
        if end < 0 and data.endswith(b"\\"):  # an escape cut in two by the chunking
            data, held = data[:-1], b"\\"
        data = data.replace(b"\\/", b"/")  # JSON may escape "/"; nothing else belongs in base64
        if b"\\" in data:
            raise _bad("unexpected escape in base64 content")
        usable = len(data) - len(data) % 4 if end < 0 else len(data)
        try:
            self._file.write(binascii.a2b_base64(data[:usable], strict_mode=True) if usable else b"")
        except binascii.Error as exc:
            raise _bad(f"invalid base64 content ({exc})") from None
        self._carry = data[usable:] + held
        if end < 0:
            return b""
        self._file.close()
        self._file = None
        self._buf += b'"'  # the empty string that stands for the spooled content
        self._scanned = len(self._buf)
        return chunk[end + 1 :]

    def _line(self, line: bytes) -> None:
        try:
            item = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _bad(f"a line is not JSON ({exc})") from None
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise _bad('each line must be an object with a "key"')
        if self._spooled is not None:
            value = item.get("value")
            if not isinstance(value, dict):
                raise _bad("a file line without a value object")
            value["_file"] = self._spooled
            self._spooled = None
        self.items.append(item)


async def read_ndjson(stream: AsyncIterator[bytes], tmp_dir: Path) -> list[dict[str, Any]]:
    reader = NdjsonReader(tmp_dir)
    async for chunk in stream:
        reader.feed(chunk)
    return reader.close()
