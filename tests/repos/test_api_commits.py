"""POST /repos/{owner}/{name}/commits: one atomic multipart commit, and every way to get it refused
without touching the branch."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opensci.app import create_app
from opensci.settings import Settings
from tests.api_helpers import API, commit, committed, create_repo, error_code, heads, tree_paths
from tests.conftest import Account

REPO = "alice/work"


@pytest.fixture
def repo(client: TestClient, alice: Account) -> str:
    """alice/work with one commit: README.md and src/pkg/{a,b}.py."""
    create_repo(client, alice, "work")
    committed(
        client,
        alice,
        REPO,
        {"README.md": "# work\n", "src/pkg/a.py": "A = 1\n", "src/pkg/b.py": "B = 2\n"},
        message="initial",
    )
    return REPO


def raw(client: TestClient, path: str, rev: str = "main") -> bytes:
    r = client.get(f"{API}/repos/{REPO}/raw/{rev}/{path}")
    assert r.status_code == 200, r.text
    return r.content


def multipart(client: TestClient, who: Account, parts: list[tuple[bytes, bytes]]):  # type: ignore[no-untyped-def]
    """A hand-made multipart body, for what httpx would escape (NUL bytes in a filename)."""
    boundary = b"opensci-test-boundary"
    body = b""
    for disposition, content in parts:
        body += b"--" + boundary + b"\r\nContent-Disposition: form-data; " + disposition + b"\r\n\r\n"
        body += content + b"\r\n"
    body += b"--" + boundary + b"--\r\n"
    headers = {**who.headers, "Content-Type": "multipart/form-data; boundary=" + boundary.decode()}
    return client.post(f"{API}/repos/{REPO}/commits", content=body, headers=headers)


# --- what a commit can do ------------------------------------------------------------------------------


def test_first_commit_into_an_empty_repo(client: TestClient, alice: Account) -> None:
    create_repo(client, alice, "empty")
    r = commit(client, alice, "alice/empty", {"deep/nested/path/file.txt": "x"}, message="first")
    assert r.status_code == 201, r.text
    assert r.json()["parent"] is None
    assert r.json()["branch"] == "main"
    assert heads(client, alice, "alice/empty") == {"main": r.json()["commit"]}
    assert tree_paths(client, alice, "alice/empty") == {"deep/nested/path/file.txt"}


def test_multiple_files_with_nested_paths_in_one_commit(
    client: TestClient, alice: Account, repo: str
) -> None:
    before = heads(client, alice, repo)["main"]
    r = commit(
        client,
        alice,
        repo,
        {"src/pkg/c.py": "C = 3\n", "data/raw/2024/01.csv": b"\x00\x01binary", "top.txt": "top"},
        message="add three\n\nwith a body",
    )
    assert r.status_code == 201, r.text
    assert r.json()["parent"] == before
    assert tree_paths(client, alice, repo) == {
        "README.md",
        "src/pkg/a.py",
        "src/pkg/b.py",
        "src/pkg/c.py",
        "data/raw/2024/01.csv",
        "top.txt",
    }
    assert raw(client, "data/raw/2024/01.csv") == b"\x00\x01binary"
    info = client.get(f"{API}/repos/{repo}/commits/{r.json()['commit']}").json()
    assert info["title"] == "add three"
    assert info["message"] == "add three\n\nwith a body\n"
    assert info["parents"] == [before]
    assert info["author"] == {"name": "alice", "email": "alice@example.org"}


def test_overwrite_a_file(client: TestClient, alice: Account, repo: str) -> None:
    committed(client, alice, repo, {"src/pkg/a.py": "A = 42\n"})
    assert raw(client, "src/pkg/a.py") == b"A = 42\n"


def test_delete_a_file_and_a_whole_folder(client: TestClient, alice: Account, repo: str) -> None:
    committed(client, alice, repo, {"docs/x.md": "x", "docs/sub/y.md": "y"})
    r = commit(client, alice, repo, delete=["README.md"], message="drop readme")
    assert r.status_code == 201, r.text
    assert tree_paths(client, alice, repo) == {"src/pkg/a.py", "src/pkg/b.py", "docs/x.md", "docs/sub/y.md"}

    r = commit(client, alice, repo, delete=["src"], message="drop src")
    assert r.status_code == 201, r.text
    assert tree_paths(client, alice, repo) == {"docs/x.md", "docs/sub/y.md"}
    assert error_code(client.get(f"{API}/repos/{repo}/tree/main/src"), 404) == "entry_not_found"

    # Deleting the last file of a folder removes the folder.
    committed(client, alice, repo, {}, delete=["docs/sub/y.md"])
    entries = client.get(f"{API}/repos/{repo}/tree/main/docs").json()["entries"]
    assert [e["path"] for e in entries] == ["docs/x.md"]


def test_add_and_delete_in_one_commit(client: TestClient, alice: Account, repo: str) -> None:
    r = commit(client, alice, repo, {"NEWS.md": "news"}, delete=["README.md", "src/pkg/b.py"])
    assert r.status_code == 201, r.text
    assert tree_paths(client, alice, repo) == {"NEWS.md", "src/pkg/a.py"}


def test_deleting_a_missing_path_is_404_and_no_commit(client: TestClient, alice: Account, repo: str) -> None:
    before = heads(client, alice, repo)
    r = commit(client, alice, repo, {"ok.txt": "fine"}, delete=["no/such/file"])
    assert error_code(r, 404) == "entry_not_found"
    assert heads(client, alice, repo) == before


def test_branch_creates_a_new_branch_from_the_default(client: TestClient, alice: Account, repo: str) -> None:
    main = heads(client, alice, repo)["main"]
    r = commit(client, alice, repo, {"feature.txt": "f"}, branch="feature/new")
    assert r.status_code == 201, r.text
    assert r.json()["branch"] == "feature/new"
    assert r.json()["parent"] == main
    assert heads(client, alice, repo) == {"main": main, "feature/new": r.json()["commit"]}
    assert tree_paths(client, alice, repo, "feature/new") == {
        "README.md",
        "src/pkg/a.py",
        "src/pkg/b.py",
        "feature.txt",
    }
    assert "feature.txt" not in tree_paths(client, alice, repo, "main")
    # The next commit to the branch builds on it.
    tip = heads(client, alice, repo)["feature/new"]
    r = commit(client, alice, repo, {"feature2.txt": "g"}, branch="feature/new")
    assert r.status_code == 201, r.text
    assert r.json()["parent"] == tip
    assert {"feature.txt", "feature2.txt"} <= tree_paths(client, alice, repo, "feature/new")


def test_branch_with_parent_commit_starts_there(client: TestClient, alice: Account, repo: str) -> None:
    first = heads(client, alice, repo)["main"]
    committed(client, alice, repo, {"later.txt": "on main only"})
    r = commit(client, alice, repo, {"fix.txt": "fix"}, branch="hotfix", parent=first)
    assert r.status_code == 201, r.text
    assert r.json()["parent"] == first
    assert tree_paths(client, alice, repo, "hotfix") == {
        "README.md",
        "src/pkg/a.py",
        "src/pkg/b.py",
        "fix.txt",
    }
    info = client.get(f"{API}/repos/{repo}/commits/{r.json()['commit']}").json()
    assert info["parents"] == [first]


def test_parent_commit_equal_to_head_is_accepted(client: TestClient, alice: Account, repo: str) -> None:
    head = heads(client, alice, repo)["main"]
    r = commit(client, alice, repo, {"n.txt": "1"}, parent=head)
    assert r.status_code == 201, r.text
    assert r.json()["parent"] == head
    # An abbreviated id names the same commit.
    new_head = r.json()["commit"]
    assert commit(client, alice, repo, {"n.txt": "2"}, parent=new_head[:10]).status_code == 201


def test_stale_parent_commit_is_409_and_the_branch_is_unchanged(
    client: TestClient, alice: Account, repo: str
) -> None:
    stale = heads(client, alice, repo)["main"]
    current = committed(client, alice, repo, {"n.txt": "1"})
    r = commit(client, alice, repo, {"n.txt": "conflicting"}, parent=stale)
    assert error_code(r, 409) == "stale_parent"
    assert heads(client, alice, repo)["main"] == current
    assert raw(client, "n.txt") == b"1"
    r = commit(client, alice, repo, {"n.txt": "x"}, parent="0" * 40)
    assert error_code(r, 409) == "stale_parent"
    assert heads(client, alice, repo)["main"] == current


@pytest.mark.parametrize(
    "path",
    [
        "../escape.txt",
        "a/../../escape.txt",
        "a/./b.txt",
        "/etc/passwd",
        "C:/windows.txt",
        ".git/config",
        "sub/.git/hooks/pre-receive",
        "sub/.GIT/x",
        "back\\slash.txt",
        "double//slash.txt",
        "trailing/",
        "/".join(["d"] * 2000) + "/deeper-than-python-recursion.txt",
    ],
)
def test_invalid_paths_are_refused_without_a_commit(
    client: TestClient, alice: Account, repo: str, path: str
) -> None:
    before = heads(client, alice, repo)
    r = commit(client, alice, repo, {path: "evil", "innocent.txt": "ok"})
    assert error_code(r, 422) == "invalid_path"
    r = commit(client, alice, repo, {"innocent.txt": "ok"}, delete=[path])
    assert error_code(r, 422) == "invalid_path"
    assert heads(client, alice, repo) == before


def test_nul_byte_and_empty_paths_are_refused_without_a_commit(
    client: TestClient, alice: Account, repo: str
) -> None:
    before = heads(client, alice, repo)
    r = multipart(client, alice, [(b'name="message"', b"m"), (b'name="files"; filename="nul\x00.txt"', b"x")])
    assert error_code(r, 422) == "invalid_path"
    r = multipart(client, alice, [(b'name="message"', b"m"), (b'name="files"; filename=""', b"x")])
    assert r.status_code == 422
    error_code(r, 422)
    assert error_code(commit(client, alice, repo, {"ok.txt": "1"}, delete=["a\x00b"]), 422) == "invalid_path"
    assert error_code(commit(client, alice, repo, {"ok.txt": "1"}, delete=[""]), 422) == "invalid_path"
    assert heads(client, alice, repo) == before


def test_duplicate_paths_are_refused_without_a_commit(client: TestClient, alice: Account, repo: str) -> None:
    before = heads(client, alice, repo)
    parts = [
        (b'name="message"', b"m"),
        (b'name="files"; filename="dup.txt"', b"one"),
        (b'name="files"; filename="dup.txt"', b"two"),
    ]
    assert error_code(multipart(client, alice, parts), 422) == "duplicate_path"
    r = commit(client, alice, repo, {"README.md": "new"}, delete=["README.md"])
    assert error_code(r, 422) == "duplicate_path"
    assert heads(client, alice, repo) == before


@pytest.mark.parametrize(
    ("files", "delete", "status"),
    [
        ({"src": "a file where a folder is"}, [], 409),
        ({"src/pkg": "a file where a folder is"}, [], 409),
        ({"README.md/inside.txt": "a folder where a file is"}, [], 409),
        ({"src/pkg/a.py/deeper/x": "under a file"}, [], 409),
        ({"new": "file", "new/child.txt": "and folder"}, [], 422),
    ],
)
def test_file_folder_conflicts_are_refused_without_a_commit(
    client: TestClient, alice: Account, repo: str, files: dict[str, str], delete: list[str], status: int
) -> None:
    before = heads(client, alice, repo)
    r = commit(client, alice, repo, files, delete=delete)
    assert error_code(r, status) == "path_conflict"
    assert heads(client, alice, repo) == before
    assert tree_paths(client, alice, repo) == {"README.md", "src/pkg/a.py", "src/pkg/b.py"}


def test_replacing_a_file_by_a_folder_in_one_commit(client: TestClient, alice: Account, repo: str) -> None:
    r = commit(client, alice, repo, {"README.md/index.md": "now a folder"}, delete=["README.md"])
    assert r.status_code == 201, r.text
    assert tree_paths(client, alice, repo) == {"README.md/index.md", "src/pkg/a.py", "src/pkg/b.py"}


@pytest.mark.parametrize("message", ["", "   ", "\n\n"])
def test_empty_message_is_422_and_no_commit(
    client: TestClient, alice: Account, repo: str, message: str
) -> None:
    before = heads(client, alice, repo)
    assert error_code(commit(client, alice, repo, {"a.txt": "a"}, message=message), 422) == "invalid_message"
    assert heads(client, alice, repo) == before


def test_a_commit_without_changes_is_422(client: TestClient, alice: Account, repo: str) -> None:
    before = heads(client, alice, repo)
    assert error_code(commit(client, alice, repo, {}), 422) == "empty_commit"
    assert heads(client, alice, repo) == before


@pytest.mark.parametrize("branch", ["bad..branch", "a b", "with~tilde", "end.lock", "x" * 201])
def test_invalid_branch_is_422_and_no_new_ref(
    client: TestClient, alice: Account, repo: str, branch: str
) -> None:
    before = heads(client, alice, repo)
    assert error_code(commit(client, alice, repo, {"a.txt": "a"}, branch=branch), 422) == "invalid_ref"
    assert heads(client, alice, repo) == before


def test_unexpected_form_fields_are_422(client: TestClient, alice: Account, repo: str) -> None:
    before = heads(client, alice, repo)
    r = client.post(
        f"{API}/repos/{repo}/commits",
        data={"message": "m", "surprise": "1"},
        files=[("files", ("a.txt", b"a"))],
        headers=alice.headers,
    )
    assert error_code(r, 422) == "invalid_form"
    r = client.post(
        f"{API}/repos/{repo}/commits",
        data={"message": "m"},
        files=[("upload", ("a.txt", b"a"))],
        headers=alice.headers,
    )
    assert error_code(r, 422) == "invalid_form"
    assert heads(client, alice, repo) == before


def test_commit_permissions(client: TestClient, alice: Account, bob: Account, repo: str) -> None:
    before = heads(client, alice, repo)
    assert error_code(commit(client, None, repo, {"x": "x"}), 401) == "login_required"
    assert error_code(commit(client, bob, repo, {"x": "x"}), 403) == "forbidden"
    assert error_code(commit(client, alice.read_headers, repo, {"x": "x"}), 403) == "insufficient_scope"
    client.patch(f"{API}/repos/{repo}", json={"private": True}, headers=alice.headers)
    assert error_code(commit(client, bob, repo, {"x": "x"}), 404) == "repo_not_found"
    assert heads(client, alice, repo) == before


# --- size limit ----------------------------------------------------------------------------------------


@pytest.fixture
def small_app(settings: Settings) -> Iterator[FastAPI]:
    """A second app on the same home and database, accepting bodies of at most 2 KiB."""
    small = settings.model_copy(update={"max_upload_bytes": 2048})
    application = create_app(small)
    yield application
    application.state.db.dispose()


def test_oversize_body_is_413_and_no_commit(
    small_app: FastAPI, client: TestClient, alice: Account, repo: str
) -> None:
    before = heads(client, alice, repo)
    with TestClient(small_app, raise_server_exceptions=False) as small:
        assert commit(small, alice, repo, {"small.txt": "fits"}).status_code == 201
        before = heads(client, alice, repo)

        r = commit(small, alice, repo, {"big.bin": b"\x00" * 10_000})
        assert error_code(r, 413) == "payload_too_large"
        assert heads(client, alice, repo) == before

        # Without a Content-Length (a chunked upload), the limit is enforced while reading.
        boundary = "opensci-chunked"
        payload = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="message"\r\n\r\nbig\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.bin"\r\n\r\n'
            ).encode()
            + b"x" * 10_000
            + f"\r\n--{boundary}--\r\n".encode()
        )

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(payload), 1000):
                yield payload[i : i + 1000]

        r = small.post(
            f"{API}/repos/{repo}/commits",
            content=chunks(),
            headers={**alice.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert "content-length" not in {k.lower() for k in r.request.headers}
        assert error_code(r, 413) == "payload_too_large"
        assert heads(client, alice, repo) == before
    assert "big.bin" not in tree_paths(client, alice, repo)


def test_a_display_name_with_angle_brackets_or_line_breaks_still_commits(
    client: TestClient, alice: Account, repo: str
) -> None:
    """Git signatures cannot hold '<', '>' or newlines; a profile may. The commit still lands, cleanly."""
    r = client.patch(
        f"{API}/user",
        json={"display_name": 'Alice "><svg onload=alert(1)>\nSmith', "email": "a<b>@example.org"},
        headers=alice.headers,
    )
    assert r.status_code == 200, r.text
    r = commit(client, alice, repo, {"notes.txt": "x"}, message="signed")
    assert r.status_code == 201, r.text
    c = client.get(f"{API}/repos/{repo}/commits/{r.json()['commit']}").json()
    assert c["author"] == {"name": 'Alice " svg onload=alert(1) Smith', "email": "ab@example.org"}
