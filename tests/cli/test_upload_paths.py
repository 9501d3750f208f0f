"""`opensci upload` with destinations people write: `.` and `./` for the root, a leading `./`; and a bad
destination refused before the repository is created."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from typer.testing import CliRunner

from opensci.cli.main import app as cli
from tests.client.conftest import Raw, write_tree
from tests.conftest import Account, LiveServer


def test_upload_to_dot_is_the_root_and_a_bad_destination_creates_nothing(
    live_server: LiveServer, alice: Account, tmp_path: Path
) -> None:
    runner = CliRunner()
    env = {"OPENSCI_URL": live_server.url, "OPENSCI_TOKEN": alice.token, "COLUMNS": "200"}
    raw = Raw(live_server.url, alice.token)
    src = write_tree(tmp_path / "src1", {"analyze.py": b"print(1)\n", "lib/util.py": b"x = 1\n"})

    for repo, dest in (("analysis", "."), ("analysis2", "./"), ("analysis3", "./code/")):
        result = runner.invoke(
            cli, ["upload", f"alice/{repo}", str(src), dest, "--kind", "code", "--json"], env=env
        )
        assert result.exit_code == 0, result.output
        reply = json.loads(result.stdout)
        prefix = "code/" if dest == "./code/" else ""
        assert reply["created_repo"] and reply["files"] == [f"{prefix}analyze.py", f"{prefix}lib/util.py"]
        assert set(raw.files(f"alice/{repo}")) == set(reply["files"])

    for dest in ("../up", ".git/x", "a\\b"):
        refused = runner.invoke(cli, ["upload", "alice/never", str(src), dest, "--kind", "code"], env=env)
        assert refused.exit_code == 1, refused.output
        assert "error: path" in refused.stderr and "Created" not in refused.stderr, refused.stderr
        assert "Traceback" not in refused.output
    missing = httpx.get(f"{live_server.url}/api/v1/repos/alice/never", headers=alice.headers)
    assert missing.status_code == 404  # the repository was not created
    raw.http.close()
