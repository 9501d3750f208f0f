"""How `opensci job list|logs` writes to the terminal and to pipes: the list fitted to the width without
cutting ids."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from opensci.cli import job_view
from opensci.cli.main import app as cli
from tests.api_helpers import API
from tests.compute.conftest import code_repo
from tests.conftest import Account, LiveServer

LONG = "python analyze.py " + " ".join(f"--option-{i}=value-{i}" for i in range(30))


def cli_env(url: str, token: str, columns: int = 200) -> dict[str, str]:
    return {"OPENSCI_URL": url, "OPENSCI_TOKEN": token, "COLUMNS": str(columns)}


def submit(http: httpx.Client, who: Account, spec: dict[str, Any]) -> int:
    r = http.post(f"{API}/jobs", json=spec, headers=who.headers)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


# --- job list ---------------------------------------------------------------------------------------------


def test_the_list_keeps_ids_and_statuses_whole_at_80_columns(live_server: LiveServer, alice: Account) -> None:
    with httpx.Client(base_url=live_server.url, timeout=30) as api:
        code_repo(api, alice, "analysis", {"analyze.py": "print(1)\n"})
        short = submit(api, alice, {"code": {"repo": "alice/analysis"}, "command": "python analyze.py"})
        long = submit(api, alice, {"code": {"repo": "alice/analysis"}, "command": LONG})
    runner = CliRunner()
    for columns in (80, 120, 200):
        result = runner.invoke(cli, ["job", "list"], env=cli_env(live_server.url, alice.token, columns))
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert all(len(line) <= columns for line in lines), (columns, result.stdout)
        assert re.match(r"\s*ID\s+STATUS\s+SUBMITTER\s+CODE\s+COMMAND\s+STARTED\s+DURATION$", lines[0]), (
            columns,
            lines[0],
        )
        assert re.match(rf"\s*{long}\s+queued\s+alice\s+alice/an", lines[1]), (columns, lines[1])
        assert re.match(rf"\s*{short}\s+queued\s+alice\s+alice/an\S*\s+python analyze.py\s", lines[2]), (
            columns,
            lines[2],
        )
        if columns < len(LONG) + 60:
            assert "…" in lines[1] and LONG not in lines[1]  # the long command is cut, not the id
    wide = runner.invoke(cli, ["job", "list"], env=cli_env(live_server.url, alice.token, 800))
    assert LONG in wide.stdout  # whole when there is room
    as_json = runner.invoke(cli, ["job", "list", "--json"], env=cli_env(live_server.url, alice.token, 80))
    assert json.loads(as_json.stdout)[0]["command"] == LONG.split()


def _fake_job(job_id: int, command: list[str], submitter: str = "alice") -> Any:
    now = datetime.now(UTC)
    return SimpleNamespace(
        id=job_id,
        status="succeeded",
        submitter=submitter,
        code=SimpleNamespace(repo="admin/analysis", commit="0123456789abcdef"),
        command=command,
        started_at=now - timedelta(seconds=75),
        ended_at=now,
        finished=True,
    )


def test_the_list_shrinks_long_columns_and_drops_the_start_time_last(
    capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = [_fake_job(123456, ["sh", "-c", "echo " * 100]), _fake_job(7, ["true"], submitter="a" * 30)]
    for width in (60, 80, 100, 160):
        job_view.table(jobs, width=width)
        lines = capsys.readouterr().out.splitlines()
        assert all(len(line) <= width for line in lines), (width, lines)
        assert lines[0].split()[:2] == ["ID", "STATUS"] and "SUBMITTER" in lines[0]
        assert lines[1].split()[:2] == ["123456", "succeeded"] and lines[2].split()[:2] == ["7", "succeeded"]
        assert ("STARTED" in lines[0]) == (width >= 80), (width, lines[0])
        if width >= 80:
            assert "DURATION" in lines[0] and lines[1].rstrip().endswith("1m15s")
    assert job_view.share_width([5, 40, 100], [9, 10, 10], [1, 1, 2], 60) == [5, 21, 34]
    assert job_view.share_width([5, 12, 30], [9, 10, 10], [1, 1, 2], 60) == [5, 12, 30]
    assert job_view.share_width([20, 40, 100], [9, 10, 10], [1, 1, 2], 20) == [9, 10, 10]
