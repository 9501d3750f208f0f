"""Every server error reaches SDK users as a typed exception with the server's code, a request id and a
hint naming the next step."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from opensci.app import create_app
from opensci.client import (
    Client,
    ConflictError,
    ConnectionFailed,
    EntryNotFoundError,
    ForbiddenError,
    NotFoundError,
    OpenSciError,
    PayloadTooLargeError,
    RepoNotFoundError,
    RevisionNotFoundError,
    UnauthorizedError,
    ValidationError,
)
from opensci.settings import Settings
from tests.client.conftest import write_tree
from tests.conftest import Account, LiveServer, free_port


def test_a_private_repository_is_not_found_for_others(sdk: Client, bob_sdk: Client, tmp_path: Path) -> None:
    sdk.create_repo("hidden", private=True)
    with pytest.raises(RepoNotFoundError) as err:
        bob_sdk.repo_info("alice/hidden")
    e = err.value
    assert isinstance(e, NotFoundError) and isinstance(e, OpenSciError)
    assert (e.status, e.code) == (404, "repo_not_found")
    assert "alice/hidden" in e.message and len(e.request_id) >= 16
    assert "opensci whoami" in e.hint
    with pytest.raises(RepoNotFoundError):
        bob_sdk.upload("alice/hidden", write_tree(tmp_path, {"a.txt": b"a"}) / "a.txt")


def test_missing_revision_and_entry(sdk: Client, tmp_path: Path) -> None:
    sdk.create_repo("r")
    sdk.upload("alice/r", write_tree(tmp_path, {"a.txt": b"a"}) / "a.txt")
    with pytest.raises(RevisionNotFoundError) as rev:
        sdk.list_tree("alice/r", rev="v9")
    with pytest.raises(EntryNotFoundError) as entry:
        sdk.download_file("alice/r", "b.txt", local_path=tmp_path / "b.txt")
    assert (rev.value.code, entry.value.code) == ("revision_not_found", "entry_not_found")
    assert not (tmp_path / "b.txt").exists() and not (tmp_path / "b.txt.part").exists()


def test_no_token_or_a_bad_token_is_unauthorized(live_server: LiveServer, alice: Account) -> None:
    with Client(live_server.url, token="") as anonymous, pytest.raises(UnauthorizedError) as err:
        anonymous.create_repo("x")
    assert (err.value.status, err.value.code) == (401, "login_required")
    assert "opensci login" in err.value.hint and "OPENSCI_TOKEN" in err.value.hint
    with Client(live_server.url, token="osci_not-a-token") as wrong, pytest.raises(UnauthorizedError) as err:
        wrong.whoami()
    assert err.value.code == "invalid_token"


def test_a_read_token_cannot_push(
    live_server: LiveServer, alice: Account, sdk: Client, tmp_path: Path
) -> None:
    sdk.create_repo("mine")
    with Client(live_server.url, alice.read_token) as reader, pytest.raises(ForbiddenError) as err:
        reader.upload("alice/mine", write_tree(tmp_path, {"a.txt": b"a"}) / "a.txt")
    assert (err.value.status, err.value.code) == (403, "insufficient_scope")
    assert "write scope" in err.value.hint


def test_writing_to_someone_elses_repository_is_forbidden(
    sdk: Client, bob_sdk: Client, tmp_path: Path
) -> None:
    sdk.create_repo("public")
    with pytest.raises(ForbiddenError) as err:
        bob_sdk.upload("alice/public", write_tree(tmp_path, {"a.txt": b"a"}) / "a.txt")
    assert err.value.code == "forbidden" and "write access" in err.value.hint
    with pytest.raises(ForbiddenError):
        bob_sdk.delete_repo("alice/public")


def test_conflict_and_validation(sdk: Client) -> None:
    sdk.create_repo("twice")
    with pytest.raises(ConflictError) as conflict:
        sdk.create_repo("twice")
    with pytest.raises(ValidationError) as invalid:
        sdk.create_repo("bad name!")
    assert (conflict.value.status, conflict.value.code) == (409, "repo_exists")
    assert (invalid.value.status, invalid.value.code) == (422, "invalid_name")
    assert "bad name!" in invalid.value.message and invalid.value.hint
    with pytest.raises(ValidationError) as err:
        sdk.repo_info("no-slash")
    assert err.value.code == "invalid_repo_id" and err.value.status == 0


@pytest.fixture
def small_server(settings: Settings) -> Iterator[LiveServer]:
    """A second app on the same database and files, accepting request bodies up to 64 KiB."""
    app = create_app(settings.model_copy(update={"max_upload_bytes": 64 * 1024}))
    server = LiveServer(app)
    server.start()
    yield server
    server.stop()
    app.state.db.dispose()


@pytest.mark.parametrize("size", [200_000, 20_000_000])
def test_an_upload_over_the_servers_limit_is_payload_too_large(
    small_server: LiveServer, alice: Account, tmp_path: Path, size: int
) -> None:
    with Client(small_server.url, alice.token) as c:
        c.create_repo("limited", exist_ok=True)
        big = tmp_path / "big.bin"
        big.write_bytes(b"x" * size)
        with pytest.raises(PayloadTooLargeError) as err:
            c.upload("alice/limited", big)
        assert (err.value.status, err.value.code) == (413, "payload_too_large")
        assert "OPENSCI_MAX_UPLOAD_BYTES" in err.value.hint
        assert list(c.list_commits("alice/limited")) == []
        c.upload(
            "alice/limited", write_tree(tmp_path / "s", {"small.txt": b"fits"}) / "small.txt"
        )  # still usable


def test_an_unreachable_server_is_a_connection_failure_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, token="", timeout=5) as c, pytest.raises(ConnectionFailed) as err:
        c.whoami()
    assert url in err.value.message and url in err.value.hint
    assert err.value.status == 0


def test_an_outdated_sdk_is_told_to_upgrade(sdk: Client) -> None:
    """Chunks named by sha256 (SDKs before BLAKE3 names): the hint is to upgrade, not to send again."""
    sdk.create_repo("old-sdk", kind="dataset")
    data = b"chunk bytes " * 2000
    body = struct.pack(">32sI", hashlib.sha256(data).digest(), len(data)) + data
    with pytest.raises(ValidationError) as err:
        sdk.request(
            "POST",
            sdk.api_path("alice/old-sdk", "uploads", "chunks"),
            content=body,
            headers={"Content-Type": "application/octet-stream"},
        )
    assert (err.value.status, err.value.code) == (422, "outdated_client")
    assert "pip install -U opensci" in err.value.hint and "upload again" not in err.value.hint
