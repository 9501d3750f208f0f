"""Typed exceptions for the server's error replies, each with a hint: the next step that fixes it.

The server answers every error with `{"error": "<stable code>", "message": "<sentence>"}` and an
`X-Request-ID` header; `error_from_response` turns that into the most specific exception below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx


class OpenSciError(Exception):
    """Base of every SDK error. `status` is the HTTP status (0 when no reply came), `code` the server's
    stable error code, `message` its sentence, `request_id` the id to quote to the operator."""

    default_code = "error"

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str | None = None,
        request_id: str = "",
        url: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code or self.default_code
        self.request_id = request_id
        self.url = url

    @property
    def hint(self) -> str:
        """What to do next, as one sentence (empty when the message says it all)."""
        return _HINTS.get(self.code, "")

    def __str__(self) -> str:
        return self.message


class NotFoundError(OpenSciError):
    default_code = "not_found"


class RepoNotFoundError(NotFoundError):
    default_code = "repo_not_found"


class RevisionNotFoundError(NotFoundError):
    default_code = "revision_not_found"


class EntryNotFoundError(NotFoundError):
    default_code = "entry_not_found"


class JobNotFoundError(NotFoundError):
    default_code = "job_not_found"


class UnauthorizedError(OpenSciError):
    default_code = "unauthorized"

    @property
    def hint(self) -> str:
        return _HINTS.get(self.code) or _HINTS["unauthorized"]


class ForbiddenError(OpenSciError):
    default_code = "forbidden"


class ConflictError(OpenSciError):
    default_code = "conflict"


class ValidationError(OpenSciError):
    default_code = "invalid_input"


class PayloadTooLargeError(OpenSciError):
    default_code = "payload_too_large"


class TooManyRequestsError(OpenSciError):
    """429: the server refuses more for now (e.g. `too_many_queued_jobs`); the hint says what to wait for."""

    default_code = "too_many_requests"


class ServerError(OpenSciError):
    default_code = "internal_error"

    @property
    def hint(self) -> str:
        rid = f" and quote request id {self.request_id}" if self.request_id else ""
        return f"the server failed; try again later{rid}, or tell the operator"


class WaitTimeout(OpenSciError, TimeoutError):
    """`Client.wait_job` gave up: the job had not ended within the time given (it goes on)."""

    default_code = "wait_timeout"


class ConnectionFailed(OpenSciError):
    """No reply: the server is unreachable, refused the connection, or timed out."""

    default_code = "connection_failed"

    @property
    def hint(self) -> str:
        return (
            f"check that an OpenSci server runs at {self.url}; point elsewhere with OPENSCI_URL "
            "or `opensci login --url URL`"
        )


class TransferError(OpenSciError):
    """A download arrived incomplete or different from what the server announced."""

    default_code = "transfer_failed"

    @property
    def hint(self) -> str:
        if self.code != "transfer_failed":
            return ""
        return "run the same command again: finished files are kept and partial ones resume"


_HINTS = {
    "unauthorized": "run `opensci login` or set OPENSCI_TOKEN",
    "login_required": "run `opensci login` or set OPENSCI_TOKEN",
    "invalid_token": "the token is wrong or revoked: run `opensci login` again or set OPENSCI_TOKEN",
    "bad_credentials": "check the user name and password, or log in with `opensci login --token TOKEN`",
    "insufficient_scope": (
        "create a token with write scope (website: Settings → Tokens, or `opensci login --username NAME`, "
        "which makes one) and use it with `opensci login --token TOKEN` or OPENSCI_TOKEN"
    ),
    "forbidden": "ask an owner or admin of the repository or organization for write access",
    "repo_not_found": (
        "check OWNER/NAME (`opensci repo list --owner OWNER`); a private repository is not found unless "
        "you are logged in as someone who may read it (`opensci whoami`)"
    ),
    "revision_not_found": "check the branch, tag or commit id (`opensci log OWNER/NAME` lists commits)",
    "entry_not_found": "list what is there with `opensci ls OWNER/NAME [PATH] --rev REV`",
    "owner_not_found": "check the user or organization name",
    "repo_exists": "choose another name, or reuse it with --exist-ok (exist_ok=True in the SDK)",
    "stale_parent": "the branch moved since you read it: fetch its new head (`opensci log`) and retry",
    "busy_branch": "others are committing to this branch right now; try again",
    "ref_exists": "choose another name, or delete the existing branch or tag first",
    "protected_branch": "make another branch the default first, or delete a different branch",
    "invalid_name": "use 1-96 letters, digits, '.', '_' or '-', starting and ending with a letter or digit",
    "quota_exceeded": (
        "this does not fit in the owner's storage quota: delete large files or repositories you no longer "
        "need (the owner's profile page shows its use; the operator can raise the quota)"
    ),
    "lfs_object_missing": "upload the file's content to this repository before committing a pointer to it",
    "digest_mismatch": "the bytes changed while they were sent (or were damaged): upload again",
    "outdated_client": "this SDK is too old for the server: upgrade it with `pip install -U opensci`",
    "job_not_found": (
        "check the job id (`opensci job list`); a job is not found unless you may read its code, "
        "inputs and output"
    ),
    "job_finished": "to run it again at the same commits: `opensci job rerun ID`",
    "job_collecting": "it ends in a moment: `opensci job status ID` shows how",
    "invalid_spec": "fix the job's spec; `opensci job submit --help` describes every field",
    "invalid_status": "use one of queued, running, succeeded, failed, cancelled, timeout",
    "priority_not_allowed": "leave the priority at 0 or below: only site administrators may raise it",
    "rerun_not_allowed": (
        "submit a job of your own with the same code and inputs (`opensci job submit`), with variables of "
        "your own"
    ),
    "too_many_queued_jobs": (
        "wait for some of your queued jobs to start (`opensci job list --status queued`) or cancel some "
        "(`opensci job cancel ID`), then submit again"
    ),
    "wait_timeout": (
        "the job goes on: wait again, follow it with `opensci job logs ID -f`, or stop it with "
        "`opensci job cancel ID`"
    ),
    "payload_too_large": (
        "the upload is larger than the server accepts (OPENSCI_MAX_UPLOAD_BYTES on the server): "
        "split it into several commits or ask the operator to raise the limit"
    ),
}


def _class_for(status: int, code: str) -> type[OpenSciError]:
    if status == 404:
        return {
            "repo_not_found": RepoNotFoundError,
            "revision_not_found": RevisionNotFoundError,
            "entry_not_found": EntryNotFoundError,
            "job_not_found": JobNotFoundError,
        }.get(code, NotFoundError)
    if status >= 500:
        return ServerError
    return {
        400: ValidationError,
        401: UnauthorizedError,
        403: ForbiddenError,
        409: ConflictError,
        413: PayloadTooLargeError,
        422: ValidationError,
        429: TooManyRequestsError,
    }.get(status, OpenSciError)


def error_from_response(response: httpx.Response) -> OpenSciError:
    """The typed exception for an error reply (the body must have been read)."""
    code, message = "", ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = str(body.get("error") or "")
        message = str(body.get("message") or "")
    if not message:
        text = response.text.strip()[:300]
        message = f"HTTP {response.status_code} from {response.request.url}" + (f": {text}" if text else "")
    cls = _class_for(response.status_code, code)
    return cls(
        message,
        status=response.status_code,
        code=code or None,
        request_id=response.headers.get("x-request-id", ""),
        url=str(response.request.url),
    )


__all__ = [
    "ConflictError",
    "ConnectionFailed",
    "EntryNotFoundError",
    "ForbiddenError",
    "JobNotFoundError",
    "NotFoundError",
    "OpenSciError",
    "PayloadTooLargeError",
    "RepoNotFoundError",
    "RevisionNotFoundError",
    "ServerError",
    "TooManyRequestsError",
    "TransferError",
    "UnauthorizedError",
    "ValidationError",
    "WaitTimeout",
    "error_from_response",
]
