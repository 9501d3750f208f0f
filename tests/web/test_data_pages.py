"""The dataset viewer's pages: tables, rows with paging (htmx fragments too), statistics with histograms,
the sky map, the SQL console (results, errors, downloads, shareable links), privacy and escaping."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from urllib.parse import parse_qs, unquote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from tests.conftest import Account
from tests.web.conftest import RepoRef

HTMX = {"HX-Request": "true"}


def stars_csv(n: int = 120) -> str:
    lines = ["ra,dec,mag,name"]
    lines += [f"{(i * 3) % 360},{(i % 170) - 85},{i / 8},s{i % 4}" for i in range(n)]
    return "\n".join(lines) + "\n"


@pytest.fixture
def catalogue(alice: Account, make_repo: Callable[..., RepoRef]) -> RepoRef:
    return make_repo(
        alice,
        "survey",
        kind="dataset",
        files={"data/stars.csv": stars_csv(), "broken.parquet": b"not parquet at all", "README.md": "# S\n"},
    )


def grid_rows(html: str) -> list[str]:
    """The row numbers shown in the rows grid."""
    return re.findall(r'<td class="rownum">(\d+)</td>', html)


def test_viewer_lists_tables_rows_columns_histograms_and_the_sky_map(
    web: TestClient, catalogue: RepoRef
) -> None:
    r = web.get(f"{catalogue.url}/viewer")
    assert r.status_code == 200, r.text
    page = r.text
    assert 'aria-current="page">Data</a>' in page  # the Data tab is the current one
    assert ">stars</a>" in page and "120 rows · 4 columns" in page
    # the column types, the source file, and the file that could not be read, with its reason
    for header in ("ra <span", "dec <span", "mag <span", "name <span"):
        assert header in page
    assert '<span class="col-type">double</span>' in page
    assert "data/stars.csv</code></a>" in page
    assert "broken.parquet</code></a>" in page and "not a valid Parquet file" in page
    # the first page of rows, a pager, histograms for numbers, top values for text, a sky map
    assert grid_rows(page) == [str(i) for i in range(1, 51)]
    assert "Rows 1\u201350 of 120" in page
    assert page.count('<svg class="plot plot-histogram"') == 3
    assert "Histogram of mag: 120 values in 20 bins" in page
    assert 'aria-label="Most frequent values of name"' in page
    assert '<td>s0</td><td class="num">30</td>' in page
    assert '<svg class="plot plot-sky"' in page
    assert "Sky density map of stars (ra, dec): 120 sources" in page
    # the console, pre-filled with a query of the selected table
    assert "SELECT * FROM &#34;stars&#34; LIMIT 10</textarea>" in page


def test_the_dataset_page_links_to_the_viewer_and_code_repositories_have_none(
    web: TestClient, alice: Account, catalogue: RepoRef, make_repo: Callable[..., RepoRef]
) -> None:
    home = web.get(catalogue.url)
    assert f'href="{catalogue.url}/viewer"' in home.text
    code = make_repo(alice, "tools", files={"a.csv": "x\n1\n"})
    assert "/viewer" not in web.get(code.url).text
    assert web.get(f"/datasets/{code.owner}/{code.name}/viewer").status_code == 404


def test_rows_are_paged_and_htmx_gets_only_the_grid(web: TestClient, catalogue: RepoRef) -> None:
    r = web.get(f"{catalogue.url}/viewer?table=stars&offset=100")
    assert grid_rows(r.text) == [str(i) for i in range(101, 121)]
    assert "Rows 101\u2013120 of 120" in r.text
    assert 'rel="next"' not in r.text and 'rel="prev"' in r.text

    r = web.get(f"{catalogue.url}/viewer/main?table=stars&offset=50&part=rows", headers=HTMX)
    assert r.status_code == 200
    assert r.text.lstrip().startswith('<div id="table-rows"')
    assert "<html" not in r.text and "plot-histogram" not in r.text
    assert grid_rows(r.text)[0] == "51"
    assert r.headers["HX-Push-Url"] == f"{catalogue.url}/viewer/main?table=stars&offset=50"
    assert "HX-Request" in r.headers["Vary"]
    # without htmx, `part` is ignored: the whole page
    assert "<html" in web.get(f"{catalogue.url}/viewer?table=stars&part=rows").text


def test_revisions_unknown_tables_and_empty_datasets(
    web: TestClient,
    alice: Account,
    catalogue: RepoRef,
    make_repo: Callable[..., RepoRef],
    commit: Callable[..., str],
) -> None:
    first = web.get(f"{catalogue.url}/viewer").text
    sha = re.search(r"/commit/([0-9a-f]{40})", first)
    assert sha is not None
    commit(alice, catalogue, {"data/stars.csv": stars_csv(10)})
    assert "10 rows · 4 columns" in web.get(f"{catalogue.url}/viewer").text
    old = web.get(f"{catalogue.url}/viewer/{sha.group(1)}")
    assert old.status_code == 200 and "120 rows · 4 columns" in old.text
    missing = web.get(f"{catalogue.url}/viewer?table=nope")
    assert missing.status_code == 200 and "No table named <code>nope</code>" in missing.text
    assert web.get(f"{catalogue.url}/viewer/no-such-branch").status_code == 404
    empty = make_repo(alice, "empty-data", kind="dataset")
    assert web.get(f"{empty.url}/viewer").status_code == 200
    text_only = make_repo(alice, "notes", kind="dataset", files={"README.md": "# nothing\n"})
    assert "No tables in this revision" in web.get(f"{text_only.url}/viewer").text


def test_sql_console_runs_a_shared_query_and_links_the_downloads(web: TestClient, catalogue: RepoRef) -> None:
    sql = "SELECT name, count(*) AS n FROM stars GROUP BY name ORDER BY name"
    r = web.get(f"{catalogue.url}/viewer", params={"sql": sql})
    assert r.status_code == 200
    result = r.text[r.text.index('id="sql-result"') :]
    assert '<th scope="col">name</th><th scope="col">n</th>' in result
    assert "<tr><td>s0</td><td>30</td></tr>" in result
    assert "4 rows." in result and "Truncated" not in result
    assert f">{sql}</textarea>" in r.text  # pre-filled
    share = re.search(r'<input class="share-link" readonly value="([^"]+)"', result)
    assert share is not None
    parts = urlsplit(share.group(1).replace("&amp;", "&"))
    assert parts.path == f"{catalogue.url}/viewer/main" and parse_qs(parts.query)["sql"] == [sql]
    assert parts.fragment == "sql"
    links = dict(re.findall(r'<a class="button small" href="([^"]+)">(json|csv|parquet|votable)</a>', result))
    assert sorted(links.values()) == ["csv", "json", "parquet", "votable"]
    by_format = {fmt: href.replace("&amp;", "&") for href, fmt in links.items()}
    got = web.get(by_format["csv"])
    assert got.status_code == 200
    assert list(csv.reader(io.StringIO(got.text)))[:2] == [["name", "n"], ["s0", "30"]]
    parquet = web.get(by_format["parquet"])
    assert pq.read_table(io.BytesIO(parquet.content)).num_rows == 4
    assert web.get(by_format["json"]).json()["rows"][0] == ["s0", 30]
    assert unquote(urlsplit(by_format["json"]).query).count("GROUP BY") == 0  # encoded with + for spaces
    assert parse_qs(urlsplit(by_format["json"]).query)["sql"] == [sql]


def test_sql_console_htmx_fragment_truncation_and_inline_errors(web: TestClient, catalogue: RepoRef) -> None:
    r = web.get(
        f"{catalogue.url}/viewer/main",
        params={"sql": "SELECT * FROM range(1000)", "table": "stars", "part": "sql"},
        headers=HTMX,
    )
    assert r.status_code == 200
    assert r.text.lstrip().startswith('<div id="sql-result"') and "<html" not in r.text
    assert "Truncated" in r.text and r.text.count("<tr>") == 201  # header + 200 rows
    assert r.headers["HX-Push-Url"].startswith(f"{catalogue.url}/viewer/main?table=stars&sql=SELECT")
    for bad, code in [
        ("SELECT * FROM read_csv('/etc/passwd')", "sql_not_allowed"),
        ("SELECT * FROM nowhere", "invalid_sql"),
        ("DROP TABLE stars", "sql_not_allowed"),
        ("SELEC 1", "invalid_sql"),
    ]:
        r = web.get(f"{catalogue.url}/viewer", params={"sql": bad, "part": "sql"}, headers=HTMX)
        assert r.status_code == 200, (bad, r.text)
        assert 'class="flash error sql-error" role="alert"' in r.text, bad
        assert f"<strong>{code}</strong>" in r.text or "<strong>" in r.text, (bad, r.text)
        assert "/etc/passwd" not in r.text.replace("read_csv(&#39;/etc/passwd&#39;)", "")
        assert "Download:" not in r.text


def test_a_private_dataset_viewer_is_not_found_for_strangers(
    browser: Callable[[], TestClient],
    logged_in: Callable[[Account], TestClient],
    alice: Account,
    bob: Account,
    make_repo: Callable[..., RepoRef],
) -> None:
    ref = make_repo(
        alice, "secret-survey", kind="dataset", private=True, files={"t.csv": "SECRETCOL\nSECRETVALUE\n"}
    )
    anonymous = browser()
    stranger = logged_in(bob)
    owner = logged_in(alice)
    missing = anonymous.get("/datasets/alice/no-such-data/viewer")
    for client in (anonymous, stranger):
        for url in (
            f"{ref.url}/viewer",
            f"{ref.url}/viewer/main?table=t",
            f"{ref.url}/viewer?sql=SELECT+1",
            f"{ref.url}/viewer/main?part=rows&table=t",
        ):
            r = client.get(url, headers=HTMX if "part" in url else {})
            assert r.status_code == 404, (url, r.status_code)
            assert "SECRET" not in r.text
            assert r.text.count("Page not found") == missing.text.count("Page not found")
    r = owner.get(f"{ref.url}/viewer")
    assert r.status_code == 200 and "SECRETVALUE" in r.text
    # a public dataset's console cannot reach into the private one
    public = make_repo(alice, "open-survey", kind="dataset", files={"u.csv": "x\n1\n"})
    r = stranger.get(f"{public.url}/viewer", params={"sql": 'SELECT * FROM "alice/secret-survey".t'})
    assert r.status_code == 200 and "SECRETVALUE" not in r.text
    assert "repository alice/secret-survey not found" in r.text.replace("&#39;", "'")


HOSTILE = '<script>alert("x")</script>'


def test_hostile_names_and_values_are_escaped_in_html_and_svg(
    web: TestClient, alice: Account, make_repo: Callable[..., RepoRef]
) -> None:
    buf = io.BytesIO()
    table = pa.table(
        {
            HOSTILE: pa.array([1.0, 2.0, 3.0]),
            "ra": pa.array([10.0, 20.0, 30.0]),
            "dec": pa.array([1.0, 2.0, 3.0]),
            "label": pa.array([HOSTILE, '"><img src=x onerror=alert(1)>', "ok"]),
        }
    )
    pq.write_table(table, buf)
    ref = make_repo(alice, "hostile", kind="dataset", files={"data/<b>evil</b>.parquet": buf.getvalue()})
    r = web.get(f"{ref.url}/viewer")
    assert r.status_code == 200, r.text
    page = r.text
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>evil</b>" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page or "&lt;script&gt;" in page
    assert "Histogram of &lt;script&gt;" in page  # inside the SVG's <title>
    assert "&lt;b&gt;evil&lt;/b&gt;" in page  # the table is named after the file
    quoted = HOSTILE.replace('"', '""')
    r = web.get(f"{ref.url}/viewer", params={"sql": f"SELECT '{HOSTILE}' AS \"{quoted}\""})
    result = r.text[r.text.index('id="sql-result"') :]
    assert "<script>" not in result and "&lt;script&gt;" in result


def test_counts_agree_with_their_nouns(
    web: TestClient, alice: Account, make_repo: Callable[..., RepoRef]
) -> None:
    files = {"one.csv": "ra,dec\n10,20\n"} | {f"parts/p-{i:04d}.csv": "ra,dec\n1,2\n" for i in range(11)}
    ref = make_repo(alice, "single", kind="dataset", files=files)
    page = web.get(f"{ref.url}/viewer?table=one").text
    assert "1 row · 2 columns" in page and '<span class="count">1 row</span>' in page
    assert "1 source," in page and "1 sources" not in page
    assert "1 position from" in page
    parts = web.get(f"{ref.url}/viewer?table=p").text
    assert "11 rows · 2 columns" in parts and "and 1 more file</p>" in parts
