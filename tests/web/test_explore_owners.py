"""Explore (the home page), user and organization pages, error pages and static files."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from tests.conftest import Account
from tests.web.conftest import RepoRef


def test_explore_lists_cards_and_filters_by_query_and_kind(
    web: TestClient, alice: Account, bob: Account, make_repo: Callable[..., RepoRef]
) -> None:
    make_repo(
        alice, "galaxy-zoo", kind="dataset", description="Galaxy images", license="CC-BY-4.0", tags=["astro"]
    )
    make_repo(alice, "fitter", description="Curve fitting")
    make_repo(bob, "zoo-model", kind="model", description="Classifies galaxies")
    for path in ("/", "/explore"):
        r = web.get(path)
        assert r.status_code == 200
        assert "3 repositories" in r.text
        assert 'href="/datasets/alice/galaxy-zoo"' in r.text and 'href="/alice/fitter"' in r.text
        assert 'href="/bob/zoo-model"' in r.text
    card = web.get("/").text.split('href="/datasets/alice/galaxy-zoo"')[1].split("</li>")[0]
    assert "kind-dataset" in card and "Galaxy images" in card and "CC-BY-4.0" in card and "astro" in card
    assert "updated" in card and "<time datetime=" in card
    assert 'src="/avatars/alice.svg"' in web.get("/").text
    r = web.get("/explore?q=zoo")
    assert "2 repositories" in r.text and "fitter" not in r.text
    r = web.get("/explore?q=galax&kind=model")
    assert "1 repository" in r.text and "zoo-model" in r.text
    r = web.get("/explore?kind=dataset")
    assert "1 repository" in r.text and 'value="dataset" selected' in r.text
    r = web.get("/explore?kind=nonsense&sort=nonsense")  # unknown values fall back to the defaults
    assert r.status_code == 200 and "3 repositories" in r.text
    r = web.get("/explore?sort=name")
    assert r.text.index("fitter") < r.text.index("galaxy-zoo") < r.text.index("zoo-model")
    assert web.get("/datasets").headers["location"] == "/explore?kind=dataset"
    assert web.get("/models").headers["location"] == "/explore?kind=model"


def test_explore_paginates(web: TestClient, alice: Account, make_repo: Callable[..., RepoRef]) -> None:
    for i in range(23):
        make_repo(alice, f"repo-{i:02d}")
    first = web.get("/explore?sort=name")
    assert "Page 1 of 2" in first.text and 'href="/explore?sort=name&amp;page=2"' in first.text
    assert "repo-19" in first.text and "repo-20" not in first.text
    second = web.get("/explore?sort=name&page=2")
    assert "repo-20" in second.text and "repo-22" in second.text and "repo-19" not in second.text
    assert "Previous" in second.text
    assert web.get("/explore?page=0").status_code == 422


def test_explore_answers_htmx_with_the_results_only(
    web: TestClient, alice: Account, make_repo: Callable[..., RepoRef]
) -> None:
    make_repo(alice, "fitter")
    r = web.get("/explore?q=fit", headers={"HX-Request": "true"})
    assert r.status_code == 200
    assert r.text.lstrip().startswith('<section id="results"') and "<html" not in r.text
    assert "fitter" in r.text and "Vary" in r.headers and "HX-Request" in r.headers["vary"]
    # history restoration asks for the whole page
    full = web.get("/explore?q=fit", headers={"HX-Request": "true", "HX-History-Restore-Request": "true"})
    assert "<html" in full.text


def test_user_page(
    web: TestClient,
    alice: Account,
    make_repo: Callable[..., RepoRef],
    make_org: Callable[..., str],
    logged_in: Callable[[Account], TestClient],
) -> None:
    make_org(alice, "star-lab", display_name="Star Lab")
    make_repo(alice, "thesis", description="My thesis")
    r = web.get("/alice")
    assert r.status_code == 200
    assert 'src="/avatars/alice.svg"' in r.text and "thesis" in r.text and "My thesis" in r.text
    assert 'href="/star-lab"' in r.text
    assert "Edit profile" not in r.text
    assert "Edit profile" in logged_in(alice).get("/alice").text
    assert web.get("/Alice").status_code == 200  # names are case-insensitive
    assert web.get("/nobody-here").status_code == 404
    assert web.get("/avatars/alice.svg").headers["content-type"].startswith("image/svg+xml")


def test_org_page_lists_members_with_roles_and_repositories(
    web: TestClient,
    alice: Account,
    bob: Account,
    make_repo: Callable[..., RepoRef],
    make_org: Callable[..., str],
) -> None:
    make_org(alice, "star-lab", members={"bob": "write"}, display_name="Star Lab", description="We look up.")
    make_repo(alice, "catalog", owner="star-lab", kind="dataset")
    r = web.get("/star-lab")
    assert r.status_code == 200
    html = r.text
    assert "Star Lab" in html and "We look up." in html and "organization" in html
    assert 'href="/alice"' in html and 'class="badge role-owner">owner<' in html
    assert 'href="/bob"' in html and 'class="badge role-write">write<' in html
    assert 'href="/datasets/star-lab/catalog"' in html


def test_unknown_pages_get_an_html_404_and_the_api_keeps_json(web: TestClient) -> None:
    r = web.get("/a/b/c/d/e/f")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "Page not found" in r.text
    api = web.get("/api/v1/repos/nobody/nothing")
    assert api.status_code == 404 and api.json()["error"] == "repo_not_found"
    plain = web.get("/nobody/nothing", headers={"Accept": "application/json"})
    assert plain.status_code == 404 and plain.json()["error"] == "repo_not_found"
    assert web.get("/login", headers={"Accept": "text/html"}).status_code == 200
    assert web.get("/logout").headers["location"] == "/"  # nobody to log out


def test_static_files_are_served(web: TestClient) -> None:
    htmx = web.get("/static/htmx.min.js")
    assert htmx.status_code == 200 and "htmx" in htmx.text[:200]
    css = web.get("/static/opensci.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert web.get("/static/pygments.css").status_code == 200
    assert web.get("/favicon.ico").headers["location"] == "/static/favicon.svg"
    assert web.get("/static/../settings.py").status_code == 404


def test_a_clone_url_pasted_in_the_browser_goes_to_the_page(
    web: TestClient, alice: Account, make_repo: Callable[..., RepoRef]
) -> None:
    make_repo(alice, "tool")
    assert web.get("/alice/tool.git").headers["location"] == "/alice/tool"


def test_owner_patterns_leave_reserved_paths_alone(web: TestClient) -> None:
    """`/{owner}/{name}` must not answer for `/api/…` (JSON 404 `not_found`) or other reserved roots."""
    r = web.get("/api/nothing", headers={"Accept": "application/json"})
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = web.post("/api/v1/settings/delete", headers={"Accept": "application/json"})
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert web.get("/api").status_code == 404
    r = web.get("/login/extra")
    assert r.status_code == 404 and "nothing at /login/extra" in r.text
    assert web.get("/datasets/alice").status_code == 404
