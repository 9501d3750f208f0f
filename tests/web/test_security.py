"""CSRF on every form, escaping and sanitizing of everything users write, and the pages' security headers."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opensci.web.render import markdown
from tests.conftest import Account
from tests.web.conftest import RepoRef, csrf_of

# --- CSRF ---------------------------------------------------------------------------------------------------


def _repo_count(app: FastAPI) -> int:
    from sqlalchemy import func, select

    from opensci.repos.models import Repository

    with app.state.db.session() as s:
        return s.scalar(select(func.count()).select_from(Repository)) or 0


@pytest.mark.parametrize("token", [None, "", "wrong-token"])
def test_logged_in_forms_refuse_a_missing_or_wrong_token(
    token: str | None,
    app: FastAPI,
    alice: Account,
    make_repo: Callable[..., RepoRef],
    logged_in: Callable[[Account], TestClient],
) -> None:
    make_repo(alice, "keep", files={"a": "1"})
    client = logged_in(alice)
    extra = {} if token is None else {"csrf_token": token}
    forms = [
        ("/new", {"owner": "alice", "name": "made", "kind": "code", "visibility": "public"}),
        ("/alice/keep/settings", {"description": "changed", "visibility": "private"}),
        ("/alice/keep/settings/rename", {"new_name": "renamed"}),
        ("/alice/keep/settings/delete", {"confirm": "alice/keep"}),
        ("/settings/profile", {"display_name": "Changed"}),
        ("/settings/password", {"old": alice.password, "new": "a-new-password", "new2": "a-new-password"}),
        ("/settings/tokens", {"name": "sneaky", "scope": "write"}),
        ("/logout", {}),
    ]
    for path, data in forms:
        r = client.post(path, data={**data, **extra})
        assert r.status_code == 403, path
        assert r.headers["content-type"].startswith("text/html")
        assert "reload the page" in r.text
    # nothing changed: the repository, the profile, the password, the tokens, the login
    assert _repo_count(app) == 1
    page = client.get("/alice/keep")
    assert page.status_code == 200 and ">public<" in page.text and "changed" not in page.text
    assert "Changed" not in client.get("/settings/profile").text
    assert "sneaky" not in client.get("/settings/tokens").text
    assert client.get("/settings/profile").status_code == 200  # still logged in
    assert (
        client.post("/api/v1/auth/token", json={"name": "alice", "password": alice.password}).status_code
        == 201
    )


def test_a_token_of_another_session_is_refused(
    app: FastAPI, alice: Account, bob: Account, logged_in: Callable[[Account], TestClient]
) -> None:
    bobs_token = csrf_of(logged_in(bob).get("/new").text)
    client = logged_in(alice)
    r = client.post("/new", data={"owner": "alice", "name": "x", "csrf_token": bobs_token})
    assert r.status_code == 403
    assert _repo_count(app) == 0


def test_forms_need_a_browser_login_not_a_remembered_basic_token(
    app: FastAPI, alice: Account, web: TestClient
) -> None:
    """A browser remembers HTTP Basic credentials typed at a git prompt and sends them cross-site."""
    basic = base64.b64encode(f"alice:{alice.token}".encode()).decode()
    token = csrf_of(web.get("/login").text)  # the anonymous double-submit token of this browser
    r = web.post(
        "/new",
        data={"owner": "alice", "name": "x", "csrf_token": token},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert r.status_code == 403
    assert _repo_count(app) == 0


def test_login_and_register_use_a_double_submit_token(
    alice: Account, web: TestClient, browser: Callable[[], TestClient]
) -> None:
    data = {"name": "alice", "password": alice.password}
    # no token, or a token without its cookie (another browser's), or a forged one: refused
    assert web.post("/login", data=data).status_code == 403
    other = csrf_of(browser().get("/login").text)
    assert web.post("/login", data={**data, "csrf_token": other}).status_code == 403
    page = web.get("/login")
    cookie = web.cookies.get("opensci_csrf")
    assert cookie and csrf_of(page.text) == cookie
    web.cookies.set("opensci_csrf", "forged.value")
    assert web.post("/login", data={**data, "csrf_token": "forged.value"}).status_code == 403
    assert "opensci_session" not in web.cookies
    reg = {"name": "eve", "password": "long enough pw", "password2": "long enough pw", "csrf_token": "x"}
    assert web.post("/register", data=reg).status_code == 403
    assert web.get("/eve").status_code == 404
    # with the page's token and cookie: accepted
    fresh = browser()
    token = csrf_of(fresh.get("/login").text)
    assert fresh.post("/login", data={**data, "csrf_token": token}).status_code == 303
    assert "opensci_session" in fresh.cookies


def test_the_anonymous_csrf_cookie_is_http_only_and_lax(web: TestClient) -> None:
    r = web.get("/login")
    header = r.headers["set-cookie"].lower()
    assert header.startswith("opensci_csrf=") and "httponly" in header and "samesite=lax" in header


# --- escaping and sanitizing -----------------------------------------------------------------------------

EVIL_README = """# Hello

