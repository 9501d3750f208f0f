"""Which blob store objects the repositories reference: every Git LFS pointer reachable from any ref.

A pointer is a small blob (at most 1024 bytes, per the Git LFS spec):

    version https://git-lfs.github.com/spec/v1
    oid sha256:4d7a2146…
    size 12345

Every ref counts (all branches and tags, every commit of their history, other namespaces such as
`refs/pr/*`), so an old revision stays downloadable. Objects only in unreachable commits (of a deleted
branch, say) do not count.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

from opensci.repos.gitstore import GitStore

POINTER_MAX = 1024
_VERSIONS = (b"version https://git-lfs.github.com/spec/v1\n", b"version https://hawser.github.com/spec/v1\n")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def parse_pointer(data: bytes) -> tuple[str, int] | None:
    """(oid, size) of a Git LFS pointer file, or None if these bytes are not one."""
    if len(data) > POINTER_MAX or not data.startswith(_VERSIONS):
        return None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    fields: dict[str, str] = {}
    for line in text.split("\n")[1:]:
        if line:
            key, sep, value = line.partition(" ")
            if not sep:
                return None
            fields[key] = value
    oid, size = fields.get("oid", ""), fields.get("size", "")
    if not oid.startswith("sha256:") or not _HEX64.match(oid[7:]) or not size.isdigit():
        return None
    return oid[7:], int(size)


def _git(git: str, path: Path, args: list[str], stdin: bytes | None = None) -> bytes:
    proc = subprocess.run([git, *args], cwd=path, input=stdin, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git {args[0]} failed in {path}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def repo_lfs_oids(git: str, path: Path) -> set[str]:
    """The oids of every LFS pointer reachable from any ref of one bare repository."""
    # Objects reachable from any ref, blobs larger than a pointer left out by git itself.
    reachable = _git(
        git,
        path,
        ["rev-list", "--objects", "--all", "--no-object-names", f"--filter=blob:limit={POINTER_MAX + 1}"],
    )
    if not reachable.strip():
        return set()
    checked = _git(
        git,
        path,
        ["cat-file", "--batch-check=%(objectname) %(objecttype) %(objectsize)", "--buffer"],
        reachable,
    )
    small = []
    for line in checked.splitlines():
        name, kind, size = line.split(b" ")
        if kind == b"blob" and 40 < int(size) <= POINTER_MAX:
            small.append(name)
    if not small:
        return set()
    out = _git(git, path, ["cat-file", "--batch", "--buffer"], b"\n".join(small) + b"\n")
    oids: set[str] = set()
    pos = 0
    while pos < len(out):
        eol = out.index(b"\n", pos)
        _, _, size = out[pos:eol].split(b" ")
        start = eol + 1
        end = start + int(size)
        pointer = parse_pointer(out[start:end])
        if pointer is not None:
            oids.add(pointer[0])
        pos = end + 1  # the content is followed by a newline
    return oids


def referenced_lfs_oids(store: GitStore, repo_ids: Iterable[str]) -> set[str]:
    """Every LFS oid referenced by any revision of these repositories. A repository whose bare
    repository is missing raises FileNotFoundError: garbage collection must not guess."""
    oids: set[str] = set()
    for repo_id in repo_ids:
        path = store.path(repo_id)
        if not path.is_dir():
            raise FileNotFoundError(f"the git repository of {repo_id} is missing ({path})")
        oids |= repo_lfs_oids(store.git, path)
    return oids
