"""The dataset viewer in a real browser (headless Debian Chromium through Playwright, a live server): the
dataset page shows a table, histograms and a sky map, pages rows with htmx, and runs SQL in its console."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import Account, LiveServer
from tests.web.conftest import RepoRef
from tests.web.test_browser import chromium, page, shot  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser


def stars_csv(n: int = 120) -> str:
    lines = ["ra,dec,mag,name"]
    lines += [f"{(i * 7) % 360},{(i % 150) - 75},{i / 8},s{i % 4}" for i in range(n)]
    return "\n".join(lines) + "\n"


def test_dataset_page_shows_a_table_histograms_and_a_working_sql_console(
    live_server: LiveServer,
    page: Page,  # noqa: F811 (the fixture imported above)
    alice: Account,
    make_repo: Callable[..., RepoRef],
) -> None:
    base = live_server.url
    make_repo(
        alice, "survey", kind="dataset", files={"data/stars.csv": stars_csv(), "README.md": "# Survey\n"}
    )

    page.goto(f"{base}/datasets/alice/survey")
    page.locator(".tabs").get_by_role("link", name="Data").click()
    expect(page).to_have_url(f"{base}/datasets/alice/survey/viewer")
    expect(page.locator(".data-tables a.active")).to_have_text("stars")
    grid = page.locator("#table-rows table")
    expect(grid.locator("thead th")).to_have_count(5)
    expect(grid.locator("tbody tr")).to_have_count(50)
    expect(grid.locator("tbody tr").first.locator("td").nth(4)).to_have_text("s0")
    histograms = page.locator("svg.plot-histogram")
    expect(histograms).to_have_count(3)
    expect(histograms.first).to_be_visible()
    expect(histograms.first.locator("rect.plot-bar")).to_have_count(20)
    expect(page.locator("svg.plot-sky")).to_be_visible()
    shot(page, "data-viewer")

    # paging swaps only the grid (htmx) and keeps the address in step
    page.locator("#table-rows").get_by_role("link", name="Next →").click()
    expect(page.locator("#table-rows .rows-range")).to_have_text("Rows 51\u2013100 of 120")
    expect(page).to_have_url(re.compile(r"offset=50"))
    expect(grid.locator("tbody tr").first.locator("td.rownum")).to_have_text("51")

    # the SQL console: type a query, run it, see the results
    console = page.locator("#sql")
    console.locator("textarea").fill("SELECT name, count(*) AS n FROM stars GROUP BY name ORDER BY name")
    console.get_by_role("button", name="Run").click()
    result = page.locator("#sql-result table")
    expect(result.locator("thead th")).to_have_text(["name", "n"])
    expect(result.locator("tbody tr")).to_have_count(4)
    expect(result.locator("tbody tr").first).to_have_text(re.compile(r"s0\s*30"))
    expect(page.locator("#sql-result")).to_contain_text("Download:")
    expect(page).to_have_url(re.compile(r"sql=SELECT"))
    shot(page, "data-viewer-sql")

    # the address is the shareable link: opened afresh, the query is filled in and run
    shared = page.locator("#sql-result .share-link").input_value()
    assert parse_qs(urlsplit(shared).query)["sql"] == [
        "SELECT name, count(*) AS n FROM stars GROUP BY name ORDER BY name"
    ]
    page.goto(shared)
    expect(page.locator("#sql textarea")).to_have_value(re.compile(r"^SELECT name, count"))
    expect(page.locator("#sql-result tbody tr")).to_have_count(4)

    # a forbidden query is answered inline, the page stays
    console.locator("textarea").fill("SELECT * FROM read_csv('/etc/passwd')")
    console.get_by_role("button", name="Run").click()
    expect(page.locator("#sql-result [role=alert]")).to_contain_text("sql_not_allowed")
    expect(page.locator("#table-rows")).to_be_visible()

    # a download link answers with the file
    console.locator("textarea").fill("SELECT 1 AS one")
    console.get_by_role("button", name="Run").click()
    with page.expect_download() as download:
        page.locator("#sql-result").get_by_role("link", name="csv").click()
    assert download.value.suggested_filename.endswith(".csv")
