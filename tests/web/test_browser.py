"""The pages in a real browser: headless Chromium (the Debian package) driven by Playwright, against a live
server on a real socket."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.conftest import Account, LiveServer, need_binary
from tests.web.conftest import RepoRef

pytestmark = pytest.mark.browser

SHOTS = Path("/tmp/opensci-shots")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    need_binary("chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    problems: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error" and "status of 404" not in msg.text:
            problems.append(msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    yield page
    context.close()
    # no script errors and nothing the Content-Security-Policy had to block
    assert problems == []


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_register_create_a_repository_browse_it_and_make_a_token(live_server: LiveServer, page: Page) -> None:
    base = live_server.url
    # register
    page.goto(f"{base}/")
    page.get_by_role("link", name="Register").click()
    page.fill("input[name=name]", "ada")
    page.fill("input[name=display_name]", "Ada Lovelace")
    page.fill("input[name=email]", "ada@example.org")
    page.fill("input[name=password]", "analytical-engine")
    page.fill("input[name=password2]", "analytical-engine")
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(f"{base}/ada")
    expect(page.locator("h1.profile-name")).to_have_text("Ada Lovelace")

    # create a repository with a README from /new
    page.get_by_role("link", name="+ New").click()
    expect(page).to_have_url(f"{base}/new")
    page.fill("input[name=name]", "bernoulli")
    page.fill("input[name=description]", "Computing Bernoulli numbers")
    page.fill("input[name=license]", "CC-BY-4.0")
    expect(page.locator("input[name=readme]")).to_be_checked()
    page.get_by_role("button", name="Create repository").click()
    expect(page).to_have_url(f"{base}/ada/bernoulli")
    readme = page.locator("#readme .markdown-body")
    expect(readme.locator("h1")).to_have_text("bernoulli")
    expect(readme).to_contain_text("Computing Bernoulli numbers")
    expect(page.locator(".clone-box")).to_contain_text(f"git clone {base}/ada/bernoulli.git")

    # create a write token: shown once
    page.locator("details.user-menu summary").click()
    page.get_by_role("link", name="Access tokens").click()
    page.fill("input[name=name]", "notebook")
    page.select_option("select[name=scope]", "write")
    page.get_by_role("button", name="Create token").click()
    secret = page.locator("#new-token").inner_text().strip()
    assert secret.startswith("osci_")
    expect(page.locator("text=will not be shown again")).to_be_visible()
    page.locator(".side-nav").get_by_role("link", name="Access tokens").click()  # the list, by GET
    expect(page.locator("#new-token")).to_have_count(0)
    assert secret not in page.content()
    expect(page.locator("td", has_text="notebook")).to_be_visible()

    # the token works: add files through the REST API
    files = [
        ("files", ("notes/algorithm.py", b"def bernoulli(n):\n    return n  # note G\n", "text/x-python")),
        ("files", ("notes/README.md", b"# Notes\n\n| n | B |\n|---|---|\n| 1 | 1/2 |\n", "text/markdown")),
    ]
    r = httpx.post(
        f"{base}/api/v1/repos/ada/bernoulli/commits",
        data={"message": "Add the algorithm"},
        files=files,
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert r.status_code == 201, r.text

    # browse into the folder and the file
    page.goto(f"{base}/ada/bernoulli")
    page.get_by_role("link", name="notes", exact=True).click()
    expect(page).to_have_url(f"{base}/ada/bernoulli/tree/main/notes")
    expect(page.locator(".breadcrumbs")).to_contain_text("bernoulli/notes")
    expect(page.locator("#readme table td").first).to_have_text("1")
    page.get_by_role("link", name="algorithm.py").click()
    expect(page).to_have_url(f"{base}/ada/bernoulli/blob/main/notes/algorithm.py")
    expect(page.locator(".code-view .k").first).to_have_text("def")
    expect(page.locator(".code-view td.linenos")).to_contain_text("2")

    # history
    page.locator(".tabs").get_by_role("link", name="Commits").click()
    expect(page).to_have_url(f"{base}/ada/bernoulli/commits/main")
    titles = page.locator(".commit-list .commit-title")
    expect(titles).to_have_text(["Add the algorithm", "Initial commit"])
    titles.first.click()
    expect(page.locator(".diff-summary")).to_contain_text("2 files changed")
    expect(page.locator(".diff .gi").first).to_be_visible()

    page.goto(f"{base}/ada/bernoulli")
    shot(page, "repo-page")

    # log out
    page.locator("details.user-menu summary").click()
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("link", name="Log in")).to_be_visible()


def test_anonymous_visitor_explores_and_reads_public_repositories_only(
    live_server: LiveServer,
    page: Page,
    alice: Account,
    make_repo: Callable[..., RepoRef],
    make_org: Callable[..., str],
) -> None:
    base = live_server.url
    make_org(alice, "optics-lab", display_name="Optics Lab")
    make_repo(
        alice,
        "lens-designs",
        owner="optics-lab",
        description="Lens prescriptions",
        license="MIT",
        tags=["optics"],
        files={"README.md": "# Lens designs\n\nSee `designs/`.\n", "designs/doublet.json": '{"f": 100}\n'},
    )
    make_repo(
        alice, "spectra", kind="dataset", description="Lamp spectra", files={"README.md": "# Spectra\n"}
    )
    make_repo(alice, "unpublished", private=True, description="SECRET draft", files={"a": "x"})

    page.goto(f"{base}/")
    cards = page.locator(".repo-card")
    expect(cards).to_have_count(2)
    expect(page.locator("#results")).not_to_contain_text("unpublished")
    shot(page, "explore")

    # live search (htmx): the results change without leaving the page
    page.fill(".explore-filters input[name=q]", "lens")
    expect(cards).to_have_count(1)
    expect(page).to_have_url(re.compile(r"q=lens"))
    expect(page.locator("h1")).to_have_text("Explore open science")
    page.select_option(".explore-filters select[name=kind]", "dataset")
    expect(page.locator("#results")).to_contain_text("0 repositories")
    page.goto(f"{base}/explore?kind=dataset")
    expect(cards).to_have_count(1)
    page.get_by_role("link", name="alice/spectra").click()
    expect(page).to_have_url(f"{base}/datasets/alice/spectra")
    expect(page.locator(".badge.kind-dataset").first).to_be_visible()

    # a public repository of an organization
    page.goto(f"{base}/optics-lab")
    expect(page.locator(".member-list")).to_contain_text("alice")
    page.get_by_role("link", name="lens-designs").click()
    expect(page).to_have_url(f"{base}/optics-lab/lens-designs")
    expect(page.locator("#readme h1")).to_have_text("Lens designs")
    page.get_by_role("link", name="designs", exact=True).click()
    page.get_by_role("link", name="doublet.json").click()
    expect(page.locator(".code-view")).to_contain_text('"f"')
    expect(page.locator(".tabs")).not_to_contain_text("Settings")

    # the private repository is a 404 page, and nowhere listed
    response = page.goto(f"{base}/alice/unpublished")
    assert response is not None and response.status == 404
    expect(page.locator("h1")).to_have_text("Page not found")
    assert "SECRET" not in page.content()
    page.goto(f"{base}/alice")
    expect(page.locator(".profile-main")).not_to_contain_text("unpublished")
    shot(page, "private-404-then-user")
