"""Who may see and write what, as the client reports it. MODE picks the caller:
setup (alice creates alice/secret, private, and alice/open), stranger (bob), anonymous (no token),
bad-token, read-token (alice's read-only token)."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

mode = os.environ["MODE"]
api = HfApi()


def raises(call, exc, status: int | None = None) -> HfHubHTTPError:  # type: ignore[no-untyped-def]
    try:
        call()
    except exc as e:
        if status is not None:
            assert e.response.status_code == status, (e.response.status_code, str(e))
        return e
    raise SystemExit(f"expected {exc.__name__}")


if mode == "setup":
    for name, private in (("secret", True), ("open", False)):
        api.create_repo(f"alice/{name}", private=private)
        api.upload_file(path_or_fileobj=b"content\n", path_in_repo="f.txt", repo_id=f"alice/{name}")
elif mode in ("stranger", "anonymous"):
    status = 404 if mode == "stranger" else 401
    for call in (
        lambda: api.model_info("alice/secret"),
        lambda: api.list_repo_files("alice/secret"),
        lambda: api.list_repo_refs("alice/secret"),
        lambda: api.list_repo_commits("alice/secret"),
        lambda: api.get_paths_info("alice/secret", ["f.txt"]),
        lambda: hf_hub_download("alice/secret", "f.txt"),
        lambda: snapshot_download("alice/secret"),
        lambda: api.model_info("alice/no-such-repo"),
        lambda: hf_hub_download("alice/no-such-repo", "f.txt"),
    ):
        raises(call, RepositoryNotFoundError, status)
    assert not api.repo_exists("alice/secret") and not api.file_exists("alice/secret", "f.txt")
    assert "alice/secret" not in {m.id for m in api.list_models(author="alice")}
    assert "alice/open" in {m.id for m in api.list_models(author="alice")}
    assert Path(hf_hub_download("alice/open", "f.txt")).read_text() == "content\n"
    if mode == "stranger":
        # Writing to someone else's repository: 403 where it can be seen, "not found" where it cannot.
        raises(
            lambda: api.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="alice/open"),
            HfHubHTTPError,
            403,
        )
        raises(
            lambda: api.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="alice/secret"),
            RepositoryNotFoundError,
            404,
        )
        raises(lambda: api.delete_repo("alice/open"), HfHubHTTPError, 403)
        raises(lambda: api.create_repo("alice/mine"), HfHubHTTPError, 403)
elif mode == "bad-token":
    e = raises(lambda: api.model_info("alice/open", token="not-a-token"), HfHubHTTPError, 401)
    assert e.response.headers["X-Error-Message"] == "Invalid credentials in Authorization header"
    assert not isinstance(e, RepositoryNotFoundError)
    raises(lambda: api.whoami(token="not-a-token"), HfHubHTTPError, 401)
elif mode == "read-token":
    assert api.whoami()["auth"]["accessToken"]["role"] == "read"
    assert api.list_repo_files("alice/secret") == [".gitattributes", "f.txt"]
    e = raises(
        lambda: api.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="alice/secret"),
        HfHubHTTPError,
        403,
    )
    assert "read scope" in str(e), str(e)
    raises(lambda: api.create_repo("alice/more"), HfHubHTTPError, 403)
    raises(lambda: api.create_branch("alice/secret", branch="b"), HfHubHTTPError, 403)
print("ALL OK")
