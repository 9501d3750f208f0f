"""The reading pages of a repository: home, folders, files, history, one commit, branches."""

from __future__ import annotations

from collections.abc import Callable

import pygit2
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pygit2.enums import FileMode

from tests.conftest import Account
from tests.web.conftest import RepoRef

README = """# Star catalog

A *small* catalog.

| star | mag |
|------|-----|
| Vega | 0.03 |

See [the guide](docs/guide.md), [the root](/LICENSE) and [section](#usage).

![plot](img/plot.png)
"""


def test_repo_home_shows_header_files_readme_and_clone_instructions(
    web: TestClient, alice: Account, make_repo: Callable[..., RepoRef]
) -> None:
    ref = make_repo(
        alice,
        "stars",
        description="Bright stars",
        license="CC-BY-4.0",
        tags=["astronomy", "catalog"],
        files={"README.md": README, "docs/guide.md": "# Guide\n", "data.csv": "a,b\n1,2\n"},
    )
    r = web.get(ref.url)
    assert r.status_code == 200
    html = r.text
    assert "Bright stars" in html and "CC-BY-4.0" in html and "astronomy" in html
    assert 'class="badge kind-code"' in html and ">public<" in html
    # root listing, folders first
    assert html.index(">docs</a>") < html.index(">data.csv</a>")
    assert 'href="/alice/stars/tree/main/docs"' in html
    assert 'href="/alice/stars/blob/main/data.csv"' in html
    # README rendered with its table; relative links and images rewritten
    assert "<h1>Star catalog</h1>" in html and "<em>small</em>" in html
    assert "<table>" in html and "<td>Vega</td>" in html
    assert 'href="/alice/stars/blob/main/docs/guide.md"' in html
    assert 'href="/alice/stars/blob/main/LICENSE"' in html
    assert 'href="#usage"' in html
    assert 'src="/api/v1/repos/alice/stars/raw/main/img/plot.png"' in html
    # clone instructions with the server's base URL
    assert "git clone http://testserver/alice/stars.git" in html
    assert "access token" in html
    # the branch selector lists the branch
    assert "branch:" in html


def test_empty_repository_shows_push_instructions_to_writers_only(
    web: TestClient,
    alice: Account,
    make_repo: Callable[..., RepoRef],
    logged_in: Callable[[Account], TestClient],
) -> None:
    ref = make_repo(alice, "blank")
    anonymous = web.get(ref.url)
    assert anonymous.status_code == 200
    assert "This repository is empty" in anonymous.text
    assert "git push" not in anonymous.text
    owner = logged_in(alice).get(ref.url)
    assert "git remote add origin http://testserver/alice/blank.git" in owner.text
    assert "git push -u origin main" in owner.text
    # the other pages of an empty repository work too
    assert web.get(f"{ref.url}/commits").status_code == 200
    assert "No commits" in web.get(f"{ref.url}/commits").text
    assert web.get(f"{ref.url}/branches").status_code == 200


def test_dataset_pages_live_under_datasets(
    web: TestClient, alice: Account, make_repo: Callable[..., RepoRef]
) -> None:
    data = make_repo(alice, "survey", kind="dataset", files={"a.csv": "x\n1\n"})
    code = make_repo(alice, "pipeline", files={"run.py": "print(1)\n"})
    assert data.url == "/datasets/alice/survey"
    r = web.get("/alice/survey")
    assert r.status_code in (301, 302) and r.headers["location"] == "/datasets/alice/survey"
    r = web.get("/alice/survey/blob/main/a.csv?plain=1")
    assert r.headers["location"] == "/datasets/alice/survey/blob/main/a.csv?plain=1"
    page = web.get("/datasets/alice/survey")
    assert page.status_code == 200 and 'class="badge kind-dataset"' in page.text
    assert 'href="/datasets/alice/survey/blob/main/a.csv"' in page.text
    assert "git clone http://testserver/datasets/alice/survey.git" in page.text
    assert web.get("/datasets/alice/survey/blob/main/a.csv").status_code == 200
    # a code repository is not found under /datasets
    assert code.url == "/alice/pipeline"
    for path in ("", "/tree/main", "/blob/main/run.py", "/commits", "/branches"):
        assert web.get(f"/datasets/alice/pipeline{path}").status_code == 404, path
    # a dataset whose name is also a page word is still reached under /datasets
    make_repo(alice, "tree", kind="dataset", files={"blob/x.txt": "x"})
    r = web.get("/datasets/alice/tree/blob/main/blob/x.txt")
    assert r.status_code == 200 and "x.txt" in r.text


