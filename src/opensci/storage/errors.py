"""Errors of the blob store, in the `opensci.errors` hierarchy (so every door reports them alike)."""

from __future__ import annotations

from opensci.errors import Conflict, InvalidInput, NotFound, OpenSciError


class DigestMismatch(InvalidInput):
    """Uploaded bytes do not match the sha256 or size they were announced with; nothing was stored."""

    code = "digest_mismatch"


class UploadTimeout(OpenSciError):
    """A request body stalled past its deadline; nothing of it was stored."""

    status, code = 408, "upload_timeout"


class OutdatedClient(DigestMismatch):
    """Chunks named by their sha256, as SDKs before BLAKE3 chunk names sent them: the client must be
    upgraded (sending again never helps)."""

    code = "outdated_client"


class MissingChunks(InvalidInput):
    """A manifest names chunks the store does not hold; send them (`missing` lists their hashes)."""

    code = "missing_chunks"

    def __init__(self, message: str, missing: list[str]) -> None:
        super().__init__(message)
        self.missing = missing


class ChunksGone(Conflict):
    """Chunks an object was being made of were collected or quarantined meanwhile (`missing` lists them)."""

    code = "upload_expired"

    def __init__(self, message: str, missing: list[str]) -> None:
        super().__init__(message)
        self.missing = missing


class ObjectNotFound(NotFound):
    code = "object_not_found"


class ObjectDamaged(OpenSciError):
    """Stored bytes fail their checksum: the object is quarantined instead of served wrong.

    A fresh upload of the same content repairs it (as does any upload that sends its damaged chunks
    again: every object they kept quarantined is healed at once); `opensci storage verify` lists what
    is damaged.

    409 (the stored object's state forbids serving it), not a 5xx: huggingface_hub retries 408, 429, 500,
    502, 503 and 504 (a HEAD five times, about 23 s), though asking again never helps here. A 409 fails
    at once with our message (X-Error-Message): the `hf` CLI prints it, and hf_hub_download's
    LocalEntryNotFoundError ("check your connection", its text for any failed HEAD) has it as its cause.
    """

    status, code = 409, "object_damaged"


class QuotaExceeded(OpenSciError):
    """Storing this would take an owner past its blob store quota; nothing was stored or committed."""

    status, code = 413, "quota_exceeded"
