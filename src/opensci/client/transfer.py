"""Moving files: uploads streamed from disk as one multipart commit, downloads resumed and verified.

Uploads never hold a file in memory: the multipart body is generated chunk by chunk while httpx sends
it, with an exact Content-Length computed up front. Downloads write to `<target>.part`, resume it with
an HTTP Range request, check the size and the git blob id (the server's ETag), then rename it into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from opensci.client import chunks, fingerprints
from opensci.client.errors import TransferError, ValidationError
from opensci.client.types import Download, TreeEntry, UploadResult

if TYPE_CHECKING:
    from opensci.client.client import Client

CHUNK = 1024 * 1024
_OID = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")

ProgressFn = Callable[[int, int], None]


# --- upload --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalFile:
    """A file to upload: where it goes in the repository, where it is on disk, and its size."""

    path_in_repo: str
    local: Path
    size: int


MAX_PATH_BYTES = 4096
MAX_PATH_DEPTH = 256


def _invalid_path(message: str) -> ValidationError:
    return ValidationError(message, code="invalid_path")


def repo_folder(value: str) -> str:
    """A place in a repository as people write it, in the form the server takes: `.`, `./` and `/`
    are the root, `./data/` and `data//raw/.` are `data` and `data/raw`. Refused before anything is
    sent: `..` (nothing is above the root), `.git`, backslashes and NUL characters."""
    if "\x00" in value:
        raise _invalid_path(f"path {value!r} contains a NUL character")
    if "\\" in value:
        raise _invalid_path(f"path {value!r}: use '/' to separate folders")
    parts = [part for part in value.split("/") if part not in ("", ".")]
    for part in parts:
        if part == "..":
            raise _invalid_path(f"path {value!r} has a '..' segment; give it from the repository root")
        if part.lower() == ".git":
            raise _invalid_path(f"path {value!r} has a '.git' segment, which a repository cannot hold")
    return "/".join(parts)


def names_folder(value: str) -> bool:
    """Whether a destination given for a file names a folder to put it in (`data/`, `.`, `data/.`)."""
    return value.endswith("/") or value in (".", "") or value.endswith("/.")


def collect(local_path: Path, path_in_repo: str | None) -> list[LocalFile]:
    """The files to upload from a file or a folder (walked recursively in name order, without `.git`).

    In a folder, a symbolic link is followed only when it points inside the folder: a link to a file
    elsewhere (a key, a password file) is never published by accident. Every path is checked against
    the server's rules here, so that a bad one fails before anything (a repository) is created.
    """
    return [_checked(f) for f in _collect(local_path, path_in_repo)]


def _checked(f: LocalFile) -> LocalFile:
    """A repository path as the server takes it: text (a local name that is not valid UTF-8 is
    refused by name), no `.git` segment nor backslash, not too long nor too deep."""
    try:
        encoded = f.path_in_repo.encode()
    except UnicodeEncodeError:
        shown = f.path_in_repo.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise _invalid_path(
            f"the file name {shown!r} ({f.local}) is not valid UTF-8: rename it, then upload again"
        ) from None
    if repo_folder(f.path_in_repo) != f.path_in_repo:
        raise _invalid_path(f"{f.local} cannot go to {f.path_in_repo!r} in a repository: rename it")
    if len(encoded) > MAX_PATH_BYTES:
        raise _invalid_path(f"the path {f.path_in_repo[:80]!r}… is longer than {MAX_PATH_BYTES} bytes")
    if f.path_in_repo.count("/") >= MAX_PATH_DEPTH:
        raise _invalid_path(f"{f.local} is nested more than {MAX_PATH_DEPTH} folders deep")
    return f


def _collect(local_path: Path, path_in_repo: str | None) -> list[LocalFile]:
    if local_path.is_dir():
        root_dir = local_path.resolve()
        prefix = repo_folder(path_in_repo or "")
        out: list[LocalFile] = []
        for root, dirs, names in os.walk(local_path):
            dirs[:] = sorted(d for d in dirs if d != ".git")
            for name in sorted(names):
                if name == ".git":
                    continue
                p = Path(root) / name
                if p.is_symlink() and not p.resolve().is_relative_to(root_dir):
                    continue
                try:
                    st = p.stat()
                except FileNotFoundError:  # a dangling symlink
                    continue
                if stat.S_ISREG(st.st_mode):
                    rel = p.relative_to(local_path).as_posix()
                    out.append(LocalFile(f"{prefix}/{rel}" if prefix else rel, p, st.st_size))
        return out
    st = local_path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise ValidationError(f"{local_path} is neither a file nor a folder", code="invalid_path")
    folder = repo_folder(path_in_repo or "")
    if path_in_repo is None or names_folder(path_in_repo) or not folder:
        target = f"{folder}/{local_path.name}" if folder else local_path.name
    else:
        target = folder
    return [LocalFile(target, local_path, st.st_size)]


def _quoted(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValidationError(f"path {value!r} contains a line break", code="invalid_path")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _deleted(path: str) -> str:
    folder = repo_folder(path)
    if not folder:
        raise _invalid_path(f"{path!r} names the repository root: list the paths to delete")
    return folder


class MultipartBody:
    """A multipart/form-data body generated from disk while it is sent, with its exact length known."""

    def __init__(
        self, fields: list[tuple[str, str]], files: list[LocalFile], progress: ProgressFn | None
    ) -> None:
        boundary = secrets.token_hex(16)
        self.content_type = f"multipart/form-data; boundary={boundary}"
        self.progress = progress
        self.total_file_bytes = sum(f.size for f in files)
        self._segments: list[bytes | LocalFile] = []
        for name, value in fields:
            head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            self._segments.append(head.encode() + value.encode() + b"\r\n")
        for f in files:
            head = (
                f"--{boundary}\r\nContent-Disposition: form-data; "
                f'name="files"; filename={_quoted(f.path_in_repo)}\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            )
            self._segments += [head.encode(), f, b"\r\n"]
        self._segments.append(f"--{boundary}--\r\n".encode())
        self.length = sum(s.size if isinstance(s, LocalFile) else len(s) for s in self._segments)

    def __iter__(self) -> Iterator[bytes]:
        done = 0
        if self.progress:
            self.progress(0, self.total_file_bytes)
        for segment in self._segments:
            if isinstance(segment, bytes):
                yield segment
                continue
            with open(segment.local, "rb") as fh:
                remaining = segment.size
                while remaining:
                    chunk = fh.read(min(CHUNK, remaining))
                    if not chunk:
                        raise TransferError(f"{segment.local} shrank while it was being uploaded")
                    remaining -= len(chunk)
                    done += len(chunk)
                    yield chunk
                    if self.progress:
                        self.progress(done, self.total_file_bytes)
                if fh.read(1):
                    raise TransferError(f"{segment.local} grew while it was being uploaded")


def upload(
    client: Client,
    repo: str,
    files: list[LocalFile],
    *,
    message: str,
    branch: str | None,
    parent_commit: str | None,
    delete: list[str] | None,
    progress: ProgressFn | None,
    hash_progress: ProgressFn | None = None,
    workers: int = chunks.WORKERS,
    chunk_threshold: int = chunks.CHUNKED_MIN_BYTES,
) -> UploadResult:
    """One commit of `files`: those larger than `chunk_threshold` first go through the chunk protocol
    (only the chunks the server lacks are sent) and are committed as Git LFS pointers; the others travel
    in the commit request itself.

    `progress(done, total)` counts bytes of all files that reached the server (or that it already had);
    `hash_progress(done, total)` the bytes of the large files hashed so far."""
    big = [f for f in files if f.size > chunk_threshold]
    small = [f for f in files if f.size <= chunk_threshold]
    total = sum(f.size for f in files)
    hash_total = sum(f.size for f in big)
    lock = threading.Lock()
    state = {"done": 0, "hashed": 0, "sent": 0}

    def advance(file_bytes: int, wire_bytes: int) -> None:
        with lock:
            state["done"] += file_bytes
            state["sent"] += wire_bytes
            if progress:
                progress(state["done"], total)

    def hashed(n: int) -> None:
        state["hashed"] += n
        if hash_progress:
            hash_progress(state["hashed"], hash_total)

    if progress:
        progress(0, total)
    if hash_progress and big:
        hash_progress(0, hash_total)
    fields = [("message", message)]
    if branch:
        fields.append(("branch", branch))
    if parent_commit:
        fields.append(("parent_commit", parent_commit))
    fields += [("delete", _deleted(path)) for path in delete or []]
    for f in big:
        fc = _upload_large(client, repo, f, workers=workers, hashed=hashed, advance=advance)
        if fc.size != f.size:
            raise TransferError(f"{f.local} changed while it was being uploaded; upload it again")
        pointer = {"path": f.path_in_repo, "oid": fc.oid, "size": fc.size}
        fields.append(("lfs", json.dumps(pointer)))

    base = state["done"]
    body = MultipartBody(fields, small, lambda done, _total: advance(base + done - state["done"], 0))
    response = client.request(
        "POST",
        client.api_path(repo, "commits"),
        content=body,
        headers={"Content-Type": body.content_type, "Content-Length": str(body.length)},
        # The server stores and commits everything before it answers: give it time for large uploads.
        timeout=httpx.Timeout(client.timeout, read=max(client.timeout, 600.0)),
    )
    state["sent"] += sum(f.size for f in small)
    reply = response.json()
    return UploadResult(
        commit=str(reply["commit"]),
        changed=bool(reply.get("changed", True)),
        files=[f.path_in_repo for f in files],
        bytes_total=total,
        bytes_sent=state["sent"],
        chunked_files=[f.path_in_repo for f in big],
    )


def _upload_large(
    client: Client,
    repo: str,
    f: LocalFile,
    *,
    workers: int,
    hashed: Callable[[int], None],
    advance: Callable[[int, int], None],
) -> chunks.FileChunks:
    """One file through the chunk protocol, following what was kept of the last upload to its path (see
    `fingerprints`) if anything was. If that attempt fails as a stale or damaged record would make it
    fail (TransferError, ValidationError), the record is dropped and the file is cut whole at once (the
    progress of the first attempt is taken back); other failures drop it too, and are raised."""
    like = fingerprints.load(client.url, repo, f.path_in_repo)
    lock = threading.Lock()
    counted = {"file": 0, "hashed": 0}  # progress reported by the current attempt

    def sent(file_bytes: int, wire_bytes: int) -> None:
        with lock:
            counted["file"] += file_bytes
        advance(file_bytes, wire_bytes)

    def seen(n: int) -> None:
        counted["hashed"] += n
        hashed(n)

    while True:
        try:
            fc, _ = chunks.upload_path(
                client, repo, f.local, workers=workers, on_hashed=seen, on_sent=sent, like=like
            )
        except (TransferError, ValidationError):
            if like is None:
                raise
            fingerprints.forget(client.url, repo, f.path_in_repo)
            like = None
            advance(-counted["file"], 0)
            hashed(-counted["hashed"])
            counted.update(file=0, hashed=0)
            continue
        except BaseException:
            if like is not None:
                fingerprints.forget(client.url, repo, f.path_in_repo)
            raise
        fingerprints.save(client.url, repo, f.path_in_repo, fc.fingerprint())
        return fc


# --- download ------------------------------------------------------------------------------------------


def git_blob_id(path: Path) -> str:
    """The id git gives a file's content: sha1 of `blob <size>\\0<bytes>`."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _has_content(path: Path, entry: TreeEntry) -> bool:
    try:
        if not path.is_file() or path.stat().st_size != entry.size:
            return False
    except OSError:
        return False
    if entry.lfs_oid is not None:
        return file_sha256(path) == entry.lfs_oid
    return git_blob_id(path) == entry.oid


