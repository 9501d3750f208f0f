"""`opensci.Client`: the Python SDK over the native REST API (/api/v1). It needs only httpx."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from opensci import __version__
from opensci.client import chunks, config, jobs, transfer
from opensci.client.errors import (
    ConflictError,
    ConnectionFailed,
    OpenSciError,
    RepoNotFoundError,
    RevisionNotFoundError,
    ValidationError,
    error_from_response,
)
from opensci.client.types import (
    Commit,
    Download,
    Job,
    JobLog,
    NewToken,
    Ref,
    Refs,
    Repo,
    Token,
    Tree,
    UploadResult,
    UserInfo,
)

Progress = Callable[[int, int], None]
"""Called as `progress(bytes_done, bytes_total)` while files move."""

_KINDS = ("code", "dataset", "model")
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})  # a request may be sent twice with these


def split_repo_id(repo: str) -> tuple[str, str]:
    """`owner/name` (also `datasets/owner/name` or `models/owner/name`, as in web URLs) → (owner, name)."""
    parts = repo.strip().strip("/").split("/")
    if len(parts) == 3 and parts[0] in ("datasets", "models"):
        parts = parts[1:]
    if len(parts) != 2 or not all(parts):
        raise ValidationError(f"give the repository as OWNER/NAME, not {repo!r}", code="invalid_repo_id")
    return parts[0], parts[1]


class Client:
    """A connection to one OpenSci server, as one user.

    `url` defaults to OPENSCI_URL, then the URL saved by `opensci login`, then http://127.0.0.1:8000;
    `token` to OPENSCI_TOKEN, then the saved token (only for the server it was saved for); pass
    `token=""` to act anonymously. Use it as a context manager, or call `close()`.

    Every method raises a subclass of `opensci.client.errors.OpenSciError` on failure; each carries
    `.status`, `.code`, `.message`, `.request_id` and a `.hint` naming the next step.
    """

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0) -> None:
        self.url, self.token = config.resolve(url, token)
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(timeout),
            headers={"User-Agent": f"opensci-python/{__version__}"},
            follow_redirects=False,
        )

    # --- plumbing -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r}, token={'set' if self.token else 'none'})"

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {**headers, **(extra or {})}

    def _connection_failed(self, exc: httpx.TransportError) -> ConnectionFailed:
        if isinstance(exc, httpx.TimeoutException):
            message = f"the server at {self.url} did not answer in time ({exc.__class__.__name__})"
        elif isinstance(exc, httpx.ConnectError):
            message = f"cannot reach the OpenSci server at {self.url}: {exc}"
        else:
            message = f"the connection to {self.url} broke: {exc or exc.__class__.__name__}"
        return ConnectionFailed(message, url=self.url)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        content: Any = None,
        headers: dict[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        """One API call; `path` is relative to the server (e.g. "/api/v1/user"). Raises typed errors."""
        if params:
            params = {k: v for k, v in params.items() if v is not None}
        # A pooled connection the server closed while it sat idle (its keep-alive ran out) can fail as a
        # request goes out. A request that may be sent twice (an idempotent method, a body held in
        # memory) is then sent once more, on a new connection.
        again = method.upper() in IDEMPOTENT and (content is None or isinstance(content, bytes | str))
        while True:
            try:
                response = self._http.request(
                    method,
                    path,
                    params=params,
                    json=json,
                    content=content,
                    headers=self._headers(headers),
                    timeout=timeout or self._http.timeout,
                )
                break
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                if not again:
                    raise self._connection_failed(exc) from exc
                again = False
            except httpx.TransportError as exc:
                raise self._connection_failed(exc) from exc
        if response.is_error:
            raise error_from_response(response)
        return response

    @contextmanager
    def stream(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        *,
        params: dict[str, Any] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> Iterator[httpx.Response]:
        """A streamed API call for large replies. Error replies (except 416) raise typed errors."""
        try:
            with self._http.stream(
                method,
                path,
                params=params,
                headers=self._headers(headers),
                timeout=timeout or self._http.timeout,
            ) as response:
                if response.is_error and response.status_code != 416:
                    response.read()
                    raise error_from_response(response)
                yield response
        except httpx.TransportError as exc:
            raise self._connection_failed(exc) from exc

    @staticmethod
    def api_path(repo: str, *rest: str) -> str:
        """`/api/v1/repos/{owner}/{name}/{rest...}`, each part percent-encoded (slashes kept in `rest`)."""
        owner, name = split_repo_id(repo)
        tail = "".join(f"/{quote(part, safe='/')}" for part in rest if part)
        return f"/api/v1/repos/{quote(owner, safe='')}/{quote(name, safe='')}{tail}"

    # --- accounts -----------------------------------------------------------------------------------

    def whoami(self) -> UserInfo:
        """The account the token belongs to, its organizations and the token's scope."""
        return UserInfo.from_json(self.request("GET", "/api/v1/user").json())

    def login(
        self, name: str, password: str, *, token_name: str = "opensci-cli", scope: str = "write"
    ) -> NewToken:
        """Exchange a user name and password for a new API token, and use it from now on.

        Returns the token (its secret is in `.token`); `opensci login` saves it to the config file."""
        body = {"name": name, "password": password, "token_name": token_name, "scope": scope}
        created = NewToken.from_json(self.request("POST", "/api/v1/auth/token", json=body).json())
        self.token = created.token
        return created

    def create_token(self, name: str = "token", scope: str = "read") -> NewToken:
        """A new API token for the current user (`scope` read or write); the secret is shown only here."""
        body = {"name": name, "scope": scope}
        return NewToken.from_json(self.request("POST", "/api/v1/user/tokens", json=body).json())

    def list_tokens(self) -> list[Token]:
        """The current user's tokens (ids, names, scopes, prefixes; never the secrets)."""
        return [Token.from_json(t) for t in self.request("GET", "/api/v1/user/tokens").json()]

    def revoke_token(self, token_id: str) -> None:
        """Revoke one of the current user's tokens by id; it stops working at once."""
        self.request("DELETE", f"/api/v1/user/tokens/{quote(token_id, safe='')}")

    # --- repositories -------------------------------------------------------------------------------

    def create_repo(
        self,
        name: str,
        kind: str = "code",
        private: bool = False,
        owner: str | None = None,
        description: str = "",
        license: str = "",
        tags: list[str] | None = None,
        exist_ok: bool = False,
    ) -> Repo:
        """Create a repository; `name` may be `owner/name`. With `exist_ok`, return the existing one instead
        of raising ConflictError (whatever its kind and settings)."""
        if "/" in name:
            repo_owner, name = split_repo_id(name)
            if owner and owner.lower() != repo_owner.lower():
                raise ValidationError(
                    f"owner {owner!r} contradicts {repo_owner}/{name}", code="invalid_repo_id"
                )
            owner = repo_owner
        if kind not in _KINDS:
            raise ValidationError(
                f"kind must be one of {', '.join(_KINDS)}; not {kind!r}", code="invalid_kind"
            )
        body = {
            "name": name,
            "kind": kind,
            "private": private,
            "owner": owner,
            "description": description,
            "license": license,
            "tags": list(tags or []),
        }
        try:
            return Repo.from_json(self.request("POST", "/api/v1/repos", json=body).json())
        except ConflictError as exc:
            if not exist_ok or exc.code != "repo_exists":
                raise
        return self.repo_info(f"{owner or self.whoami().name}/{name}")

    def repo_info(self, repo: str) -> Repo:
        """The repository `owner/name` (RepoNotFoundError also when it is private and you may not read it)."""
        return Repo.from_json(self.request("GET", self.api_path(repo)).json())

    def repo_exists(self, repo: str) -> bool:
        """Whether `owner/name` exists and you may read it."""
        try:
            self.repo_info(repo)
        except RepoNotFoundError:
            return False
        return True

    def update_repo(
        self,
        repo: str,
        *,
        name: str | None = None,
        owner: str | None = None,
        private: bool | None = None,
        description: str | None = None,
        license: str | None = None,
        tags: list[str] | None = None,
        default_branch: str | None = None,
    ) -> Repo:
        """Change a repository's settings; `name` renames it and `owner` transfers it. Only the arguments
        given are changed. Needs admin rights on the repository."""
        fields = {
            "name": name,
            "owner": owner,
            "private": private,
            "description": description,
            "license": license,
            "tags": tags,
            "default_branch": default_branch,
        }
        body = {k: v for k, v in fields.items() if v is not None}
        return Repo.from_json(self.request("PATCH", self.api_path(repo), json=body).json())

    def delete_repo(self, repo: str, *, missing_ok: bool = False) -> None:
        """Delete a repository and all its history. Needs admin rights on it."""
        try:
            self.request("DELETE", self.api_path(repo))
        except RepoNotFoundError:
            if not missing_ok:
                raise

    def list_repos(
        self,
        owner: str | None = None,
        kind: str | None = None,
        q: str | None = None,
        *,
        sort: str = "updated",
        per_page: int = 100,
    ) -> Iterator[Repo]:
        """Repositories you may read, newest update first (`sort`: updated, created or name), filtered by
        owner, kind and a search text. Pages are fetched lazily as you iterate."""
        page: int | None = 1
        while page is not None:
            params = {"owner": owner, "kind": kind, "q": q, "sort": sort, "page": page, "per_page": per_page}
            data = self.request("GET", "/api/v1/repos", params=params).json()
            yield from (Repo.from_json(r) for r in data["items"])
            page = data.get("next_page")

    # --- history and content ------------------------------------------------------------------------

    def list_commits(
        self, repo: str, rev: str | None = None, path: str | None = None, *, per_page: int = 100
    ) -> Iterator[Commit]:
        """Commits reachable from `rev` (default branch by default), newest first; with `path`, only those
        that changed it. Pages are fetched lazily as you iterate. Empty for an empty repository."""
        page: int | None = 1
        while page is not None:
            params = {"rev": rev, "path": path, "page": page, "per_page": per_page}
            data = self.request("GET", self.api_path(repo, "commits"), params=params).json()
            yield from (Commit.from_json(c) for c in data["items"])
            page = data.get("next_page")

    def get_commit(self, repo: str, rev: str | None = None) -> Commit:
        """The commit a branch, tag or (abbreviated) commit id points at (default: the default branch)."""
        commit = next(self.list_commits(repo, rev=rev, per_page=1), None)
        if commit is None:
            raise RevisionNotFoundError(
                f"{repo} is empty: its default branch has no commits yet",
                status=404,
                code="revision_not_found",
            )
        return commit

    def resolve(self, repo: str, rev: str | None = None) -> str:
        """The full commit id `rev` points at now (default: the default branch's head)."""
        return self.get_commit(repo, rev).id

    def list_tree(self, repo: str, path: str = "", rev: str | None = None, recursive: bool = False) -> Tree:
        """The files and folders under `path` at `rev` (default branch by default); `recursive` lists the
        whole subtree. The returned Tree also names the commit it was read at."""
        path = path.strip("/")
        params = {"recursive": "true"} if recursive else None
        if rev is None and not path:
            url = self.api_path(repo, "tree")
        else:
            url = self.api_path(repo, "tree", rev or self.resolve(repo), path)
        return Tree.from_json(self.request("GET", url, params=params).json())

    def download_file(
        self,
        repo: str,
        path: str,
        rev: str | None = None,
        local_path: str | Path | None = None,
        progress: Progress | None = None,
    ) -> Path:
        """Download one file to `local_path` (default: its name in the working directory; an existing
        folder means: into it) and return where it is.

        The bytes go to `<local_path>.part` and are renamed into place once complete, with their size and
        git blob id checked; an interrupted download resumes from the `.part` file with an HTTP Range
        request."""
        commit = self.resolve(repo, rev)
        target = Path(local_path) if local_path is not None else Path(Path(path).name)
        if target.is_dir():
            target = target / Path(path).name
        transfer.fetch_file(self, repo, commit, path.strip("/"), target, progress=progress)
        return target

    def download(
        self,
        repo: str,
        path: str | None = None,
        rev: str | None = None,
        local_dir: str | Path = ".",
        progress: Progress | None = None,
        *,
        workers: int = 4,
    ) -> Download:
        """Download a file, a folder or (without `path`) the whole repository into `local_dir`, keeping
        the files' paths in the repository.

        `rev` is resolved to one commit first and every file is read at that commit, so the result is
        consistent even if the branch moves meanwhile. Files already present with the same content are
        not downloaded again; partial files resume."""
        return transfer.download(self, repo, path, rev, Path(local_dir), progress, workers=workers)

    def upload(
        self,
        repo: str,
        local_path: str | Path,
        path_in_repo: str | None = None,
        message: str | None = None,
        branch: str | None = None,
        parent_commit: str | None = None,
        delete: list[str] | None = None,
        progress: Progress | None = None,
        *,
        hash_progress: Progress | None = None,
        workers: int = chunks.WORKERS,
    ) -> str:
        """Upload a file or a folder (recursively, without `.git/`) as ONE commit and return its id.

        A file goes to `path_in_repo` (default: its name; a value ending in `/` means: into that
        folder); a folder's contents go under `path_in_repo` (default: the root; `.` and `./` are the
        root too). A bad path (`..`, `.git`) is refused before anything is sent. `delete` lists paths
        to remove in the same commit. With `parent_commit`, the commit lands only if `branch` still
        points there (else ConflictError, and nothing is written). Files are streamed from disk.

        Files larger than 1 MiB are cut into content-defined chunks and only the chunks the server
        lacks are sent, by `workers` threads; they are committed as Git LFS files. An interrupted
        upload sends only what is still missing when run again. `progress(done, total)` counts bytes
        that reached the server (or that it had already), `hash_progress(done, total)` bytes hashed.
        `upload_with_result` does the same and also says how many bytes were sent."""
        return self.upload_with_result(
            repo,
            local_path,
            path_in_repo,
            message,
            branch,
            parent_commit,
            delete,
            progress,
            hash_progress=hash_progress,
            workers=workers,
        ).commit

    def upload_with_result(
        self,
        repo: str,
        local_path: str | Path,
        path_in_repo: str | None = None,
        message: str | None = None,
        branch: str | None = None,
        parent_commit: str | None = None,
        delete: list[str] | None = None,
        progress: Progress | None = None,
        *,
        hash_progress: Progress | None = None,
        workers: int = chunks.WORKERS,
    ) -> UploadResult:
        """`upload`, returning an UploadResult: the commit id, the files, and `bytes_sent` against
        `bytes_total` (what deduplication saved)."""
        files = transfer.collect(Path(local_path), path_in_repo)
        if message is None:
            message = f"Upload {Path(local_path).name or 'files'}"
        return transfer.upload(
            self,
            repo,
            files,
            message=message,
            branch=branch,
            parent_commit=parent_commit,
            delete=delete,
            progress=progress,
            hash_progress=hash_progress,
            workers=workers,
        )

    # --- branches and tags --------------------------------------------------------------------------

    def list_refs(self, repo: str) -> Refs:
        """The repository's branches and tags, with the commit each points at."""
        return Refs.from_json(self.request("GET", self.api_path(repo, "refs")).json())

    def _create_ref(self, repo: str, body: dict[str, Any]) -> Ref:
        return Ref.from_json(self.request("POST", self.api_path(repo, "refs"), json=body).json())

    def create_branch(self, repo: str, name: str, revision: str | None = None) -> Ref:
        """A new branch at `revision` (branch, tag or commit; default: the default branch)."""
        return self._create_ref(repo, {"type": "branch", "name": name, "revision": revision})

    def create_tag(
        self, repo: str, name: str, revision: str | None = None, message: str | None = None
    ) -> Ref:
        """A new tag at `revision`; with `message`, an annotated tag."""
        return self._create_ref(repo, {"type": "tag", "name": name, "revision": revision, "message": message})

    def delete_branch(self, repo: str, name: str) -> None:
        """Delete a branch (not the default branch)."""
        self.request("DELETE", self.api_path(repo, "refs", "branch", name))

    def delete_tag(self, repo: str, name: str) -> None:
        """Delete a tag."""
        self.request("DELETE", self.api_path(repo, "refs", "tag", name))

    # --- jobs ---------------------------------------------------------------------------------------

    def submit_job(self, spec: Mapping[str, Any] | None = None, /, **fields: Any) -> Job:
        """Queue a job and return it (status `queued`). Give the spec as a dict (the keys of the API:
        code, command, inputs, output, env, resources, executor, priority), as keyword arguments, or
        both (keywords win). Short forms: `code="owner/name@rev"`, `inputs={"x": "owner/data@v1"}`,
        `output="owner/results@branch"`, `time_limit="1h"`, and `cpus`, `memory`, `time_limit`, `gpus`,
        `requirements`, `variables`, `network` as keywords. Nothing is queued when the server refuses
        the spec (ValidationError with code `invalid_spec`, whose message names the field)."""
        body = jobs.build_spec(spec, **fields)
        return Job.from_json(self.request("POST", "/api/v1/jobs", json=body).json())

    def list_jobs(
        self,
        owner: str | None = None,
        status: str | None = None,
        repo: str | None = None,
        limit: int | None = None,
        *,
        per_page: int = 50,
    ) -> Iterator[Job]:
        """Jobs you may see, newest first: submitted by `owner` (a user name), in `status`, reading or
        writing the repository `repo` (owner/name); at most `limit` of them (default: all). Pages are
        fetched lazily as you iterate."""
        if repo is not None:
            repo = "/".join(split_repo_id(repo))
        left = limit
        before: int | None = None
        while left is None or left > 0:
            size = per_page if left is None else min(per_page, left)
            params = {"owner": owner, "status": status, "repo": repo, "limit": size, "before": before}
            data = self.request("GET", "/api/v1/jobs", params=params).json()
            page = [Job.from_json(j) for j in data["jobs"]]
            yield from page
            if left is not None:
                left -= len(page)
            before = data.get("next_before")
            if before is None or not page:
                return

    def get_job(self, job_id: int) -> Job:
        """The job with its provenance: resolved commits, environment, usage, exit code, output commit."""
        return Job.from_json(self.request("GET", jobs.job_path(job_id)).json())

    def job_logs(self, job_id: int, offset: int = 0) -> JobLog:
        """The job's log so far from byte `offset` (up to 1 MiB at a time: read on from `next_offset`)."""
        r = self.request("GET", jobs.job_path(job_id, "logs"), params={"offset": offset})
        return JobLog(
            r.content,
            offset,
            int(r.headers.get("x-log-next-offset", offset + len(r.content))),
            r.headers.get("x-job-status", ""),
        )

    def follow_job_logs(self, job_id: int, offset: int = 0) -> jobs.LogStream:
        """The job's log as it is written, from byte `offset`, until the job ends: iterate for text
        chunks; afterwards `.end` holds the final status, exit code and message (a JobEnd)."""
        return jobs.LogStream(self, jobs.job_number(job_id), offset)  # a bad id fails here, not later

    def cancel_job(self, job_id: int) -> Job:
        """Cancel a job: a queued one at once; a running one is stopped by the scheduler within seconds
        (`cancel_requested` is then set). ConflictError `job_finished` if it has already ended."""
        return Job.from_json(self.request("POST", jobs.job_path(job_id, "cancel")).json())

    def rerun_job(self, job_id: int) -> Job:
        """Queue the job's recorded spec again at the same commits of code and inputs; the new job."""
        return Job.from_json(self.request("POST", jobs.job_path(job_id, "rerun")).json())

    def wait_job(
        self,
        job_id: int,
        timeout: float | None = None,
        *,
        poll: float = 1.0,
        progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Wait until the job ends and return it; WaitTimeout after `timeout` seconds (the job goes on).
        `progress(job)` is called each time the job is looked at (at most every `poll` seconds)."""
        return jobs.wait(self, jobs.job_number(job_id), timeout, poll, progress)


__all__ = ["Client", "OpenSciError", "Progress", "split_repo_id"]
