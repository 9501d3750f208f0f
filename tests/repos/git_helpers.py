"""Helpers for the git smart HTTP tests: the stock `git` client in a subprocess, and the REST API over a
real socket. Plain functions, so every test reads as the commands a user would type."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
from fastapi import FastAPI

from tests.conftest import Account, LiveServer, need_binary


def git(
    *args: str | Path,
    cwd: Path | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run the real git client; with check, a failure shows git's own output."""
    exe = need_binary("git")
    proc = subprocess.run(
        [exe, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"git {' '.join(map(str, args))} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def rev(cwd: Path, what: str = "HEAD") -> str:
    return git("rev-parse", what, cwd=cwd).stdout.strip()


def remote_url(server: LiveServer, path: str, who: Account | None = None, token: str | None = None) -> str:
    """`http://user:TOKEN@127.0.0.1:port/path`, as a user pastes it; anonymous without `who`."""
    base = urlsplit(server.url)
    netloc = base.netloc
    if who is not None:
        netloc = f"{who.name}:{token or who.token}@{netloc}"
    return urlunsplit((base.scheme, netloc, path, "", ""))


def api(server: LiveServer, who: Account | None = None) -> httpx.Client:
    headers = who.headers if who is not None else {}
    return httpx.Client(base_url=server.url + "/api/v1", headers=headers, timeout=60)


def create_repo(server: LiveServer, who: Account, name: str, **fields: object) -> dict[str, object]:
    with api(server, who) as c:
        r = c.post("/repos", json={"name": name, **fields})
        assert r.status_code == 201, r.text
        return r.json()


def api_commit(
    server: LiveServer,
    who: Account,
    full_name: str,
    files: dict[str, bytes],
    message: str = "commit over the API",
    branch: str | None = None,
) -> str:
    data = {"message": message, **({"branch": branch} if branch else {})}
    with api(server, who) as c:
        r = c.post(
            f"/repos/{full_name}/commits",
            data=data,
            files=[("files", (path, content)) for path, content in files.items()],
        )
        assert r.status_code == 201, r.text
        return r.json()["commit"]


def make_org(server: LiveServer, owner: Account, name: str, members: list[tuple[Account, str]]) -> None:
    with api(server, owner) as c:
        assert c.post("/orgs", json={"name": name}).status_code in (200, 201)
        for who, role in members:
            r = c.put(f"/orgs/{name}/members/{who.name}", json={"role": role})
            assert r.status_code == 200, r.text


def repo_info(server: LiveServer, who: Account | None, full_name: str) -> dict[str, object]:
    with api(server, who) as c:
        r = c.get(f"/repos/{full_name}")
        assert r.status_code == 200, r.text
        return r.json()


def refs(server: LiveServer, who: Account | None, full_name: str) -> dict[str, dict[str, str]]:
    """{"branches": {name: commit}, "tags": {name: commit}} as the REST API reports them."""
    with api(server, who) as c:
        r = c.get(f"/repos/{full_name}/refs")
        assert r.status_code == 200, r.text
        body = r.json()
    return {kind: {x["name"]: x["target"] for x in body[kind]} for kind in ("branches", "tags")}


def commit_ids(server: LiveServer, who: Account | None, full_name: str, rev: str | None = None) -> list[str]:
    with api(server, who) as c:
        r = c.get(f"/repos/{full_name}/commits", params={"per_page": 100, **({"rev": rev} if rev else {})})
        assert r.status_code == 200, r.text
        return [x["id"] for x in r.json()["items"]]


def write_commit(work: Path, files: dict[str, bytes | str], message: str) -> str:
    """Write files in a working copy, commit them, and return the new commit id."""
    for path, content in files.items():
        target = work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content)
        else:
            target.write_bytes(content)
    git("add", "--all", cwd=work)
    git("commit", "-q", "-m", message, cwd=work)
    return rev(work)


def fsck(bare: Path) -> None:
    """`git fsck --full --strict` on a server-side bare repository passes, and every ref resolves."""
    git("fsck", "--full", "--strict", "--no-dangling", cwd=bare)
    for line in git("for-each-ref", "--format=%(objectname) %(refname)", cwd=bare).stdout.splitlines():
        oid, ref = line.split(" ", 1)
        assert git("cat-file", "-e", oid, cwd=bare, check=False).returncode == 0, f"{ref} → missing {oid}"


def bare_path(app: FastAPI, repo_id: str) -> Path:
    return app.state.store.path(repo_id)


def pkt(line: str | bytes) -> bytes:
    data = line.encode() if isinstance(line, str) else line
    return f"{len(data) + 4:04x}".encode() + data


def leftovers(bare: Path) -> list[str]:
    """Temporary files a push may leave behind: quarantine folders, temporary packs, lock files."""
    objects = bare / "objects"
    found = [p.name for p in objects.iterdir() if p.name.startswith(("incoming-", "tmp_"))]
    found += [p.name for p in (objects / "pack").iterdir() if p.name.startswith("tmp_")]
    found += [str(p.relative_to(bare)) for p in bare.rglob("*.lock")]
    return found


def git_processes(bare: Path) -> list[str]:
    """Processes (git and its children) working in a bare repository, and git zombies of this process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
            cwd = os.readlink(entry / "cwd") if (entry / "cwd").exists() else ""
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if str(bare) in cmdline or cwd.startswith(str(bare)):
            found.append(f"{entry.name} {state} {cmdline}")
        elif int(ppid) == os.getpid() and state == "Z" and "(git)" in stat:
            found.append(f"{entry.name} zombie git")
    return found
