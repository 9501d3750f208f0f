"""The user commands (`opensci login|whoami|repo|upload|download|ls|log`) against a live server, through
the real Typer app, with OPENSCI_URL / OPENSCI_TOKEN (or the saved login) pointing at it."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from click.testing import Result
from typer.testing import CliRunner

from opensci.cli.main import app as cli
from opensci.client import config
from tests.client.conftest import Raw, write_tree
from tests.conftest import Account, LiveServer, free_port

Run = Callable[..., Result]


@pytest.fixture
def run(live_server: LiveServer, alice: Account) -> Run:
    """Invoke the CLI as alice (or `token=`) and check the exit code (`code=`)."""
    runner = CliRunner()

    def invoke(
        *args: str, token: str | None = alice.token, code: int = 0, input: str | None = None
    ) -> Result:
        env = {"OPENSCI_URL": live_server.url, "OPENSCI_TOKEN": token, "COLUMNS": "200"}
        result = runner.invoke(cli, list(args), env=env, input=input)
        assert result.exit_code == code, f"exit {result.exit_code}: {result.output}{result.exception!r}"
        assert "Traceback" not in result.output
        return result

    return invoke


@pytest.fixture
def raw(live_server: LiveServer, alice: Account) -> Raw:
    return Raw(live_server.url, alice.token)


def test_login_with_a_password_saves_a_private_config_used_by_whoami_until_logout(
    live_server: LiveServer, alice: Account
) -> None:
    runner = CliRunner()
    no_env = {"OPENSCI_URL": None, "OPENSCI_TOKEN": None}
    result = runner.invoke(
        cli,
        ["login", "--url", live_server.url, "--username", "alice", "--password", alice.password],
        env=no_env,
    )
    assert result.exit_code == 0, result.output
    assert f"Logged in to {live_server.url} as alice" in result.stdout
    path = config.config_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = config.load()
    assert saved.url == live_server.url and saved.token.startswith("osci_") and saved.token_id

    result = runner.invoke(cli, ["whoami", "--json"], env=no_env)  # no environment: the saved login
    assert result.exit_code == 0, result.output
    me = json.loads(result.stdout)
    assert (me["name"], me["token_scope"], me["url"]) == ("alice", "write", live_server.url)

    result = runner.invoke(cli, ["logout"], env=no_env)
    assert result.exit_code == 0 and not path.exists()
    revoked = httpx.get(f"{live_server.url}/api/v1/user", headers={"Authorization": f"Bearer {saved.token}"})
    assert revoked.status_code == 401  # the token login created is revoked too

    result = runner.invoke(cli, ["whoami"], env={**no_env, "OPENSCI_URL": live_server.url})
    assert result.exit_code == 1
    assert "error: log in or send an API token" in result.stderr
    assert "hint: run `opensci login` or set OPENSCI_TOKEN" in result.stderr


def test_login_with_a_token_or_a_prompted_password(run: Run, live_server: LiveServer, alice: Account) -> None:
    run("login", "--url", live_server.url, "--token", alice.read_token, token=None)
    assert config.load().token == alice.read_token and config.load().token_id == ""
    assert "alice" in run("whoami", token=None).stdout and "read" in run("whoami", token=None).stdout
    run("login", "--url", live_server.url, "--username", "alice", token=None, input=f"{alice.password}\n")
    assert config.load().token != alice.read_token
    run("login", "--url", live_server.url, token=None, input=f"{alice.token}\n")  # asks for a token
    assert config.load().token == alice.token


def test_login_with_a_wrong_password_saves_nothing(run: Run, live_server: LiveServer) -> None:
    result = run("login", "--url", live_server.url, "-u", "alice", "--password", "nope", token=None, code=1)
    assert "error: wrong user name or password" in result.stderr and "hint:" in result.stderr
    assert not config.config_path().exists()


def test_repo_create_list_info_and_delete(run: Run) -> None:
    made = json.loads(
        run(
            "repo", "create", "alice/stars", "--kind", "dataset", "--private",
            "--description", "Bright stars", "--license", "CC-BY-4.0", "--json",
        ).stdout
    )  # fmt: skip
    assert (made["full_name"], made["kind"], made["private"], made["license"]) == (
        "alice/stars",
        "dataset",
        True,
        "CC-BY-4.0",
    )
    assert "code repository alice/analysis" in run("repo", "create", "analysis").stdout
    assert "already exists" in run("repo", "create", "analysis", code=1).stderr
    run("repo", "create", "analysis", "--exist-ok")

    listed = json.loads(run("repo", "list", "--json").stdout)
    assert {r["full_name"] for r in listed} == {"alice/stars", "alice/analysis"}
    table = run("repo", "list").stdout
    assert "REPOSITORY" in table and "alice/stars" in table and "private" in table and "Bright stars" in table
    assert [r["name"] for r in json.loads(run("repo", "list", "--kind", "dataset", "--json").stdout)] == [
        "stars"
    ]
    assert [r["name"] for r in json.loads(run("repo", "list", "--search", "bright", "--json").stdout)] == [
        "stars"
    ]
    assert len(json.loads(run("repo", "list", "--limit", "1", "--json").stdout)) == 1
    assert json.loads(run("repo", "list", "--owner", "nobody", "--json").stdout) == []

    info = run("repo", "info", "alice/stars").stdout
    assert "dataset" in info and "private" in info and "/datasets/alice/stars" in info
    assert json.loads(run("repo", "info", "alice/stars", "--json").stdout)["default_branch"] == "main"

    assert "Aborted" in run("repo", "delete", "alice/stars", input="n\n", code=1).output
    run("repo", "info", "alice/stars")
    run("repo", "delete", "alice/stars", input="y\n")
    assert json.loads(run("repo", "delete", "alice/analysis", "--yes", "--json").stdout) == {
        "deleted": "alice/analysis"
    }
    assert json.loads(run("repo", "list", "--json").stdout) == []


def test_upload_a_file_and_a_folder_creating_the_repository(run: Run, raw: Raw, tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"a.csv": b"x\n1\n", "sub/b.txt": b"b\n", ".git/HEAD": b"ref\n"})
    out = run("upload", "alice/survey", str(src / "a.csv"), "--kind", "dataset", "-m", "First file")
    commit, url = out.stdout.split()
    assert raw.commits("alice/survey") == [commit]
    assert url.endswith("/datasets/alice/survey")
    assert "Created dataset repository alice/survey" in out.stderr

    result = json.loads(run("upload", "alice/survey", str(src), "inputs", "--json").stdout)
    assert raw.commits("alice/survey") == [result["commit"], commit]
    assert sorted(result["files"]) == ["inputs/a.csv", "inputs/sub/b.txt"] and result["created_repo"] is False
    assert raw.files("alice/survey") == {"a.csv": 4, "inputs/a.csv": 4, "inputs/sub/b.txt": 2}
    assert raw.file("alice/survey", result["commit"], "inputs/sub/b.txt") == b"b\n"

    run("upload", "alice/survey", str(src / "a.csv"), "--kind", "dataset", "--private")  # exists: uploads
    mismatch = run("upload", "alice/survey", str(src / "a.csv"), "--kind", "model", code=1)
    assert "alice/survey is a dataset repository, not a model one" in mismatch.stderr
    assert "does not exist" in run("upload", "alice/survey", str(tmp_path / "missing"), code=2).output


def test_download_ls_and_log(run: Run, tmp_path: Path) -> None:
    src = write_tree(
        tmp_path / "src", {"README.md": b"# hi\n", "data/a.csv": b"a\n", "data/deep/b.csv": b"bb\n"}
    )
    first = run("upload", "alice/proj", str(src), "-m", "Add data").stdout.split()[0]
    (src / "README.md").write_bytes(b"# changed\n")
    second = run("upload", "alice/proj", str(src / "README.md"), "-m", "Edit README").stdout.split()[0]
    os.chdir(tmp_path)

    assert run("download", "alice/proj").stdout.strip() == "proj"  # like git clone: ./NAME
    assert (tmp_path / "proj" / "data" / "deep" / "b.csv").read_bytes() == b"bb\n"
    got = json.loads(run("download", "alice/proj", "data", "--rev", first, "--to", "out", "--json").stdout)
    assert got["commit"] == first
    assert sorted(got["files"]) == ["out/data/a.csv", "out/data/deep/b.csv"]
    assert run("download", "alice/proj", "README.md", "--rev", first, "--to", "old").stdout.strip() == str(
        Path("old/README.md")
    )
    assert (tmp_path / "old" / "README.md").read_bytes() == b"# hi\n"

    listing = run("ls", "alice/proj").stdout.splitlines()
    assert listing[0].startswith("dir") and listing[0].endswith("data/")
    assert any(line.endswith("README.md") and "10 B" in line for line in listing)
    deep = json.loads(run("ls", "alice/proj", "data", "-r", "--json").stdout)
    assert [e["path"] for e in deep["entries"]] == ["data/deep", "data/deep/b.csv", "data/a.csv"]
    assert deep["commit"] == second
    assert run("ls", "alice/proj", "data/a.csv").stdout.split()[-1] == "data/a.csv"

    log = run("log", "alice/proj").stdout.splitlines()
    assert [line.split()[0] for line in log] == [second[:12], first[:12]]
    assert log[0].endswith("Edit README")
    assert [c["id"] for c in json.loads(run("log", "alice/proj", "-n", "1", "--json").stdout)] == [second]
    assert [c["title"] for c in json.loads(run("log", "alice/proj", "--path", "data", "--json").stdout)] == [
        "Add data"
    ]


def test_errors_print_the_message_and_a_hint_and_exit_1(run: Run, bob: Account) -> None:
    run("repo", "create", "secret", "--private")
    result = run("repo", "info", "alice/secret", token=bob.token, code=1)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == "error: repository alice/secret not found"
    assert lines[1].startswith("hint: check OWNER/NAME")
    as_json = json.loads(run("repo", "info", "alice/secret", "--json", token=bob.token, code=1).stdout)
    assert as_json["error"] == "repo_not_found" and as_json["hint"]
    result = run("ls", "alice/secret", "--rev", "nope", code=1)
    assert "revision 'nope' not found" in result.stderr and "hint:" in result.stderr
    assert "OWNER/NAME" in run("repo", "info", "no-slash", code=2).output  # usage errors exit 2


def test_an_unreachable_server_is_one_clear_error(alice: Account) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli, ["whoami"], env={"OPENSCI_URL": url, "OPENSCI_TOKEN": alice.token})
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"error: cannot reach the OpenSci server at {url}" in result.stderr
    assert "hint: check that an OpenSci server runs" in result.stderr
