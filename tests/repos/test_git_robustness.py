"""Smart HTTP under stress: cut-off pushes, gzip requests, large packs, parallel clones, a broken
repository on disk, and clients that go away mid-clone."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import Account, LiveServer
from tests.repos.git_helpers import (
    api_commit,
    bare_path,
    create_repo,
    fsck,
    git,
    git_processes,
    leftovers,
    pkt,
    refs,
    remote_url,
    rev,
    write_commit,
)

pytestmark = pytest.mark.live

RECEIVE = "application/x-git-receive-pack-request"
UPLOAD = "application/x-git-upload-pack-request"


def push_request(work: Path, old: str, new: str, ref: str = "refs/heads/main") -> bytes:
    """The body `git push` sends to git-receive-pack: one command, a flush, then the pack."""
    pack = subprocess.run(
        ["git", "pack-objects", "--stdout", "--revs", "-q"],
        cwd=work,
        input=f"{new}\n^{old}\n".encode(),
        capture_output=True,
        check=True,
    ).stdout
    assert pack.startswith(b"PACK")
    return pkt(f"{old} {new} {ref}\0report-status agent=opensci-test\n") + b"0000" + pack


@pytest.fixture
def robust(live_server: LiveServer, alice: Account, tmp_path: Path) -> tuple[dict[str, object], Path]:
    """alice/robust with one API commit, and a clone of it with one more (unpushed) commit."""
    repo = create_repo(live_server, alice, "robust")
    api_commit(live_server, alice, "alice/robust", {"a.txt": b"a\n"}, "start")
    work = tmp_path / "w"
    git("clone", "-q", remote_url(live_server, "/alice/robust.git", alice), work)
    write_commit(work, {"big.bin": os.urandom(300_000), "b.txt": "b\n"}, "unpushed")
    return repo, work


def test_truncated_push_body_changes_nothing(
    app: FastAPI, live_server: LiveServer, alice: Account, robust: tuple[dict[str, object], Path]
) -> None:
    repo, work = robust
    bare = bare_path(app, str(repo["id"]))
    old, new = rev(work, "origin/main"), rev(work)
    body = push_request(work, old, new)
    url = f"{live_server.url}/alice/robust.git/git-receive-pack"
    auth = (alice.name, alice.token)
    with httpx.Client(timeout=30) as c:
        # The pack cut in the middle, in a complete HTTP request: git refuses to unpack it.
        r = c.post(url, content=body[: len(body) // 2], headers={"Content-Type": RECEIVE}, auth=auth)
        assert r.status_code == 200
        assert b"unpack ok" not in r.content and b"ng refs/heads/main" in r.content, r.content
    assert refs(live_server, None, "alice/robust")["branches"] == {"main": old}

    # The HTTP request itself cut off: the client promises more bytes than it sends, then hangs up.
    port = int(live_server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as s:
        head = (
            f"POST /alice/robust.git/git-receive-pack HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: {RECEIVE}\r\nContent-Length: {len(body)}\r\n"
            f"Authorization: Bearer {alice.token}\r\n\r\n"
        )
        s.sendall(head.encode() + body[: len(body) // 2])
        time.sleep(0.3)
    time.sleep(0.5)
    assert refs(live_server, None, "alice/robust")["branches"] == {"main": old}
    assert git_processes(bare) == []
    assert leftovers(bare) == []
    fsck(bare)

    # The same request, whole, lands: the cut-off versions were refused for being cut off.
    with httpx.Client(timeout=30) as c:
        r = c.post(url, content=body, headers={"Content-Type": RECEIVE}, auth=auth)
        assert r.status_code == 200 and b"unpack ok" in r.content and b"ok refs/heads/main" in r.content
    assert refs(live_server, None, "alice/robust")["branches"] == {"main": new}
    fsck(bare)


def _fast_import_tags(work: Path, prefix: str, count: int) -> None:
    """`count` commits on main, each with an annotated tag `{prefix}{i}`, written in one fast-import."""
    parent = rev(work)
    lines = []
    for i in range(count):
        when = 1_700_000_000 + i
        msg, tag = f"{prefix} commit {i}", f"{prefix}{i}"
        lines += [
            "commit refs/heads/main",
            f"mark :{i + 1}",
            f"committer Test <t@example.org> {when} +0000",
            f"data {len(msg)}",
            msg,
            f"from {parent}" if i == 0 else f"from :{i}",
            f"M 644 inline {prefix}.txt",
            f"data {len(str(i))}",
            str(i),
            f"tag {tag}",
            f"from :{i + 1}",
            f"tagger Test <t@example.org> {when} +0000",
            f"data {len(tag)}",
            tag,
        ]
    subprocess.run(["git", "fast-import", "--quiet"], cwd=work, input="\n".join(lines).encode(), check=True)
    git("reset", "-q", "--hard", "main", cwd=work)


def test_gzip_upload_pack_requests_with_many_refs(
    live_server: LiveServer, alice: Account, robust: tuple[dict[str, object], Path], tmp_path: Path
) -> None:
    _, work = robust
    _fast_import_tags(work, "v", 300)
    git("push", "-q", "origin", "main", "--tags", cwd=work)
    assert len(refs(live_server, None, "alice/robust")["tags"]) == 300

    # 300 wants make a request body git compresses: the clone only works if the server gunzips it.
    trace = {"GIT_TRACE_CURL": "1", "GIT_TRACE_CURL_NO_DATA": "1"}
    clone = tmp_path / "clone"
    out = git("clone", remote_url(live_server, "/alice/robust.git"), clone, env=trace)
    assert "Content-Encoding: gzip" in out.stderr
    assert len(git("tag", cwd=clone).stdout.split()) == 300

    # 300 more tags and a commit over the API; the fetch asks for all of them, gzipped again.
    _fast_import_tags(work, "w", 300)
    git("push", "-q", "origin", "main", "--tags", cwd=work)
    head = api_commit(live_server, alice, "alice/robust", {"api.txt": b"api\n"}, "api")
    out = git("fetch", "--tags", "origin", cwd=clone, env=trace)
    assert "Content-Encoding: gzip" in out.stderr
    assert rev(clone, "origin/main") == head
    assert len(git("tag", cwd=clone).stdout.split()) == 600


def test_gzip_bodies_checked_before_git_runs(live_server: LiveServer, robust: object) -> None:
    url = f"{live_server.url}/alice/robust.git/git-upload-pack"
    v2 = {"Content-Type": UPLOAD, "Git-Protocol": "version=2"}
    ls_refs = pkt("command=ls-refs\n") + b"0001" + pkt("ref-prefix refs/heads/\n") + b"0000"
    with httpx.Client(timeout=30) as c:
        plain = c.post(url, content=ls_refs, headers=v2)
        zipped = c.post(url, content=gzip.compress(ls_refs), headers={**v2, "Content-Encoding": "gzip"})
        assert plain.status_code == zipped.status_code == 200
        assert b"refs/heads/main" in zipped.content and zipped.content == plain.content
        for bad in (b"not gzip at all", gzip.compress(ls_refs)[:-12]):
            r = c.post(url, content=bad, headers={**v2, "Content-Encoding": "gzip"})
            assert r.status_code == 400 and r.json()["error"] == "bad_encoding", r.text
        r = c.post(url, content=ls_refs, headers={**v2, "Content-Encoding": "br"})
        assert r.status_code == 400 and r.json()["error"] == "bad_encoding"


def test_large_push_and_clone_round_trip_byte_identical(
    app: FastAPI, live_server: LiveServer, alice: Account, tmp_path: Path
) -> None:
    repo = create_repo(live_server, alice, "large", kind="dataset")
    work = tmp_path / "w"
    git("clone", "-q", remote_url(live_server, "/datasets/alice/large.git", alice), work)
    files = {f"data/part-{i}.bin": os.urandom(5 * 1024 * 1024) for i in range(4)}
    files["data/zeros.bin"] = bytes(2 * 1024 * 1024)
    head = write_commit(work, files, "20 MB of data")
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    assert refs(live_server, None, "alice/large")["branches"] == {"main": head}

    clone = tmp_path / "clone"
    git("clone", "-q", remote_url(live_server, "/datasets/alice/large.git"), clone)
    for path, content in files.items():
        assert hashlib.sha256((clone / path).read_bytes()).digest() == hashlib.sha256(content).digest()
    fsck(bare_path(app, str(repo["id"])))


def test_four_parallel_clones(live_server: LiveServer, alice: Account, tmp_path: Path) -> None:
    create_repo(live_server, alice, "popular")
    files = {f"f{i}.bin": os.urandom(400_000) for i in range(5)}
    head = api_commit(live_server, alice, "alice/popular", files, "content")
    url = remote_url(live_server, "/alice/popular.git")
    procs = [
        subprocess.Popen(
            ["git", "clone", "-q", url, str(tmp_path / f"c{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    for i in range(4):
        assert rev(tmp_path / f"c{i}") == head
        assert all((tmp_path / f"c{i}" / name).read_bytes() == data for name, data in files.items())


def test_a_body_that_is_not_git_protocol_is_the_clients_error(
    live_server: LiveServer, alice: Account, robust: tuple[dict[str, object], Path]
) -> None:
    before = refs(live_server, alice, "alice/robust")
    with httpx.Client(base_url=live_server.url, timeout=30, auth=(alice.name, alice.token)) as c:
        for service, kind in (("git-upload-pack", UPLOAD), ("git-receive-pack", RECEIVE)):
            r = c.post(f"/alice/robust.git/{service}", content=b"garbage", headers={"Content-Type": kind})
            assert r.status_code == 400 and r.json()["error"] == "bad_request", (service, r.text)
    assert refs(live_server, alice, "alice/robust") == before


def test_missing_repository_on_disk_is_a_500_with_the_request_id(
    app: FastAPI,
    live_server: LiveServer,
    alice: Account,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="opensci.git")
    repo = create_repo(live_server, alice, "broken")
    api_commit(live_server, alice, "alice/broken", {"a.txt": b"a\n"})
    bare = bare_path(app, str(repo["id"]))
    for path in sorted(bare.rglob("*"), reverse=True):
        path.unlink() if not path.is_dir() or path.is_symlink() else path.rmdir()
    bare.rmdir()

    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        for service in ("git-upload-pack", "git-receive-pack"):
            r = c.get(
                "/alice/broken.git/info/refs", params={"service": service}, auth=(alice.name, alice.token)
            )
            assert r.status_code == 500 and r.json()["error"] == "git_failed", r.text
            rid = r.headers["x-request-id"]
            assert rid in r.json()["message"]
            logged = [rec.getMessage() for rec in caplog.records if rid in rec.getMessage()]
            assert logged and "does not appear to be a git repository" in logged[0], caplog.text
        for service, body in (("git-upload-pack", b"0000"), ("git-receive-pack", b"0000")):
            r = c.post(
                f"/alice/broken.git/{service}",
                content=body,
                headers={"Content-Type": f"application/x-{service}-request"},
                auth=(alice.name, alice.token),
            )
            assert r.status_code == 500 and r.json()["error"] == "git_failed", (service, r.text)
            assert any(r.headers["x-request-id"] in rec.getMessage() for rec in caplog.records)

    out = git("clone", remote_url(live_server, "/alice/broken.git"), tmp_path / "c", check=False)
    assert out.returncode != 0 and "500" in out.stderr


def test_client_going_away_mid_clone_stops_git(
    app: FastAPI, live_server: LiveServer, alice: Account, tmp_path: Path
) -> None:
    repo = create_repo(live_server, alice, "huge")
    bare = bare_path(app, str(repo["id"]))
    work = tmp_path / "w"
    git("init", "-q", "-b", "main", work)
    head = write_commit(work, {f"r{i}.bin": os.urandom(4 * 1024 * 1024) for i in range(3)}, "12 MB")
    git("fetch", "-q", str(work), "main:main", cwd=bare)  # set-up straight to disk; the clone is tested

    body = pkt(f"want {head} side-band-64k ofs-delta\n") + b"0000" + pkt("done\n")
    request = (
        f"POST /alice/huge.git/git-upload-pack HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: {UPLOAD}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    port = int(live_server.url.rsplit(":", 1)[1])
    for attempt in range(2):  # the second shows the server is healthy after the first
        with socket.socket() as s:
            # A small receive window, as a slow client has: the 12 MB cannot all be in flight.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            s.connect(("127.0.0.1", port))
            s.sendall(request)
            got = b""
            while len(got) < 1024 * 1024:
                got += s.recv(64 * 1024)
            assert got.startswith(b"HTTP/1.1 200")
            # We stopped reading: the server is stuck sending, so git is still at work...
            time.sleep(0.5)
            assert git_processes(bare), "git should still be running while the client waits"
            # A clone may take minutes: it must not hold a database connection all that time.
            assert app.state.db.engine.pool.checkedout() == 0
        # ...and the client hung up: within a few seconds no git is left working for it.
        deadline = time.monotonic() + 8
        while git_processes(bare) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert git_processes(bare) == [], attempt
    assert leftovers(bare) == []
