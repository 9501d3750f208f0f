"""One exception hierarchy for every domain. Each carries a stable code and an HTTP status.

Services raise these; `opensci.app` maps them once to `{"error": code, "message": ...}` replies.
"""

from __future__ import annotations


class OpenSciError(Exception):
    status: int = 400
    code: str = "bad_request"

    def __init__(
        self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        # Extra reply headers (e.g. Content-Range on a 416).
        self.headers = headers or {}
        if code:
            self.code = code


class InvalidInput(OpenSciError):
    status, code = 422, "invalid_input"


class NotFound(OpenSciError):
    status, code = 404, "not_found"


class RepoNotFound(NotFound):
    code = "repo_not_found"


class RevisionNotFound(NotFound):
    code = "revision_not_found"


class EntryNotFound(NotFound):
    code = "entry_not_found"


class Unauthorized(OpenSciError):
    """No identity, or a wrong one: log in or send a valid token."""

    status, code = 401, "unauthorized"


class Forbidden(OpenSciError):
    """Known identity, visible resource, but the action is not allowed."""

    status, code = 403, "forbidden"


class Conflict(OpenSciError):
    status, code = 409, "conflict"


class PayloadTooLarge(OpenSciError):
    status, code = 413, "payload_too_large"


class RangeNotSatisfiable(OpenSciError):
    status, code = 416, "range_not_satisfiable"
