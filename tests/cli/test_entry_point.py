"""The installed `opensci` executable: a real process against a live server, and a light start-up that
imports nothing of the server (no sqlalchemy, fastapi or pygit2) for the SDK and the user commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import Account, LiveServer, need

SERVER_MODULES = ("sqlalchemy", "fastapi", "pygit2", "starlette", "alembic")


def _opensci() -> str:
    exe = Path(sys.executable).parent / "opensci"
    need(exe.exists(), f"{exe} is not installed (pip install -e .)")
    return str(exe)


def _env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "XDG_CONFIG_HOME", "LANG")}
    return {**keep, "COLUMNS": "200", **extra}


def _imported(stderr: str) -> set[str]:
    """Top-level packages named by PYTHONPROFILEIMPORTTIME's report on stderr."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_the_installed_command_uploads_and_reports_json(
    live_server: LiveServer, alice: Account, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "x.txt").write_text("x\n")
    env = _env(OPENSCI_URL=live_server.url, OPENSCI_TOKEN=alice.token, PYTHONPROFILEIMPORTTIME="1")
    proc = subprocess.run(
        [_opensci(), "upload", "alice/cli-data", str(data), "--kind", "dataset", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["repo"] == "alice/cli-data" and out["files"] == ["sub/x.txt"] and len(out["commit"]) == 40
    imported = _imported(proc.stderr)
    assert "httpx" in imported  # the report works, and the command did use the SDK
    assert not imported & set(SERVER_MODULES), imported & set(SERVER_MODULES)

    proc = subprocess.run([_opensci(), "whoami"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith(f"alice on {live_server.url}")


def test_help_is_light_and_errors_exit_1_without_a_traceback(live_server: LiveServer) -> None:
    env = _env(OPENSCI_URL=live_server.url, PYTHONPROFILEIMPORTTIME="1")
    proc = subprocess.run([_opensci(), "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "upload" in proc.stdout and "download" in proc.stdout
    imported = _imported(proc.stderr)
    assert "typer" in imported
    assert not imported & {*SERVER_MODULES, "httpx"}, imported & {*SERVER_MODULES, "httpx"}

    proc = subprocess.run(
        [_opensci(), "repo", "info", "alice/nothing"],
        env=_env(OPENSCI_URL=live_server.url),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[:1] == ["error: repository alice/nothing not found"]
    assert "hint:" in proc.stderr and "Traceback" not in proc.stderr


def test_importing_the_sdk_pulls_in_nothing_of_the_server() -> None:
    code = (
        "import sys, opensci; opensci.Client; import opensci.client;"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {SERVER_MODULES!r}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert proc.stdout.strip() == "[]"


def test_a_bad_setting_is_one_clear_line_per_setting(tmp_path: Path) -> None:
    env = _env(OPENSCI_HOME=str(tmp_path), OPENSCI_SQL_MEMORY_LIMIT="lots", OPENSCI_SQL_THREADS="0")
    proc = subprocess.run(
        [_opensci(), "serve", "--port", "1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("opensci: bad setting OPENSCI_SQL_MEMORY_LIMIT='lots': ")
    assert "not a memory size" in lines[0]
    assert lines[1].startswith("opensci: bad setting OPENSCI_SQL_THREADS='0': ")
    assert "Traceback" not in proc.stderr
