"""Uploads through the SDK: a file or a folder as one commit, streamed from disk, with optimistic locking."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from opensci.client import Client, ConflictError, ValidationError
from tests.client.conftest import Raw, write_tree
from tests.conftest import Account, LiveServer

NESTED = {
    "README.md": b"# Survey\n",
    ".hidden": b"kept\n",
    "data/a.csv": b"id,flux\n1,0.5\n",
    "data/deep/nested/b.bin": os.urandom(100_000),
    "docs/na\u00efve r\u00e9sum\u00e9.txt": "caf\u00e9\n".encode(),
    'docs/odd "quoted" name;x.txt': b"quote\n",
    "with space.txt": b"space\n",
}


def test_upload_a_folder_of_nested_files_as_one_commit(sdk: Client, raw: Raw, tmp_path: Path) -> None:
    sdk.create_repo("survey")
    first = sdk.upload("alice/survey", write_tree(tmp_path / "v0", {"old.txt": b"old\n"}))
    src = write_tree(tmp_path / "src", {**NESTED, ".git/config": b"[core]\n", "sub/.git": b"gitdir: x\n"})
    calls: list[tuple[int, int]] = []

    commit = sdk.upload(
        "alice/survey",
        src,
        message="Add the survey",
        progress=lambda done, total: calls.append((done, total)),
    )

    assert raw.commits("alice/survey") == [commit, first]  # exactly one new commit
    assert sdk.get_commit("alice/survey").title == "Add the survey"
    assert raw.files("alice/survey") == {"old.txt": 4, **{p: len(d) for p, d in NESTED.items()}}
    for path, data in NESTED.items():
        assert raw.file("alice/survey", commit, path) == data
    total = sum(len(d) for d in NESTED.values())
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_upload_a_folder_under_a_path_and_a_file_to_a_path(sdk: Client, raw: Raw, tmp_path: Path) -> None:
    sdk.create_repo("placed")
    src = write_tree(tmp_path / "src", {"a.txt": b"a\n", "b/c.txt": b"c\n"})
    sdk.upload("alice/placed", src, "inputs/raw")
    sdk.upload("alice/placed", src / "a.txt")  # default: its name, at the root
    sdk.upload("alice/placed", src / "a.txt", "copies/")  # into a folder
    sdk.upload("alice/placed", src / "a.txt", "/renamed.txt")
    assert set(raw.files("alice/placed")) == {
        "inputs/raw/a.txt",
        "inputs/raw/b/c.txt",
        "a.txt",
        "copies/a.txt",
        "renamed.txt",
    }
    assert sdk.get_commit("alice/placed").title == "Upload a.txt"


def test_dot_means_the_root_and_bad_destinations_fail_before_sending(
    sdk: Client, raw: Raw, tmp_path: Path
) -> None:
    sdk.create_repo("dotted")
    src = write_tree(tmp_path / "src", {"analyze.py": b"print(1)\n", "lib/util.py": b"x = 1\n"})
    sdk.upload("alice/dotted", src, ".")
    sdk.upload("alice/dotted", src, "./")
    sdk.upload("alice/dotted", src, "./v2/./code//")
    sdk.upload("alice/dotted", src / "analyze.py", "./copies/")
    sdk.upload("alice/dotted", src / "analyze.py", "./copies/renamed.py")
    sdk.upload("alice/dotted", src / "analyze.py", "notes/.")  # into notes/
    assert set(raw.files("alice/dotted")) == {
        "analyze.py",
        "lib/util.py",
        "v2/code/analyze.py",
        "v2/code/lib/util.py",
        "copies/analyze.py",
        "copies/renamed.py",
        "notes/analyze.py",
    }
    sdk.upload("alice/dotted", src / "analyze.py", "./gone.py")
    sdk.upload("alice/dotted", src / "analyze.py", "kept.py", delete=["./gone.py"])
    assert "gone.py" not in raw.files("alice/dotted") and "kept.py" in raw.files("alice/dotted")

    commits = raw.commits("alice/dotted")
    refused = {
        "..": "'..' segment",
        "../outside": "'..' segment",
        "a/../b": "'..' segment",
        ".git/hooks": "'.git' segment",
        "data\\raw": "use '/' to separate folders",
    }
    for dest, message in refused.items():
        with pytest.raises(ValidationError) as err:
            sdk.upload("alice/dotted", src, dest)
        assert err.value.code == "invalid_path" and message in err.value.message, dest
        assert err.value.status == 0  # refused before anything was sent
    with pytest.raises(ValidationError) as root:
        sdk.upload("alice/dotted", src / "analyze.py", "x.py", delete=["."])
    assert root.value.code == "invalid_path"
    hidden = write_tree(tmp_path / "hidden", {"sub/.Git/config": b"x\n"})
    with pytest.raises(ValidationError) as git_dir:
        sdk.upload("alice/dotted", hidden)
    assert git_dir.value.code == "invalid_path" and ".Git" in git_dir.value.message
    assert raw.commits("alice/dotted") == commits


def test_upload_with_deletes_and_to_another_branch(sdk: Client, raw: Raw, tmp_path: Path) -> None:
    sdk.create_repo("edits")
    src = write_tree(tmp_path / "src", {"keep.txt": b"k\n", "drop.txt": b"d\n", "old/x.txt": b"x\n"})
    base = sdk.upload("alice/edits", src)
    new = write_tree(tmp_path / "new", {"new.txt": b"n\n"}) / "new.txt"
    replaced = sdk.upload("alice/edits", new, delete=["drop.txt", "old"], message="Replace")
    assert set(raw.files("alice/edits")) == {"keep.txt", "new.txt"}
    sdk.create_branch("alice/edits", "dev")
    on_dev = sdk.upload("alice/edits", new, "dev-only.txt", branch="dev")
    assert raw.commits("alice/edits", rev="dev") == [on_dev, replaced, base]
    assert "dev-only.txt" not in raw.files("alice/edits")


def test_stale_parent_commit_is_a_conflict_and_writes_nothing(sdk: Client, raw: Raw, tmp_path: Path) -> None:
    sdk.create_repo("locked")
    f = write_tree(tmp_path / "f", {"a.txt": b"1\n", "b.txt": b"2\n"})
    seen = sdk.upload("alice/locked", f / "a.txt")
    moved = sdk.upload("alice/locked", f / "b.txt")  # someone else commits meanwhile

    with pytest.raises(ConflictError) as err:
        sdk.upload("alice/locked", f / "a.txt", "late.txt", parent_commit=seen)
    assert err.value.code == "stale_parent" and err.value.status == 409
    assert "opensci log" in err.value.hint
    assert raw.commits("alice/locked") == [moved, seen]
    assert "late.txt" not in raw.files("alice/locked")

    ok = sdk.upload("alice/locked", f / "a.txt", "late.txt", parent_commit=moved)
    assert raw.commits("alice/locked") == [ok, moved, seen]


def test_upload_of_nothing_or_of_a_missing_path_fails_clearly(sdk: Client, tmp_path: Path) -> None:
    sdk.create_repo("empty")
    (tmp_path / "void").mkdir()
    with pytest.raises(ValidationError) as err:
        sdk.upload("alice/empty", tmp_path / "void")
    assert err.value.code == "empty_commit"
    with pytest.raises(FileNotFoundError):
        sdk.upload("alice/empty", tmp_path / "missing")


_MEASURE = """
import json, sys, tracemalloc
from pathlib import Path
from opensci.client import Client


