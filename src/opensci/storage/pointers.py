"""Git LFS pointer files: parsing, writing, and finding them in a repository's history.

A pointer is a small blob (at most 1024 bytes, per the Git LFS spec):

    version https://git-lfs.github.com/spec/v1
    oid sha256:4d7a2146…
    size 12345

Standard library only: the pre-receive check (`push_check`) imports this in a fresh interpreter per push.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

POINTER_MAX = 1024  # bytes; the Git LFS spec's limit for a pointer file
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


def format_pointer(oid: str, size: int) -> bytes:
    """The canonical pointer file, byte for byte what `git lfs` writes."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def _git(git: str, path: Path, args: list[str], stdin: bytes | None = None) -> bytes:
    proc = subprocess.run([git, *args], cwd=path, input=stdin, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git {args[0]} failed in {path}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def pointers_in(git: str, path: Path, revs: Sequence[str]) -> dict[str, str]:
    """oid → a path it appears at, for every LFS pointer in the objects `git rev-list --objects <revs>`
    lists (e.g. `--all`; or `NEW --not --all` for what a push adds)."""
    listed = _git(git, path, ["rev-list", "--objects", f"--filter=blob:limit={POINTER_MAX + 1}", *revs, "--"])
    names: dict[bytes, str] = {}
    for line in listed.splitlines():
        sha, _, name = line.partition(b" ")
        names.setdefault(sha, name.decode("utf-8", "replace"))
    if not names:
        return {}
    checked = _git(
        git,
        path,
        ["cat-file", "--batch-check=%(objectname) %(objecttype) %(objectsize)", "--buffer"],
        b"\n".join(names) + b"\n",
    )
    small = []
    for line in checked.splitlines():
        name, kind, size = line.split(b" ")
        if kind == b"blob" and 40 < int(size) <= POINTER_MAX:
            small.append(name)
    if not small:
        return {}
    out = _git(git, path, ["cat-file", "--batch", "--buffer"], b"\n".join(small) + b"\n")
    found: dict[str, str] = {}
    pos = 0
    while pos < len(out):
        eol = out.index(b"\n", pos)
        sha, _, size = out[pos:eol].split(b" ")
        start = eol + 1
        end = start + int(size)
        pointer = parse_pointer(out[start:end])
        if pointer is not None:
            found.setdefault(pointer[0], names.get(sha, ""))
        pos = end + 1  # the content is followed by a newline
    return found
