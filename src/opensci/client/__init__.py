"""The OpenSci Python SDK: `Client` over the REST API, typed results and typed errors. Needs only httpx.

from opensci import Client

with Client("http://127.0.0.1:8000", token="osci_...") as client:
    client.create_repo("galaxies", kind="dataset")
    commit = client.upload("alice/galaxies", "./catalog", message="First catalog")
    job = client.submit_job(code="alice/analysis", command="python fit.py", inputs={"cat": "alice/galaxies"})
    for text in (stream := client.follow_job_logs(job.id)):
        print(text, end="")
    print(stream.end.status)
"""

from opensci.client.client import Client, Progress, split_repo_id
from opensci.client.errors import (
    ConflictError,
    ConnectionFailed,
    EntryNotFoundError,
    ForbiddenError,
    JobNotFoundError,
    NotFoundError,
    OpenSciError,
    PayloadTooLargeError,
    RepoNotFoundError,
    RevisionNotFoundError,
    ServerError,
    TooManyRequestsError,
    TransferError,
    UnauthorizedError,
    ValidationError,
    WaitTimeout,
)
from opensci.client.jobs import LogStream
from opensci.client.types import (
    Commit,
    Download,
    Job,
    JobEnd,
    JobEnvironment,
    JobLog,
    JobOutput,
    JobRef,
    JobResources,
    JobUsage,
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
    "Job",
    "JobEnd",
    "JobEnvironment",
    "JobLog",
    "JobNotFoundError",
    "JobOutput",
    "JobRef",
    "JobResources",
    "JobUsage",
    "LogStream",
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
    "TooManyRequestsError",
    "TransferError",
    "Tree",
    "TreeEntry",
    "UnauthorizedError",
    "UploadResult",
    "UserInfo",
    "ValidationError",
    "WaitTimeout",
    "split_repo_id",
]