def local_target(local_dir: Path, repo_path: str) -> Path:
    """Where a repository path lands under local_dir; refuses paths that would escape it."""
    parts = repo_path.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\\" in repo_path or "\x00" in repo_path:
        raise TransferError(f"refusing to write the unsafe path {repo_path!r}", code="unsafe_path")
    return local_dir.joinpath(*parts)


def fetch_file(
    client: Client, repo: str, commit: str, path: str, target: Path, progress: ProgressFn | None = None
) -> None:
    """Download `path` at `commit` to `target` through `<target>.part` (resumed if present)."""
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    url = client.api_path(repo, "raw", commit, path)
    for _ in range(2):
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        with client.stream("GET", url, headers) as r:
            if r.status_code == 416:  # the partial file is longer than the file: start again
                part.unlink()
                continue
            if r.status_code == 206:
                m = _CONTENT_RANGE.match(r.headers.get("content-range", ""))
                if not m or int(m.group(1)) != offset:
                    raise TransferError(f"{path}: the server answered a different range than asked for")
                total: int | None = int(m.group(3))
                mode = "ab"
            else:
                offset, mode = 0, "wb"
                length = r.headers.get("content-length")
                total = int(length) if length and length.isdigit() else None
            etag = r.headers.get("etag", "").removeprefix("W/").strip('"')
            done = offset
            if progress:
                progress(done, total or 0)
            with open(part, mode) as fh:
                for chunk in r.iter_bytes(CHUNK):
                    fh.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total or done)
        size = part.stat().st_size
        if total is not None and size != total:
            raise TransferError(f"{path}: received {size} of {total} bytes")
        # The ETag names the content: its git blob id, or its sha256 for a Git LFS file.
        wrong = (_OID.match(etag) and git_blob_id(part) != etag) or (
            _SHA256.match(etag) and file_sha256(part) != etag
        )
        if wrong:
            part.unlink()
            if offset:  # the partial file held other bytes: download the whole file once more
                continue
            raise TransferError(f"{path}: the bytes received do not match the file's id {etag[:12]}")
        os.replace(part, target)
        return
    raise TransferError(f"{path}: could not resume the partial download; run the download again")


