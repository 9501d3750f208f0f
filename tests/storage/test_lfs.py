"""The Git LFS server with the stock `git lfs` client (Debian's git-lfs) against a live server, and the
batch API's rules spoken directly: permissions as git's, signed links, Range, bad input, quotas."""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import httpx
import pytest

from opensci.storage import quota
from tests.conftest import Account, LiveServer, need_binary
from tests.repos.git_helpers import api, create_repo, git, remote_url

LFS = {"Accept": "application/vnd.git-lfs+json", "Content-Type": "application/vnd.git-lfs+json"}


@pytest.fixture
def lfs_home() -> None:
    need_binary("git-lfs")
    git("lfs", "install", "--skip-repo")


def _batch(
    server: LiveServer,
    path: str,
    op: str,
    objects: list[dict[str, object]],
    who: Account | None = None,
    token: str | None = None,
) -> httpx.Response:
    auth = (who.name, token or who.token) if who is not None else None
    return httpx.post(
        f"{server.url}{path}.git/info/lfs/objects/batch",
        json={"operation": op, "transfers": ["basic"], "objects": objects, "hash_algo": "sha256"},
        headers=LFS,
        auth=auth,
        timeout=60,
    )


def _upload(server: LiveServer, path: str, who: Account, data: bytes) -> str:
    oid = hashlib.sha256(data).hexdigest()
    r = _batch(server, path, "upload", [{"oid": oid, "size": len(data)}], who)
    assert r.status_code == 200, r.text
    obj = r.json()["objects"][0]
    if "actions" in obj:
        put = httpx.put(obj["actions"]["upload"]["href"], content=data, timeout=60)
        assert put.status_code == 200, put.text
        v = httpx.post(obj["actions"]["verify"]["href"], json={"oid": oid, "size": len(data)}, timeout=60)
        assert v.status_code == 200, v.text
    return oid