<script>alert('readme')</script>
<img src="x.png" onerror="alert('img')">
<a href="javascript:alert('link')">click</a>
[md link](javascript:alert('md'))
<a href="JaVaScRiPt:alert(1)">mixed case</a>
<iframe src="https://evil.example"></iframe>
<div onclick="alert('div')" style="position:fixed">styled</div>
<form action="https://evil.example"><input name="x"></form>
<svg onload="alert('svg')"></svg>
<details open><summary>More</summary>kept</details>
"""


def test_readme_is_sanitized(web: TestClient, alice: Account, make_repo: Callable[..., RepoRef]) -> None:
    ref = make_repo(alice, "evil", files={"README.md": EVIL_README})
    html = web.get(ref.url).text
    readme = html[html.index('class="markdown-body"') :]
    readme = readme[: readme.index("</article>")]
    lowered = readme.lower()
    for bad in ("<script", "onerror", "onclick", "onload", "<iframe", "<form", "<svg", "style="):
        assert bad not in lowered, bad
    assert '="javascript:' not in lowered and "=javascript:" not in lowered  # no such link or source
    assert "<h1>Hello</h1>" in readme
    assert "<details open" in readme and "kept" in readme
    assert "alert('readme')" not in readme


def test_markdown_renderer_keeps_code_highlighting_and_drops_foreign_classes() -> None:
    out = markdown('```python\nx = "<b>"\n```\n\n<span class="button primary">fake button</span>\n')
    assert '<pre class="highlight">' in out
    assert 'class="n">x</span>' in out and "&lt;b&gt;" in out
    assert "button primary" not in out
    rewritten = markdown(
        "[a](../../../etc/passwd) [b](sub/page.md?x=1#top) ![c](/img.png) [d](https://example.org/x)",
        link_base="/o/r/blob/main",
        raw_base="/api/v1/repos/o/r/raw/main",
        folder="docs",
    )
    assert 'href="/o/r/blob/main/etc/passwd"' in rewritten  # never above the repository's root
    assert 'href="/o/r/blob/main/docs/sub/page.md?x=1#top"' in rewritten
    assert 'src="/api/v1/repos/o/r/raw/main/img.png"' in rewritten
    assert 'href="https://example.org/x" rel="nofollow noopener noreferrer"' in rewritten


def test_file_names_descriptions_and_commit_messages_are_escaped(
    web: TestClient, alice: Account, make_repo: Callable[..., RepoRef], commit: Callable[..., str]
) -> None:
    evil_name = "<img src=x onerror=alert(1)>.txt"
    ref = make_repo(
        alice,
        "names",
        description="<script>alert('desc')</script>",
        files={evil_name: "hi\n", "ok.txt": "x"},
    )
    sha = commit(alice, ref, {"ok.txt": "y"}, message="<b onmouseover=alert(2)>bold</b>")
    pages = [
        web.get(ref.url).text,
        web.get(f"{ref.url}/blob/main/{evil_name}").text,
        web.get(f"{ref.url}/commits").text,
        web.get(f"{ref.url}/commit/{sha}").text,
        web.get("/explore").text,
        web.get("/alice").text,
    ]
    for html in pages:
        assert "<img src=x" not in html
        assert "<script>alert" not in html
        assert "<b onmouseover" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;.txt" in pages[0]
    assert "/blob/main/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.txt" in pages[0]
    assert "&lt;script&gt;alert(&#39;desc&#39;)&lt;/script&gt;" in pages[0]
    assert "&lt;b onmouseover=alert(2)&gt;bold&lt;/b&gt;" in pages[2]
    r = web.get(f"{ref.url}/blob/main/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.txt")
    assert r.status_code == 200 and "hi" in r.text


def test_pages_carry_security_headers(web: TestClient) -> None:
    for path in ("/", "/login", "/nobody/nothing"):
        r = web.get(path)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "object-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "private" in r.headers["cache-control"]
    # no inline script anywhere: the policy forbids it
    assert "<script>" not in web.get("/").text
