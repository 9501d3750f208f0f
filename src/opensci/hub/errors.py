"""Errors as the `huggingface_hub` client reads them: our envelope, plus `X-Error-Code` (which picks the
client's exception class) and `X-Error-Message` (which it prints)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request, Response

from opensci.deps import credentials
from opensci.errors import EntryNotFound, OpenSciError, RepoNotFound, RevisionNotFound, Unauthorized

# The exact text the client expects for a bad token (it then says "Invalid user token").
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


class XetNotSupported(OpenSciError):
    """The Xet upload protocol is not implemented: clients must use Git LFS for large files."""

    status, code = 501, "xet_not_supported"


_TYPOGRAPHY = str.maketrans(  # ellipsis, curly quotes, dash
    {"\u2026": "...", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2014": "-"}
)


def _header_safe(message: str) -> str:
    """The message as one line of ASCII (a header's): typography plainly, other characters escaped."""
    plain = message.translate(_TYPOGRAPHY)
    return " ".join(plain.encode("ascii", "backslashreplace").decode().split())[:1000]


def _hf_code(exc: OpenSciError) -> str | None:
    if isinstance(exc, RepoNotFound):
        return "RepoNotFound"
    if isinstance(exc, RevisionNotFound) or exc.code == "ref_not_found":
        return "RevisionNotFound"
    if isinstance(exc, EntryNotFound):
        return "EntryNotFound"
    return None


def _sent_credentials(request: Request) -> bool:
    try:
        return credentials(request) is not None
    except OpenSciError:
        return True


def for_hub(request: Request, exc: OpenSciError) -> OpenSciError:
    """The same error with the headers the Hub client reads. A repository that is missing or hidden
    answers 401 (not 404) when no credentials were sent, as the Hub does: the client then suggests
    logging in; both cases stay indistinguishable."""
    headers = dict(exc.headers)
    if isinstance(exc, Unauthorized) and exc.code == "invalid_token":
        headers["X-Error-Message"] = INVALID_CREDENTIALS
        exc.headers = headers
        return exc
    headers["X-Error-Message"] = _header_safe(exc.message)
    code = _hf_code(exc)
    if code is not None:
        headers["X-Error-Code"] = code
    if isinstance(exc, RepoNotFound) and not _sent_credentials(request):
        return Unauthorized(exc.message, code=exc.code, headers=headers)
    exc.headers = headers
    return exc


Handler = Callable[[Request], Awaitable[Response]]


def translating(handler: Handler) -> Handler:
    async def app(request: Request) -> Response:
        try:
            return await handler(request)
        except OpenSciError as exc:
            raise for_hub(request, exc) from None

    return app
