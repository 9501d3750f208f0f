"""Reading a repository through the REST API: history, single commits, trees and raw files."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api_helpers import API, committed, create_repo, error_code
from tests.conftest import Account

REPO = "alice/browse"
HTML = b"<html><script>alert(1)</script></html>\n"


@pytest.fixture
def history(client: TestClient, alice: Account) -> list[str]:
    """Five commits on main (oldest first), two touching data/, and a branch `feature/x` with one more."""
    create_repo(client, alice, "browse")
    shas = [
        committed(client, alice, REPO, {"README.md": "v1\n"}, message="c0 readme"),
        committed(client, alice, REPO, {"data/a.csv": "x\n1\n"}, message="c1 data"),
        committed(client, alice, REPO, {"README.md": "v2\n"}, message="c2 readme again"),
        committed(client, alice, REPO, {"data/sub/b.csv": "y\n2\n", "page.html": HTML}, message="c3 more"),
        committed(client, alice, REPO, {"src/main.py": "print('hi')\n"}, message="c4 code"),
    ]
    committed(client, alice, REPO, {"feature.txt": "on the branch\n"}, message="f0", branch="feature/x")
    return shas


def url(tail: str) -> str:
    return f"{API}/repos/{REPO}/{tail}"


# --- commits -------------------------------------------------------------------------------------------


def test_commits_newest_first(client: TestClient, history: list[str]) -> None:
    r = client.get(url("commits"))
    assert r.status_code == 200
    body = r.json()
    assert [c["id"] for c in body["items"]] == history[::-1]
    assert body["next_page"] is None
    assert body["items"][0]["title"] == "c4 code"
    assert body["items"][0]["parents"] == [history[3]]
    assert body["items"][-1]["parents"] == []


def test_commits_pagination(client: TestClient, history: list[str]) -> None:
    seen: list[str] = []
    page: int | None = 1
    while page is not None:
        body = client.get(url("commits"), params={"per_page": 2, "page": page}).json()
        assert len(body["items"]) <= 2
        seen += [c["id"] for c in body["items"]]
        page = body["next_page"]
    assert seen == history[::-1]
    assert client.get(url("commits"), params={"per_page": 2, "page": 9}).json()["items"] == []
    assert error_code(client.get(url("commits"), params={"page": 0}), 422) == "invalid_input"


def test_commits_filtered_by_path(client: TestClient, history: list[str]) -> None:
    by_path = {
        "data": [history[3], history[1]],
        "data/": [history[3], history[1]],
        "README.md": [history[2], history[0]],
        "data/sub/b.csv": [history[3]],
        "nothing/here": [],
    }
    for path, expected in by_path.items():
        body = client.get(url("commits"), params={"path": path}).json()
        assert [c["id"] for c in body["items"]] == expected, path
    paged = client.get(url("commits"), params={"path": "data", "per_page": 1}).json()
    assert [c["id"] for c in paged["items"]] == [history[3]]
    assert paged["next_page"] == 2


def test_commits_of_a_branch_tag_or_commit(client: TestClient, alice: Account, history: list[str]) -> None:
    branch = client.get(url("commits"), params={"rev": "feature/x"}).json()["items"]
    assert branch[0]["title"] == "f0"
    assert [c["id"] for c in branch[1:]] == history[::-1]
    from_c2 = client.get(url("commits"), params={"rev": history[2]}).json()["items"]
    assert [c["id"] for c in from_c2] == history[2::-1]
    client.post(
        url("refs"), json={"type": "tag", "name": "v1", "revision": history[1]}, headers=alice.headers
    )
    assert [c["id"] for c in client.get(url("commits"), params={"rev": "v1"}).json()["items"]] == history[
        1::-1
    ]


def test_commits_of_an_empty_repo(client: TestClient, alice: Account) -> None:
    create_repo(client, alice, "empty")
    body = client.get(f"{API}/repos/alice/empty/commits").json()
    assert (body["items"], body["next_page"]) == ([], None)
    r = client.get(f"{API}/repos/alice/empty/tree")
    assert error_code(r, 404) == "revision_not_found"


def test_single_commit(client: TestClient, history: list[str]) -> None:
    for rev in (history[1], history[1][:8], "main", "feature/x"):
        r = client.get(url(f"commits/{rev}"))
        assert r.status_code == 200, rev
    assert client.get(url(f"commits/{history[1][:8]}")).json()["id"] == history[1]
    assert client.get(url("commits/main")).json()["id"] == history[4]
    assert client.get(url("commits/feature/x")).status_code == 200


@pytest.mark.parametrize("rev", ["nope", "0" * 40, "deadbeef", "main~1", "HEAD^", "main:README.md", "a..b"])
def test_unknown_or_unsupported_revision_is_404(client: TestClient, history: list[str], rev: str) -> None:
    assert error_code(client.get(url(f"commits/{rev}")), 404) == "revision_not_found"
    assert error_code(client.get(url("commits"), params={"rev": rev}), 404) == "revision_not_found"


# --- trees ---------------------------------------------------------------------------------------------


def entries(r) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    assert r.status_code == 200, r.text
    return [(e["path"], e["type"]) for e in r.json()["entries"]]


def test_tree_at_root_folders_first(client: TestClient, history: list[str]) -> None:
    r = client.get(url("tree"))
    assert r.json()["commit"] == history[4]
    assert r.json()["path"] == ""
    assert entries(r) == [
        ("data", "dir"),
        ("src", "dir"),
        ("README.md", "file"),
        ("page.html", "file"),
    ]
    readme = next(e for e in r.json()["entries"] if e["name"] == "README.md")
    assert readme["size"] == 3
    assert entries(client.get(url("tree/main"))) == entries(r)


def test_tree_of_a_subfolder_and_recursive(client: TestClient, history: list[str]) -> None:
    assert entries(client.get(url("tree/main/data"))) == [("data/sub", "dir"), ("data/a.csv", "file")]
    assert entries(client.get(url("tree/main/data/sub"))) == [("data/sub/b.csv", "file")]
    rec = entries(client.get(url("tree/main/data"), params={"recursive": True}))
    assert set(rec) == {("data/sub", "dir"), ("data/sub/b.csv", "file"), ("data/a.csv", "file")}
    full = entries(client.get(url("tree"), params={"recursive": True}))
    assert {p for p, t in full if t == "file"} == {
        "README.md",
        "page.html",
        "data/a.csv",
        "data/sub/b.csv",
        "src/main.py",
    }


def test_tree_at_a_branch_with_a_slash_and_at_a_commit(client: TestClient, history: list[str]) -> None:
    assert ("feature.txt", "file") in entries(client.get(url("tree/feature/x")))
    assert entries(client.get(url("tree/feature/x/data"))) == [("data/sub", "dir"), ("data/a.csv", "file")]
    old = entries(client.get(url(f"tree/{history[1]}")))
    assert old == [("data", "dir"), ("README.md", "file")]
    assert entries(client.get(url(f"tree/{history[1][:7]}/data"))) == [("data/a.csv", "file")]


def test_tree_errors(client: TestClient, history: list[str]) -> None:
    assert error_code(client.get(url("tree/nope")), 404) == "revision_not_found"
    assert error_code(client.get(url("tree/main/nope")), 404) == "entry_not_found"
    assert error_code(client.get(url("tree/main/README.md")), 422) == "not_a_folder"
    assert error_code(client.get(f"{API}/repos/alice/nothing/tree"), 404) == "repo_not_found"


# --- raw files -----------------------------------------------------------------------------------------


def test_raw_file_with_etag_and_revision_header(client: TestClient, history: list[str]) -> None:
    r = client.get(url("raw/main/README.md"))
    assert r.status_code == 200
    assert r.content == b"v2\n"
    assert r.headers["content-length"] == "3"
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["x-repo-commit"] == history[4]
    assert r.headers["x-content-type-options"] == "nosniff"
    etag = r.headers["etag"]
    assert etag.startswith('"') and len(etag) == 42

    again = client.get(url("raw/main/README.md"), headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    changed = client.get(url(f"raw/{history[0]}/README.md"), headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.content == b"v1\n"


def test_raw_at_a_branch_with_a_slash(client: TestClient, history: list[str]) -> None:
    assert client.get(url("raw/feature/x/feature.txt")).content == b"on the branch\n"
    assert client.get(url("raw/feature/x/data/sub/b.csv")).content == b"y\n2\n"
    assert error_code(client.get(url("raw/main/feature.txt")), 404) == "entry_not_found"


def test_raw_head_has_headers_and_no_body(client: TestClient, history: list[str]) -> None:
    r = client.head(url("raw/main/data/a.csv"))
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-length"] == "4"
    assert r.headers["etag"] == client.get(url("raw/main/data/a.csv")).headers["etag"]


def test_raw_ranges(client: TestClient, alice: Account, history: list[str]) -> None:
    committed(client, alice, REPO, {"digits.txt": "0123456789"})
    path = url("raw/main/digits.txt")
    cases = {
        "bytes=0-3": (b"0123", "bytes 0-3/10"),
        "bytes=4-": (b"456789", "bytes 4-9/10"),
        "bytes=-3": (b"789", "bytes 7-9/10"),
        "bytes=8-100": (b"89", "bytes 8-9/10"),
        "bytes=-50": (b"0123456789", "bytes 0-9/10"),
    }
    for header, (body, content_range) in cases.items():
        r = client.get(path, headers={"Range": header})
        assert r.status_code == 206, header
        assert r.content == body, header
        assert r.headers["content-range"] == content_range
        assert r.headers["content-length"] == str(len(body))
    head = client.head(path, headers={"Range": "bytes=2-4"})
    assert (head.status_code, head.headers["content-range"], head.content) == (206, "bytes 2-4/10", b"")
    # Unusable headers are ignored: the whole file.
    for ignored in ("bytes=0-1,4-5", "items=0-1", "bytes=x-y", "bytes=5-2"):
        r = client.get(path, headers={"Range": ignored})
        assert (r.status_code, r.content) == (200, b"0123456789"), ignored


def test_if_range_serves_a_range_only_of_the_same_version(
    client: TestClient, alice: Account, history: list[str]
) -> None:
    """The QA repro: a resumed download naming an older version (another ETag, or a date) gets the whole
    current file, never a range of it spliced onto the old bytes."""
    committed(client, alice, REPO, {"digits.txt": "0123456789"})
    path = url("raw/main/digits.txt")
    etag = client.get(path).headers["etag"]
    same = client.get(path, headers={"Range": "bytes=5-", "If-Range": etag})
    assert (same.status_code, same.content) == (206, b"56789")
    for other in ('"wrong"', f"W/{etag}", "Sun, 06 Dec 2026 08:00:00 GMT"):
        r = client.get(path, headers={"Range": "bytes=5-", "If-Range": other})
        assert (r.status_code, r.content) == (200, b"0123456789"), other
        assert "content-range" not in r.headers


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=10-20", "bytes=-0"])
def test_raw_range_outside_the_file_is_416(
    client: TestClient, alice: Account, history: list[str], header: str
) -> None:
    committed(client, alice, REPO, {"digits.txt": "0123456789"})
    r = client.get(url("raw/main/digits.txt"), headers={"Range": header})
    assert error_code(r, 416) == "range_not_satisfiable"
    assert r.headers["content-range"] == "bytes */10"


def test_ranges_of_an_empty_file(client: TestClient, alice: Account, history: list[str]) -> None:
    committed(client, alice, REPO, {"empty.txt": b""})
    path = url("raw/main/empty.txt")
    r = client.get(path)
    assert (r.status_code, r.content, r.headers["content-length"]) == (200, b"", "0")
    for header in ("bytes=0-", "bytes=-5", "bytes=0-0"):
        r = client.get(path, headers={"Range": header})
        assert error_code(r, 416) == "range_not_satisfiable", header
        assert r.headers["content-range"] == "bytes */0"


def test_html_is_served_as_plain_text_and_svg_runs_no_script(
    client: TestClient, alice: Account, history: list[str]
) -> None:
    committed(client, alice, REPO, {"pic.svg": "<svg onload='alert(1)'/>", "data.json": "{}"})
    for path, media in (("page.html", "text/plain; charset=utf-8"), ("pic.svg", "image/svg+xml")):
        r = client.get(url(f"raw/main/{path}"))
        assert r.status_code == 200
        assert r.headers["content-type"] == media, path
        assert r.headers["x-content-type-options"] == "nosniff"
        policy = [d.strip() for d in r.headers["content-security-policy"].split(";")]
        assert "sandbox" in policy and "default-src 'none'" in policy
        assert not any(d.startswith("script-src") for d in policy)
    assert client.get(url("raw/main/page.html")).content == HTML
    assert client.get(url("raw/main/data.json")).headers["content-type"] == "application/json"


def test_raw_errors(client: TestClient, history: list[str]) -> None:
    assert error_code(client.get(url("raw/nope/README.md")), 404) == "revision_not_found"
    assert error_code(client.get(url("raw/main/nope.txt")), 404) == "entry_not_found"
    assert error_code(client.get(url("raw/main/data")), 422) == "not_a_file"
    assert error_code(client.get(url("raw/main")), 404) == "entry_not_found"
    assert client.head(url("raw/main/nope.txt")).status_code == 404


def test_private_raw_is_not_publicly_cacheable(
    client: TestClient, alice: Account, history: list[str]
) -> None:
    assert client.get(url("raw/main/README.md")).headers["cache-control"].startswith("public")
    client.patch(f"{API}/repos/{REPO}", json={"private": True}, headers=alice.headers)
    r = client.get(url("raw/main/README.md"), headers=alice.headers)
    assert r.headers["cache-control"].startswith("private")
    assert error_code(client.get(url("raw/main/README.md")), 404) == "repo_not_found"
