"""The OpenSci Python SDK: `Client` over the REST API, typed results and typed errors. Needs only httpx.

from opensci import Client

with Client("http://127.0.0.1:8000", token="osci_...") as client:
    client.create_repo("galaxies", kind="dataset")
    commit = client.upload("alice/galaxies", "./catalog", message="First catalog")
"""

from opensci.client.client import Client, Progress, split_repo_id
from opensci.client.errors import (
    ConflictError,
    ConnectionFailed,
    EntryNotFoundError,
    ForbiddenError,
    NotFoundError,
    OpenSciError,
    PayloadTooLargeError,
    RepoNotFoundError,
    RevisionNotFoundError,
    ServerError,
    TransferError,
    UnauthorizedError,
    ValidationError,
)
from opensci.client.types import (
    Commit,
    Download,
    NewToken,
    OrgMembership,
    Ref,
    Refs,
    Repo,
    Token,
    Tree,
    TreeEntry,
    UploadResult,
    UserInfo,
)

__all__ = [
    "Client",
    "Commit",
    "ConflictError",
    "ConnectionFailed",
    "Download",
    "EntryNotFoundError",
    "ForbiddenError",
    "NewToken",
    "NotFoundError",
    "OpenSciError",
    "OrgMembership",
    "PayloadTooLargeError",
    "Progress",
    "Ref",
    "Refs",
    "Repo",
    "RepoNotFoundError",
    "RevisionNotFoundError",
    "ServerError",
    "Token",
    "TransferError",
    "Tree",
    "TreeEntry",
    "UnauthorizedError",
    "UploadResult",
    "UserInfo",
    "ValidationError",
    "split_repo_id",
]