def download(
    client: Client,
    repo: str,
    path: str | None,
    rev: str | None,
    local_dir: Path,
    progress: ProgressFn | None,
    *,
    workers: int = 4,
) -> Download:
    commit = client.resolve(repo, rev)
    path = (path or "").strip("/")
    try:
        entries = [e for e in client.list_tree(repo, path, rev=commit, recursive=True) if e.type == "file"]
    except ValidationError as exc:
        if exc.code != "not_a_folder":
            raise
        target = local_target(local_dir, path)
        fetch_file(client, repo, commit, path, target, progress)
        return Download(commit, local_dir, [target])

    total = sum(e.size or 0 for e in entries)
    lock = threading.Lock()
    state = {"done": 0}
    seen: dict[str, int] = {}

    def advance(entry: TreeEntry, done: int) -> None:
        with lock:
            state["done"] += done - seen.get(entry.path, 0)
            seen[entry.path] = done
            if progress:
                progress(state["done"], total)

    def one(entry: TreeEntry) -> None:
        target = local_target(local_dir, entry.path)
        if _has_content(target, entry):
            advance(entry, entry.size or 0)
            return
        fetch_file(client, repo, commit, entry.path, target, lambda done, _t: advance(entry, done))

    if progress:
        progress(0, total)
    local_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(one, e) for e in entries]
        finished, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        for f in finished:
            f.result()  # re-raise the first failure
    return Download(commit, local_dir, [local_target(local_dir, e.path) for e in entries])