def test_model_repositories_use_the_plain_address(
    web: TestClient, alice: Account, make_repo: Callable[..., RepoRef]
) -> None:
    ref = make_repo(alice, "net", kind="model", files={"README.md": "# Net\n"})
    assert ref.url == "/alice/net"
    r = web.get("/alice/net")
    assert r.status_code == 200 and 'class="badge kind-model"' in r.text
    assert web.get("/datasets/alice/net").status_code == 404


def test_folder_listing_has_breadcrumbs_parent_link_and_its_readme(
    web: TestClient, alice: Account, make_repo: Callable[..., RepoRef]
) -> None:
    ref = make_repo(
        alice,
        "deep",
        files={"src/pkg/mod.py": "x = 1\n", "src/pkg/README.md": "Read **me** [up](../notes.txt)\n"},
    )
    r = web.get(f"{ref.url}/tree/main/src/pkg")
    assert r.status_code == 200
    html = r.text
    assert 'href="/alice/deep/tree/main">deep</a>' in html
    assert 'href="/alice/deep/tree/main/src">src</a>' in html
    assert "<strong>pkg</strong>" in html
    assert 'href="/alice/deep/tree/main/src" aria-label="Parent folder"' in html
    assert 'href="/alice/deep/blob/main/src/pkg/mod.py"' in html
    assert "<strong>me</strong>" in html
    assert 'href="/alice/deep/blob/main/src/notes.txt"' in html
    # a file asked for as a folder, and a folder asked for as a file, are redirected
    assert web.get(f"{ref.url}/tree/main/src/pkg/mod.py").headers["location"] == (
        "/alice/deep/blob/main/src/pkg/mod.py"
    )
    assert web.get(f"{ref.url}/blob/main/src").headers["location"] == "/alice/deep/tree/main/src"
    assert web.get(f"{ref.url}/tree/main/nothing-here").status_code == 404
    assert web.get(f"{ref.url}/tree/no-such-branch").status_code == 404


def test_file_view_highlights_with_line_numbers_and_links_raw(
    web: TestClient, alice: Account, make_repo: Callable[..., RepoRef]
) -> None:
    code = 'def mean(xs):\n    """Average."""\n    return sum(xs) / len(xs)\n'
    ref = make_repo(alice, "calc", files={"calc/stats.py": code})
    r = web.get(f"{ref.url}/blob/main/calc/stats.py")
    assert r.status_code == 200
    html = r.text
    assert 'class="highlight"' in html and 'class="k">def</span>' in html
    assert 'href="#L-3"' in html and "3 lines" in html
    raw = "/api/v1/repos/alice/calc/raw/main/calc/stats.py"
    assert f'href="{raw}"' in html and f'href="{raw}" download="stats.py"' in html
    assert web.get(raw).text == code
    assert 'href="/alice/calc/commits/main?path=calc/stats.py"' in html


def test_markdown_files_are_rendered_with_a_source_view(
    web: TestClient, alice: Account, make_repo: Callable[..., RepoRef]
) -> None:
    ref = make_repo(alice, "docs", files={"guide/intro.md": "# Intro\n\n[next](part2.md)\n"})
    r = web.get(f"{ref.url}/blob/main/guide/intro.md")
    assert "<h1>Intro</h1>" in r.text
    assert 'href="/alice/docs/blob/main/guide/part2.md"' in r.text
    source = web.get(f"{ref.url}/blob/main/guide/intro.md?plain=1")
    assert "<h1>Intro</h1>" not in source.text and "# Intro" in source.text and 'href="#L-1"' in source.text


