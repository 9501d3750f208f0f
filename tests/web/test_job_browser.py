"""Jobs in a real browser (headless Debian Chromium through Playwright) against a live server whose
scheduler runs: a job started from a repository's Run tab, its log arriving line by line on its page,
the status turning to succeeded without a reload, and the provenance graph's links."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.api_helpers import API
from tests.compute.conftest import code_repo, compute_app, dataset, finished, http, server, wait  # noqa: F401
from tests.conftest import Account, LiveServer
from tests.web.test_browser import chromium, page, shot  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

# Prints a line every 0.7 s for about 4 s, then writes its output.
SLOW = """\
import pathlib, time
for i in range(6):
    print(f"step {i}", flush=True)
    time.sleep(0.7)
pathlib.Path("outputs/done.txt").write_text("done\\n")
print("finished", flush=True)
"""


def log_in(tab: Page, base: str, who: Account, then: str) -> None:
    tab.goto(f"{base}/login?next={then}")
    tab.fill("input[name=name]", who.name)
    tab.fill("input[name=password]", who.password)
    tab.get_by_role("button", name="Log in").click()
    expect(tab).to_have_url(f"{base}{then}")


def test_run_a_job_from_the_run_tab_and_watch_it_live(
    server: LiveServer,  # noqa: F811 (fixtures imported above)
    http: httpx.Client,  # noqa: F811
    page: Page,  # noqa: F811
    alice: Account,
) -> None:
    base = server.url
    code = code_repo(http, alice, "slow", {"slow.py": SLOW})
    dataset(http, alice, "results", None)
    log_in(page, base, alice, "/alice/slow")

    page.locator(".tabs").get_by_role("link", name="Run").click()
    expect(page).to_have_url(f"{base}/alice/slow/run")
    page.fill("input[name=command]", "python slow.py")
    page.fill("input[name=output]", "alice/results")
    page.fill("input[name=branch]", "runs")
    shot(page, "job-run-form")
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page).to_have_url(re.compile(rf"^{re.escape(base)}/jobs/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])
    page.evaluate("window.sameDocument = true")  # gone if the page were reloaded
    log = page.locator("#job-log")
    assert "step 5" not in log.inner_text()  # not in the page as it was made

    # the log arrives line by line while the job runs, then the status changes, without a reload
    expect(log).to_contain_text("step 2", timeout=60_000)
    expect(page.locator("#job-status [data-status]")).to_have_text("running")
    shot(page, "job-running")
    expect(log).to_contain_text("finished", timeout=60_000)
    expect(page.locator("#job-status [data-status]")).to_have_text("succeeded", timeout=30_000)
    assert page.evaluate("window.sameDocument") is True
    text = log.inner_text()
    assert [text.count(f"step {i}") for i in range(6)] == [1] * 6  # each line once
    expect(page.locator(".job-exit")).to_have_text("0")
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    expect(page.locator("#job-log-empty")).to_be_hidden()

    # the provenance graph links the code at its commit, the job and the output commit
    done = http.get(f"{API}/jobs/{job_id}", headers=alice.headers).json()
    out = done["output"]["commit"]
    assert done["status"] == "succeeded" and out
    graph = page.locator("svg.provenance")
    expect(graph).to_be_visible()
    expect(graph.locator("a.prov-code")).to_have_attribute("href", f"/alice/slow/tree/{code}")
    expect(graph.locator("a.prov-job")).to_have_attribute("href", f"/jobs/{job_id}")
    expect(graph.locator("a.prov-output")).to_have_attribute("href", f"/datasets/alice/results/commit/{out}")
    shot(page, "job-succeeded")
    graph.locator("a.prov-output").click()
    expect(page).to_have_url(f"{base}/datasets/alice/results/commit/{out}")
    expect(page.locator(".job-mark")).to_have_text(f"made by job {job_id}")
    page.locator(".job-mark").click()
    expect(page).to_have_url(f"{base}/jobs/{job_id}")

    # the list shows it, and filters by status
    page.get_by_role("navigation").get_by_role("link", name="Jobs", exact=True).first.click()
    expect(page).to_have_url(f"{base}/jobs")
    expect(page.locator(f'tr[data-job="{job_id}"] [data-status]')).to_have_text("succeeded")
    page.locator(".job-filters").get_by_role("link", name=re.compile("^failed")).click()
    expect(page.locator(f'tr[data-job="{job_id}"]')).to_have_count(0)
    shot(page, "jobs-list")


def test_the_page_of_a_job_already_running_continues_its_log_where_the_page_stops(
    server: LiveServer,  # noqa: F811
    http: httpx.Client,  # noqa: F811
    page: Page,  # noqa: F811
    alice: Account,
) -> None:
    base = server.url
    code_repo(http, alice, "slow", {"slow.py": SLOW})
    r = http.post(
        f"{API}/jobs",
        json={"code": {"repo": "alice/slow"}, "command": "python slow.py"},
        headers=alice.headers,
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]

    def logged(text: str) -> bool:
        return text in http.get(f"{API}/jobs/{job_id}/logs", headers=alice.headers).text

    wait(http, alice, job_id, lambda _: logged("step 1"), timeout=60)
    log_in(page, base, alice, f"/jobs/{job_id}")
    log = page.locator("#job-log")
    # the page was made with the first lines; the rest follows from the byte it stopped at
    assert int(log.get_attribute("data-offset") or "0") > 0
    expect(log).to_contain_text("finished", timeout=60_000)
    expect(page.locator("#job-status [data-status]")).to_have_text("succeeded", timeout=30_000)
    text = log.inner_text()
    assert [text.count(f"step {i}") for i in range(6)] == [1] * 6, text
    assert finished(http, alice, job_id)["status"] == "succeeded"
