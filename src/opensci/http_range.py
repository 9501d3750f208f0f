"""HTTP Range support for file downloads (single byte ranges; enough for partial reads of remote files)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from fastapi import Response

from opensci.errors import RangeNotSatisfiable

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def effective_range(headers: Mapping[str, str], etag: str) -> str | None:
    """The request's Range header, unless an If-Range says the client's copy is another version: a range
    is only served if the validator is the current (strong) ETag; a date, or another ETag, asks for the
    whole file (RFC 9110, 13.1.5), so a resumed download never splices two versions of a file."""
    wanted = headers.get("range")
    if wanted is None:
        return None
    validator = headers.get("if-range")
    if validator is not None and validator.strip() != etag:
        return None
    return wanted


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`bytes=a-b`, `bytes=a-` or `bytes=-n` → inclusive (start, end); None for no or an unusable header.

    Multiple ranges are answered with the whole body (allowed by RFC 9110).
    """
    if not header:
        return None
    m = _RANGE.match(header.strip().replace(" ", ""))
    if not m:
        return None
    first, last = m.groups()
    unsatisfiable = {"Content-Range": f"bytes */{size}"}
    if first == "" and last == "":
        return None
    if first == "":
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(
                f"range {header!r} selects no bytes of a {size}-byte file", headers=unsatisfiable
            )
        return max(0, size - n), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # an invalid range-spec, which RFC 9110 (14.2) says to ignore: the whole file
    end = min(int(last), size - 1) if last else size - 1
    if start >= size:
        raise RangeNotSatisfiable(
            f"range {header!r} is outside the file's {size} bytes", headers=unsatisfiable
        )
    return start, end


def bytes_response(
    data: bytes,
    range_header: str | None,
    *,
    media_type: str,
    headers: dict[str, str],
    head: bool = False,
) -> Response:
    """A 200, or a 206 with Content-Range, for `data`. `Accept-Ranges: bytes` is always announced."""
    size = len(data)
    headers = {**headers, "Accept-Ranges": "bytes"}
    rng = parse_range(range_header, size)
    if rng is None:
        headers["Content-Length"] = str(size)
        return Response(b"" if head else data, status_code=200, media_type=media_type, headers=headers)
    start, end = rng
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    return Response(
        b"" if head else data[start : end + 1], status_code=206, media_type=media_type, headers=headers
    )