def test_binary_and_large_files_are_not_rendered(
    web: TestClient, alice: Account, make_repo: Callable[..., RepoRef]
) -> None:
    big = ("x = 1\n" * 200_000).encode()  # 1.2 MB
    ref = make_repo(
        alice,
        "blobs",
        files={
            "data.bin": bytes(range(256)) * 10,
            "big.py": big,
            "plot.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 64,
        },
    )
    binary = web.get(f"{ref.url}/blob/main/data.bin")
    assert binary.status_code == 200 and "Binary file not shown" in binary.text
    large = web.get(f"{ref.url}/blob/main/big.py")
    assert large.status_code == 200 and "too large to display" in large.text
    assert 'class="k"' not in large.text and len(large.text) < 50_000
    image = web.get(f"{ref.url}/blob/main/plot.png")
    assert '<img src="/api/v1/repos/alice/blobs/raw/main/plot.png"' in image.text


def test_revisions_with_slashes_tags_and_commit_ids(
    web: TestClient,
    alice: Account,
    make_repo: Callable[..., RepoRef],
    commit: Callable[..., str],
) -> None:
    ref = make_repo(alice, "revs", files={"a.txt": "main version\n"})
    sha = commit(alice, ref, {"a.txt": "feature version\n", "src/b.txt": "b\n"}, branch="feature/x")
    r = web.get(f"{ref.url}/blob/feature/x/a.txt")
    assert r.status_code == 200 and "feature version" in r.text
    assert "<strong>feature/x</strong>" in r.text  # the selector shows the branch
    assert web.get(f"{ref.url}/tree/feature/x/src").status_code == 200
    assert "b.txt" in web.get(f"{ref.url}/tree/feature/x/src").text
    assert "main version" in web.get(f"{ref.url}/blob/main/a.txt").text
    assert "feature version" in web.get(f"{ref.url}/blob/{sha[:10]}/a.txt").text
    # the selector links the same file on the other branches
    assert 'href="/alice/revs/blob/main/a.txt"' in r.text


def test_history_is_paginated_and_filtered_by_path(
    web: TestClient, alice: Account, make_repo: Callable[..., RepoRef], commit: Callable[..., str]
) -> None:
    ref = make_repo(alice, "hist", files={"log.txt": "0\n", "other.txt": "o\n"}, message="First commit")
    for i in range(1, 33):
        commit(alice, ref, {"log.txt": f"{i}\n"}, message=f"Step {i}")
    commit(alice, ref, {"other.txt": "changed\n"}, message="Touch other")
    first = web.get(f"{ref.url}/commits")
    assert first.status_code == 200
    assert "Touch other" in first.text and "Step 32" in first.text and "Step 3<" not in first.text
    assert "Older →" in first.text
    second = web.get(f"{ref.url}/commits?page=2")
    assert "Step 3<" in second.text and "First commit" in second.text and "← Newer" in second.text
    filtered = web.get(f"{ref.url}/commits/main?path=other.txt")
    assert "Touch other" in filtered.text and "First commit" in filtered.text
    assert "Step 1<" not in filtered.text and "Older →" not in filtered.text
    assert web.get(f"{ref.url}/commits/nope").status_code == 404


