"""`opensci upload` and `opensci download` of large files: progress bars on stderr (hashing, uploading,
downloading), only the missing chunks sent on a re-upload, and what was sent in the JSON result."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from opensci.cli.main import app as cli
from tests.conftest import Account, LiveServer

MiB = 1024 * 1024
Run = Callable[..., Result]


@pytest.fixture
def run(live_server: LiveServer, alice: Account) -> Run:
    """Invoke the CLI as alice against the live server and check the exit code (`code=`)."""
    runner = CliRunner()

    def invoke(*args: str, code: int = 0) -> Result:
        env = {"OPENSCI_URL": live_server.url, "OPENSCI_TOKEN": alice.token, "COLUMNS": "200"}
        result = runner.invoke(cli, list(args), env=env)
        assert result.exit_code == code, f"exit {result.exit_code}: {result.output}{result.exception!r}"
        return result

    return invoke


def test_upload_and_download_show_progress_and_send_only_new_chunks(run: Run, tmp_path: Path) -> None:
    data = bytearray(random.Random(1).randbytes(8 * MiB))
    src = tmp_path / "cube.bin"
    src.write_bytes(data)

    first = run("upload", "alice/cubes", str(src), "--kind", "dataset", "-m", "v1")
    assert "Hashing" in first.stderr and "Uploading cube.bin" in first.stderr
    assert "8.4/8.4 MB" in first.stderr  # the bars end complete
    assert "large file(s) stored as Git LFS files" in first.stderr

    data[4 * MiB : 4 * MiB + 100_000] = random.Random(2).randbytes(100_000)
    src.write_bytes(data)
    result = json.loads(run("upload", "alice/cubes", str(src), "--json", "-m", "v2").stdout)
    assert result["bytes"] == 8 * MiB and result["chunked_files"] == ["cube.bin"]
    assert result["bytes_sent"] < MiB  # the edited chunks only

    out = run("download", "alice/cubes", "cube.bin", "--to", str(tmp_path / "dl"))
    assert "Downloading" in out.stderr and "8.4/8.4 MB" in out.stderr
    got = tmp_path / "dl" / "cube.bin"
    assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_json_output_has_no_progress_bars(run: Run, tmp_path: Path) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(random.Random(3).randbytes(2 * MiB))
    result = run("upload", "alice/quiet", str(src), "--json")
    assert json.loads(result.stdout)["bytes_sent"] >= 2 * MiB
    assert "Hashing" not in result.stderr and "Uploading" not in result.stderr
