"""Numbers in the jobs routes that no database column can hold: ids in paths, `before`, `offset`, `limit`.

Each is answered as what it means (a job that does not exist, a page without an upper bound, a log read
past its end) or refused with a 4xx, never a 500 from the driver (OverflowError on SQLite, "integer out
of range" on PostgreSQL, whose id column is 32-bit). In process, without a scheduler.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opensci.compute import workspace
from tests.api_helpers import API, committed, create_repo, error_code
from tests.conftest import Account

HUGE = 99999999999999999999999  # beyond SQLite's 64-bit integers
PAST_INT4 = 3_000_000_000  # beyond PostgreSQL's `integer`
OUT_OF_RANGE = [HUGE, PAST_INT4, 2**31, 2**63, 0, -1, -PAST_INT4, -HUGE]


@pytest.fixture
def jobs(app: FastAPI, client: TestClient, alice: Account) -> list[dict[str, Any]]:
    create_repo(client, alice, "tool", kind="code")
    committed(client, alice, "alice/tool", {"main.py": "print('hi')\n"})
    out = []
    for _ in range(3):
        r = client.post(
            f"{API}/jobs",
            json={"code": {"repo": "alice/tool"}, "command": ["python", "main.py"]},
            headers=alice.headers,
        )
        assert r.status_code == 201, r.text
        out.append(r.json())
    return out


@pytest.mark.parametrize("job_id", [*OUT_OF_RANGE, 2**31 - 1])
@pytest.mark.parametrize(
    "method,suffix", [("GET", ""), ("GET", "/logs"), ("POST", "/cancel"), ("POST", "/rerun")]
)
def test_an_id_no_job_can_have_is_not_found(
    client: TestClient, alice: Account, jobs: list[dict[str, Any]], job_id: int, method: str, suffix: str
) -> None:
    r = client.request(method, f"{API}/jobs/{job_id}{suffix}", headers=alice.headers)
    assert error_code(r, 404) == "job_not_found"
    assert r.json()["message"] == f"job {job_id} not found"


def test_an_id_that_is_no_number_is_refused(client: TestClient, alice: Account) -> None:
    r = client.get(f"{API}/jobs/first", headers=alice.headers)
    assert error_code(r, 422) == "invalid_input"
    assert "job_id" in r.json()["message"]


def _ids(client: TestClient, alice: Account, **params: Any) -> list[int]:
    r = client.get(f"{API}/jobs", params=params, headers=alice.headers)
    assert r.status_code == 200, r.text
    return [j["id"] for j in r.json()["jobs"]]


def test_before_beyond_every_id_is_no_bound_and_below_every_id_is_an_empty_page(
    client: TestClient, alice: Account, jobs: list[dict[str, Any]]
) -> None:
    every = sorted((j["id"] for j in jobs), reverse=True)
    assert _ids(client, alice) == every
    for before in (HUGE, PAST_INT4, 2**31, 2**31 - 1):
        assert _ids(client, alice, before=before) == every, before
    for before in (0, -1, -PAST_INT4, -HUGE):
        assert _ids(client, alice, before=before) == [], before
    assert _ids(client, alice, before=every[0]) == every[1:]
    r = client.get(f"{API}/jobs", params={"before": "soon"}, headers=alice.headers)
    assert error_code(r, 422) == "invalid_input"


@pytest.mark.parametrize("limit", [HUGE, PAST_INT4, 201, 0, -1, -HUGE])
def test_a_limit_out_of_range_is_refused(client: TestClient, alice: Account, limit: int) -> None:
    r = client.get(f"{API}/jobs", params={"limit": limit}, headers=alice.headers)
    assert error_code(r, 422) == "invalid_page"
    assert "between 1 and 200" in r.json()["message"]


def write_log(app: FastAPI, job_id: int, data: bytes) -> None:
    log = workspace.job_dir(app.state.settings, job_id) / "log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(data)


def test_a_log_read_at_or_past_its_end_is_empty(
    app: FastAPI, client: TestClient, alice: Account, jobs: list[dict[str, Any]]
) -> None:
    job_id = jobs[0]["id"]
    write_log(app, job_id, b"hello\n")
    for offset in (0, 3):
        r = client.get(f"{API}/jobs/{job_id}/logs", params={"offset": offset}, headers=alice.headers)
        assert r.status_code == 200 and r.content == b"hello\n"[offset:]
        assert r.headers["x-log-next-offset"] == "6"
    for offset in (6, 7, PAST_INT4, 2**63, HUGE):
        r = client.get(f"{API}/jobs/{job_id}/logs", params={"offset": offset}, headers=alice.headers)
        assert r.status_code == 200, r.text
        assert r.content == b""
        assert r.headers["x-log-offset"] == r.headers["x-log-next-offset"] == str(offset)
    r = client.get(f"{API}/jobs/{job_id}/logs", params={"offset": -1}, headers=alice.headers)
    assert error_code(r, 422) == "invalid_input"


def test_following_a_log_from_past_its_end_gives_the_end_only(
    app: FastAPI, client: TestClient, alice: Account, jobs: list[dict[str, Any]]
) -> None:
    job_id = jobs[0]["id"]
    write_log(app, job_id, b"hello\n")
    r = client.post(f"{API}/jobs/{job_id}/cancel", headers=alice.headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    r = client.get(
        f"{API}/jobs/{job_id}/logs", params={"offset": HUGE, "follow": "true"}, headers=alice.headers
    )
    assert r.status_code == 200, r.text
    events = [block for block in r.text.split("\n\n") if block.strip()]
    assert len(events) == 1 and events[0].startswith("event: end\n"), r.text
    assert json.loads(events[0].split("data: ", 1)[1])["status"] == "cancelled"


@pytest.mark.parametrize(
    "params,code",
    [
        ({"owner": "al\x00ice"}, "invalid_name"),
        ({"owner": "alice\n"}, "invalid_name"),
        ({"repo": "al\x00ice/tool"}, "invalid_repo"),
        ({"repo": "alice/to\x00ol"}, "invalid_repo"),
        ({"repo": "alice"}, "invalid_repo"),
        ({"status": "queued\x00"}, "invalid_status"),
    ],
)
def test_a_filter_no_name_can_match_is_refused(
    client: TestClient, alice: Account, params: dict[str, str], code: str
) -> None:
    """Not a 500 from PostgreSQL, which refuses a NUL in text."""
    r = client.get(f"{API}/jobs", params=params, headers=alice.headers)
    assert error_code(r, 422) == code


@pytest.mark.parametrize(
    "query",
    [
        "owner=%00",
        "owner=a%00",
        "owner=%00&repo=%00",
        "repo=a/%00",
        "repo=%00/b",
        "repo=%00",
        "repo=alice/%00",
        "repo=%00%00/%00",
    ],
)
def test_the_jobs_page_with_a_nul_in_a_filter_is_4xx(
    client: TestClient, alice: Account, jobs: list[dict[str, Any]], query: str
) -> None:
    """The web page answers an error page, never a 500 (PostgreSQL refused the NUL: psycopg DataError).
    (An unknown `status` is ignored there: tests/test_nul_in_requests.py.)"""
    for headers in ({}, alice.headers):
        r = client.get(f"/jobs?{query}", headers={**headers, "Accept": "text/html"})
        assert 400 <= r.status_code < 500, (query, r.status_code, r.text[:300])
        assert r.headers["content-type"].startswith("text/html"), r.headers["content-type"]