def test_commit_page_shows_changed_files_and_a_highlighted_diff(
    web: TestClient, alice: Account, make_repo: Callable[..., RepoRef], commit: Callable[..., str]
) -> None:
    ref = make_repo(alice, "diffs", files={"a.py": "x = 1\ny = 2\n", "gone.txt": "bye\n"}, message="Root")
    sha = commit(
        alice,
        ref,
        {"a.py": "x = 1\ny = 3\n", "gone.txt": None, "new.txt": "hello\n"},
        message="Change things\n\nA longer explanation.",
    )
    r = web.get(f"{ref.url}/commit/{sha}")
    assert r.status_code == 200
    html = r.text
    assert "Change things" in html and "A longer explanation." in html
    assert "3 files changed" in html
    assert 'class="status status-M"' in html and 'class="status status-D"' in html
    assert 'class="status status-A"' in html
    assert 'class="gd">-y = 2' in html and 'class="gi">+y = 3' in html
    assert 'href="/alice/diffs/blob/' + sha + '/a.py"' in html
    # the root commit diffs against nothing
    root = web.get(f"{ref.url}/commits").text.split("/commit/")[-1][:40]
    r = web.get(f"{ref.url}/commit/{root}")
    assert r.status_code == 200 and "2 files changed" in r.text and 'class="gi">+bye' in r.text
    assert web.get(f"{ref.url}/commit/{'0' * 40}").status_code == 404


def test_huge_diffs_are_capped(
    web: TestClient, alice: Account, make_repo: Callable[..., RepoRef], commit: Callable[..., str]
) -> None:
    ref = make_repo(alice, "huge", files={"f.txt": "a\n"})
    sha = commit(alice, ref, {"f.txt": "".join(f"line {i}\n" for i in range(40_000))}, message="Big")
    r = web.get(f"{ref.url}/commit/{sha}")
    assert r.status_code == 200
    assert "Diff too large to show." in r.text
    assert len(r.text) < 100_000


def test_branches_page_lists_branches_and_tags(
    web: TestClient,
    alice: Account,
    make_repo: Callable[..., RepoRef],
    commit: Callable[..., str],
) -> None:
    ref = make_repo(alice, "refs", files={"a": "1"})
    commit(alice, ref, {"b": "2"}, branch="dev", message="Dev work")
    tag = web.post(
        "/api/v1/repos/alice/refs/refs",
        json={"type": "tag", "name": "v1.0", "revision": "main"},
        headers=alice.headers,
    )
    assert tag.status_code == 201, tag.text
    r = web.get(f"{ref.url}/branches")
    assert r.status_code == 200
    html = r.text
    assert '<strong>main</strong></a> <span class="badge">default</span>' in html
    assert "<strong>dev</strong>" in html and "Dev work" in html
    assert "<strong>v1.0</strong>" in html
    assert 'href="/alice/refs/tree/v1.0"' in html
    assert web.get(f"{ref.url}/tree/v1.0").status_code == 200


def test_a_submodule_entry_never_breaks_a_page(
    web: TestClient, app: FastAPI, alice: Account, make_repo: Callable[..., RepoRef]
) -> None:
    """A pushed repository may hold a submodule (a gitlink to a commit that is not in this repository)."""
    ref = make_repo(alice, "with-sub", files={"README.md": "# Sub\n"})
    g = app.state.store.open(ref.id)
    head = g.revparse_single("main")
    tb = g.TreeBuilder(head.tree)
    tb.insert("vendor", pygit2.Oid(hex="12" * 20), FileMode.COMMIT)
    sig = pygit2.Signature("A", "a@example.org")
    sha = g.create_commit("refs/heads/main", sig, sig, "Add a submodule\n", tb.write(), [head.id])

    home = web.get(ref.url)
    assert home.status_code == 200 and "vendor" in home.text
    commit_page = web.get(f"{ref.url}/commit/{sha}")
    assert commit_page.status_code == 200 and "vendor" in commit_page.text
    tree_page = web.get(f"{ref.url}/tree/main/vendor", follow_redirects=True)
    blob_page = web.get(f"{ref.url}/blob/main/vendor")
    for page in (tree_page, blob_page):
        assert page.status_code == 422 and "submodule" in page.text
    raw = web.get(f"/api/v1/repos/{ref.owner}/{ref.name}/raw/main/vendor")
    assert raw.status_code == 422 and raw.json()["error"] == "not_a_file"
    listing = web.get(f"/api/v1/repos/{ref.owner}/{ref.name}/tree/main/vendor")
    assert listing.status_code == 422 and "submodule" in listing.json()["message"]