def peak_rss_kib():  # this process's own peak RSS (VmHWM restarts at exec, unlike ru_maxrss)
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1])


url, token, repo, path = sys.argv[1:5]
with Client(url, token) as c:
    c.whoami()  # imports and a connection, before measuring
    rss_before = peak_rss_kib()
    tracemalloc.start()
    commit = c.upload(repo, path, message="big")
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss_after = peak_rss_kib()
growth = None if rss_before is None else rss_after - rss_before
print(json.dumps({"commit": commit, "traced_peak": traced_peak, "rss_growth_kib": growth}))
"""


def _measure_upload(live_server: LiveServer, alice: Account, path: Path) -> dict[str, Any]:
    """Upload `path` from a fresh process; its commit id and how much memory the upload took."""
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, live_server.url, alice.token, "alice/big", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    return json.loads(out)


def test_a_30_mb_upload_streams_from_disk(
    sdk: Client, raw: Raw, live_server: LiveServer, alice: Account, tmp_path: Path
) -> None:
    sdk.create_repo("big", kind="dataset")
    big = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with open(big, "wb") as fh:
        for _ in range(30):
            chunk = os.urandom(1024 * 1024)
            digest.update(chunk)
            fh.write(chunk)

    measured = _measure_upload(live_server, alice, big)
    commit = measured["commit"]

    # The uploading process holds far less than the file at any time (it is sent 1 MiB at a time).
    assert measured["traced_peak"] < 8 * 1024 * 1024, measured
    if measured["rss_growth_kib"] is not None:
        assert measured["rss_growth_kib"] < 8 * 1024, measured
    assert raw.files("alice/big")["big.bin"] == 30 * 1024 * 1024
    assert hashlib.sha256(raw.file("alice/big", commit, "big.bin")).hexdigest() == digest.hexdigest()


def test_a_folder_upload_never_follows_a_link_out_of_the_folder(
    sdk: Client, raw: Raw, tmp_path: Path
) -> None:
    secret = tmp_path / "elsewhere" / "id_rsa"
    secret.parent.mkdir()
    secret.write_bytes(b"PRIVATE KEY\n")
    src = write_tree(tmp_path / "src", {"data/table.csv": b"a,b\n1,2\n"})
    (src / "key").symlink_to(secret)
    (src / "latest.csv").symlink_to(src / "data" / "table.csv")  # inside the folder: uploaded

    sdk.create_repo("links")
    sdk.upload("alice/links", src)

    assert raw.files("alice/links") == {"data/table.csv": 8, "latest.csv": 8}