def test_git_lfs_push_and_clone_round_trip(
    live_server: LiveServer, alice: Account, bob: Account, lfs_home: None, tmp_path: Path
) -> None:
    create_repo(live_server, alice, "weights", kind="model", private=True)
    work = tmp_path / "work"
    git("clone", remote_url(live_server, "/alice/weights", alice), work)
    git("lfs", "track", "*.bin", "data/*.parquet", cwd=work)
    big = os.urandom(3 * 1024 * 1024 + 17)
    (work / "model.bin").write_bytes(big)
    (work / "data").mkdir()
    (work / "data" / "t.parquet").write_bytes(b"PAR1" + os.urandom(1000) + b"PAR1")
    (work / "README.md").write_text("weights\n")
    git("add", ".", cwd=work)
    git("commit", "-m", "large files", cwd=work)
    git("push", "origin", "HEAD:main", cwd=work)

    # git holds pointers; the server's raw endpoint serves the content, with Range.
    with api(live_server, alice) as c:
        tree = c.get("/repos/alice/weights/tree/main", params={"recursive": True}).json()
        entries = {e["path"]: e for e in tree["entries"]}
        model = entries["model.bin"]  # a pointer in git: the tree names the content
        assert model["size"] == len(big) and model["lfs"]["oid"] == hashlib.sha256(big).hexdigest()
        assert model["lfs"]["pointer_size"] < 200 and entries["README.md"]["lfs"] is None
        raw = c.get("/repos/alice/weights/raw/main/model.bin")
        assert raw.status_code == 200 and raw.content == big
        assert raw.headers["etag"] == f'"{hashlib.sha256(big).hexdigest()}"'
        part = c.get("/repos/alice/weights/raw/main/model.bin", headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206 and part.content == big[1000:2000]
        assert part.headers["content-range"] == f"bytes 1000-1999/{len(big)}"
        tail = c.get("/repos/alice/weights/raw/main/data/t.parquet", headers={"Range": "bytes=-4"})
        assert tail.status_code == 206 and tail.content == b"PAR1"

    # A fresh clone smudges the content back.
    clone = tmp_path / "clone"
    git("clone", remote_url(live_server, "/alice/weights", alice), clone)
    assert (clone / "model.bin").read_bytes() == big
    assert git("lfs", "ls-files", cwd=clone).stdout.count("\n") == 2

    # A stranger's clone is refused as git refuses it: the repository does not exist for him.
    denied = git("clone", remote_url(live_server, "/alice/weights", bob), tmp_path / "bob", check=False)
    assert denied.returncode != 0 and "not found" in denied.stderr.lower()


def test_lfs_in_a_public_dataset_clones_anonymously(
    live_server: LiveServer, alice: Account, lfs_home: None, tmp_path: Path
) -> None:
    create_repo(live_server, alice, "cat", kind="dataset")
    work = tmp_path / "work"
    git("clone", remote_url(live_server, "/datasets/alice/cat", alice), work)
    git("lfs", "track", "*.fits", cwd=work)
    data = os.urandom(200_000)
    (work / "sky.fits").write_bytes(data)
    git("add", ".", cwd=work)
    git("commit", "-m", "sky", cwd=work)
    git("push", "origin", "HEAD:main", cwd=work)
    anon = tmp_path / "anon"
    git("clone", remote_url(live_server, "/datasets/alice/cat"), anon)
    assert (anon / "sky.fits").read_bytes() == data
    # The code URL form: git follows the server's redirect to /datasets/, git-lfs asks the URL it was
    # given, and finds the same repository (QA: the checkout failed with "repository not found").
    code_form = tmp_path / "code-form"
    git("clone", remote_url(live_server, "/alice/cat"), code_form)
    assert (code_form / "sky.fits").read_bytes() == data


def test_batch_permissions_follow_git(live_server: LiveServer, alice: Account, bob: Account) -> None:
    create_repo(live_server, alice, "priv", private=True)
    create_repo(live_server, alice, "pub")
    obj = [{"oid": "a" * 64, "size": 3}]
    anon = _batch(live_server, "/alice/priv", "download", obj)
    assert anon.status_code == 401 and "LFS-Authenticate" in anon.headers
    missing = _batch(live_server, "/alice/nothing-here", "download", obj)
    assert missing.status_code == 401 and missing.json()["error"] == anon.json()["error"]
    assert _batch(live_server, "/alice/priv", "download", obj, bob).status_code == 404
    assert _batch(live_server, "/alice/pub", "upload", obj, bob).status_code == 403
    assert _batch(live_server, "/alice/pub", "upload", obj).status_code == 401
    assert _batch(live_server, "/alice/pub", "upload", obj, alice, alice.read_token).status_code == 403
    ok = _batch(live_server, "/alice/pub", "download", obj)
    assert ok.status_code == 200
    assert ok.json()["objects"][0]["error"]["code"] == 404
    assert ok.headers["content-type"].startswith("application/vnd.git-lfs+json")


def test_knowing_an_oid_does_not_give_the_bytes(
    live_server: LiveServer, alice: Account, bob: Account
) -> None:
    create_repo(live_server, alice, "secret", private=True)
    create_repo(live_server, bob, "mine")
    data = b"alice's unpublished result " * 100
    oid = _upload(live_server, "/alice/secret", alice, data)
    # Bob asks his own repository for Alice's object: not there.
    r = _batch(live_server, "/bob/mine", "download", [{"oid": oid, "size": len(data)}], bob)
    assert r.json()["objects"][0]["error"]["code"] == 404
    # Claiming to upload it does not link it: he must send the bytes.
    up = _batch(live_server, "/bob/mine", "upload", [{"oid": oid, "size": len(data)}], bob)
    assert "upload" in up.json()["objects"][0]["actions"]
    # Nor can he commit a pointer to it through the API.
    with api(live_server, bob) as c:
        r = c.post(
            "/repos/bob/mine/commits",
            data={"message": "steal"},
            files=[
                (
                    "files",
                    (
                        "x.bin",
                        f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize "
                        f"{len(data)}\n".encode(),
                    ),
                )
            ],
        )
        assert r.status_code == 201  # a pointer file is just a small file: its content is the pointer
        raw = c.get("/repos/bob/mine/raw/main/x.bin")
        assert raw.content.startswith(b"version https://git-lfs")


def test_signed_links_are_checked(live_server: LiveServer, alice: Account, bob: Account) -> None:
    create_repo(live_server, alice, "links", private=True)
    data = os.urandom(5000)
    oid = hashlib.sha256(data).hexdigest()
    obj = _batch(live_server, "/alice/links", "upload", [{"oid": oid, "size": len(data)}], alice).json()
    href = obj["objects"][0]["actions"]["upload"]["href"]
    forged = href.replace("sig=", "sig=0")
    assert httpx.put(forged, content=data).status_code == 403
    wrong_size = href.replace(f"size={len(data)}", f"size={len(data) + 1}")
    assert httpx.put(wrong_size, content=data + b"x").status_code == 403
    # Wrong content under a valid link: refused, nothing visible.
    bad = httpx.put(href, content=os.urandom(5000))
    assert bad.status_code == 422 and bad.json()["error"] == "digest_mismatch"
    truncated = httpx.put(href, content=data[:100])
    assert truncated.status_code == 422 and truncated.json()["error"] == "size_mismatch"
    assert "has 100 bytes, not the announced 5000" in truncated.json()["message"]
    longer = httpx.put(href, content=data + b"xyz")
    assert longer.status_code == 422 and longer.json()["error"] == "size_mismatch"
    assert re.search(r"has at least 500[1-3] bytes, not the announced 5000", longer.json()["message"])
    verify = obj["objects"][0]["actions"]["verify"]["href"]
    assert httpx.post(verify, json={"oid": oid, "size": len(data)}).status_code == 404
    assert httpx.put(href, content=data).status_code == 200
    assert httpx.post(verify, json={"oid": oid, "size": len(data)}).status_code == 200
    # Downloads: a signed link, or credentials; Range works; a stranger gets nothing.
    down = _batch(live_server, "/alice/links", "download", [{"oid": oid, "size": len(data)}], alice).json()
    link = down["objects"][0]["actions"]["download"]["href"]
    got = httpx.get(link, headers={"Range": "bytes=10-19"})
    assert got.status_code == 206 and got.content == data[10:20]
    direct = f"{live_server.url}/alice/links.git/info/lfs/objects/{oid}"
    assert httpx.get(direct, auth=(alice.name, alice.token)).content == data
    assert httpx.get(direct, auth=(bob.name, bob.token)).status_code == 404
    assert httpx.get(direct).status_code == 401


def test_bad_batch_requests_are_4xx(live_server: LiveServer, alice: Account) -> None:
    create_repo(live_server, alice, "bad")
    url = f"{live_server.url}/alice/bad.git/info/lfs/objects/batch"
    auth = (alice.name, alice.token)
    for body, code in (
        (b"not json", "invalid_json"),
        (b"[]", "invalid_batch"),
        (b'{"operation": "delete", "objects": [{"oid": "a", "size": 1}]}', "invalid_batch"),
        (b'{"operation": "upload", "objects": []}', "invalid_batch"),
        (
            b'{"operation": "upload", "hash_algo": "md5", "objects": [{"oid": "a", "size": 1}]}',
            "unsupported_hash",
        ),
        (
            b'{"operation": "upload", "transfers": ["tus"], "objects": [{"oid": "a", "size": 1}]}',
            "unsupported_transfer",
        ),
    ):
        r = httpx.post(url, content=body, headers=LFS, auth=auth)
        assert r.status_code == 422 and r.json()["error"] == code, (body, r.text)
    r = _batch(
        live_server, "/alice/bad", "upload", [{"oid": "xyz", "size": 1}, {"oid": "b" * 64, "size": -1}], alice
    )
    errors = [o["error"]["code"] for o in r.json()["objects"]]
    assert errors == [422, 422]
    huge = b'{"operation": "upload", "objects": [' + b'{"oid": "a", "size": 1},' * 400_000 + b"{}]}"
    r = httpx.post(url, content=huge, headers=LFS, auth=auth)
    assert r.status_code == 413 and r.json()["error"] == "body_too_large", r.text[:200]


def test_quota_refuses_what_does_not_fit(
    live_server: LiveServer, alice: Account, lfs_home: None, tmp_path: Path
) -> None:
    create_repo(live_server, alice, "small")
    app = live_server.server.config.app
    with app.state.db.session() as session:
        from opensci.accounts.service import get_owner

        quota.set_limit(session, get_owner(session, "alice"), 10_000)
        session.commit()
    data = os.urandom(6000)
    _upload(live_server, "/alice/small", alice, data)
    again = _batch(
        live_server,
        "/alice/small",
        "upload",
        [{"oid": hashlib.sha256(data).hexdigest(), "size": len(data)}],
        alice,
    )
    assert "actions" not in again.json()["objects"][0]  # held: costs nothing more
    more = os.urandom(6000)
    r = _batch(
        live_server,
        "/alice/small",
        "upload",
        [{"oid": hashlib.sha256(more).hexdigest(), "size": len(more)}],
        alice,
    )
    err = r.json()["objects"][0]["error"]
    assert err["code"] == 413 and "quota" in err["message"]
    # git lfs push reports it and nothing is committed on the server.
    work = tmp_path / "w"
    git("clone", remote_url(live_server, "/alice/small", alice), work)
    git("lfs", "track", "*.bin", cwd=work)
    (work / "more.bin").write_bytes(more)
    git("add", ".", cwd=work)
    git("commit", "-m", "too big", cwd=work)
    pushed = git("push", "origin", "HEAD:main", cwd=work, check=False)
    assert pushed.returncode != 0 and "quota" in pushed.stderr


def test_a_push_of_pointers_to_content_never_uploaded_is_refused(
    live_server: LiveServer, alice: Account, tmp_path: Path
) -> None:
    create_repo(live_server, alice, "ptr")
    held = os.urandom(4000)
    held_oid = _upload(live_server, "/alice/ptr", alice, held)
    work = tmp_path / "w"
    git("clone", remote_url(live_server, "/alice/ptr", alice), work)
    ghost = hashlib.sha256(b"never uploaded").hexdigest()
    pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n"
    (work / "ghost.bin").write_text(pointer.format(ghost, 14))
    (work / "real.bin").write_text(pointer.format(held_oid, len(held)))
    git("add", ".", cwd=work)
    git("commit", "-m", "pointers", cwd=work)
    refused = git("push", "origin", "HEAD:main", cwd=work, check=False)
    assert refused.returncode != 0
    assert "ghost.bin" in refused.stderr and "never uploaded" in refused.stderr
    assert "real.bin" not in refused.stderr
    with api(live_server, alice) as c:
        assert c.get("/repos/alice/ptr/refs").json()["branches"] == []  # nothing landed
    # Without the ghost, the pointer to held content is accepted and serves the content.
    git("rm", "-q", "ghost.bin", cwd=work)
    git("commit", "--amend", "-m", "pointer to held content", cwd=work)
    git("push", "origin", "HEAD:main", cwd=work)
    with api(live_server, alice) as c:
        assert c.get("/repos/alice/ptr/raw/main/real.bin").content == held


class _RemoteFile(io.RawIOBase):
    """A seekable file over HTTP Range requests: how remote Parquet readers see a URL."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url, self.headers, self.pos, self.fetched = url, headers, 0, 0
        head = httpx.head(url, headers=headers)
        assert head.headers["accept-ranges"] == "bytes"
        self.size = int(head.headers["content-length"])

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.size - self.pos)
        if n <= 0:
            return 0
        r = httpx.get(self.url, headers={**self.headers, "Range": f"bytes={self.pos}-{self.pos + n - 1}"})
        assert r.status_code == 206
        buffer[: len(r.content)] = r.content
        self.pos += len(r.content)
        self.fetched += len(r.content)
        return len(r.content)


def test_remote_parquet_reads_fetch_only_what_they_need(live_server: LiveServer, alice: Account) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    n = 400_000
    table = pa.table({"ra": [i * 0.001 for i in range(n)], "blob": [os.urandom(16).hex() for _ in range(n)]})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=50_000, compression="none")
    data = sink.getvalue()
    assert len(data) > 10 * 1024 * 1024  # larger than the LFS threshold: stored in the blob store
    create_repo(live_server, alice, "catalog", kind="dataset", private=True)
    with api(live_server, alice) as c:
        r = c.post(
            "/repos/alice/catalog/commits",
            data={"message": "catalog"},
            files=[("files", ("data/catalog.parquet", data))],
        )
        assert r.status_code == 201, r.text
        entry = c.get("/repos/alice/catalog/tree/main/data").json()["entries"][0]
        assert entry["lfs"] is not None
    remote = _RemoteFile(
        f"{live_server.url}/api/v1/repos/alice/catalog/raw/main/data/catalog.parquet", alice.headers
    )
    pf = pq.ParquetFile(remote)
    assert pf.metadata.num_rows == n
    ra = pf.read_row_group(3, columns=["ra"]).column("ra").to_pylist()
    assert ra[0] == pytest.approx(150_000 * 0.001)
    assert remote.fetched < len(data) / 4  # the footer and one column chunk, not the file
