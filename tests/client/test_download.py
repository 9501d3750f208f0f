"""Downloads through the SDK: files, folders and whole repositories pinned to one commit, resumed and
verified."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from opensci.client import Client, EntryNotFoundError, TransferError
from opensci.client.transfer import git_blob_id, local_target
from tests.client.conftest import Raw, write_tree

FILES = {
    "README.md": b"# Stars\n",
    "data/stars.csv": b"id,mag\n" + b"".join(f"{i},{i % 7}.5\n".encode() for i in range(5000)),
    "data/deep/notes.txt": "na\u00efve\n".encode(),
    "model/weights.bin": os.urandom(300_000),
    "docs/r\u00e9sum\u00e9 #1?.txt": b"odd name\n",
}


@pytest.fixture
def stars(sdk: Client, tmp_path: Path) -> str:
    sdk.create_repo("stars", kind="dataset")
    return sdk.upload("alice/stars", write_tree(tmp_path / "src", FILES), message="Add stars")


def test_download_file_to_default_and_given_places(sdk: Client, stars: str, tmp_path: Path) -> None:
    os.chdir(tmp_path)
    assert sdk.download_file("alice/stars", "data/stars.csv") == Path("stars.csv")
    assert Path("stars.csv").read_bytes() == FILES["data/stars.csv"]
    dest = sdk.download_file("alice/stars", "model/weights.bin", local_path=tmp_path / "w.bin")
    assert dest.read_bytes() == FILES["model/weights.bin"]
    (tmp_path / "into").mkdir()
    into = sdk.download_file("alice/stars", "README.md", rev=stars[:8], local_path=tmp_path / "into")
    assert into == tmp_path / "into" / "README.md" and into.read_bytes() == FILES["README.md"]
    assert not list(tmp_path.rglob("*.part"))
    with pytest.raises(EntryNotFoundError):
        sdk.download_file("alice/stars", "data/missing.csv")


def test_download_file_resumes_a_partial_file_with_a_range_request(
    sdk: Client, raw: Raw, stars: str, tmp_path: Path
) -> None:
    data = FILES["model/weights.bin"]
    target = tmp_path / "weights.bin"
    (tmp_path / "weights.bin.part").write_bytes(data[:100_000])  # an interrupted earlier download
    calls: list[tuple[int, int]] = []

    sdk.download_file(
        "alice/stars", "model/weights.bin", local_path=target, progress=lambda d, t: calls.append((d, t))
    )

    assert target.read_bytes() == data
    assert not (tmp_path / "weights.bin.part").exists()
    assert calls[0] == (100_000, len(data)) and calls[-1] == (len(data), len(data))  # started at the offset
    # The server answered 206 Partial Content (its metrics count a request once its reply has gone out).
    partial = 'route="/api/v1/repos/{owner}/{name}/raw/{rev_path:path}",status="206"'
    deadline = time.monotonic() + 5
    while partial not in raw.metrics() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert partial in raw.metrics()


def test_a_partial_file_with_other_bytes_is_detected_and_downloaded_again(
    sdk: Client, stars: str, tmp_path: Path
) -> None:
    data = FILES["model/weights.bin"]
    target = tmp_path / "weights.bin"
    (tmp_path / "weights.bin.part").write_bytes(b"\0" * 5000)  # left from other content
    sdk.download_file("alice/stars", "model/weights.bin", local_path=target)
    assert git_blob_id(target) == git_blob_id_of(data)
    assert target.read_bytes() == data
    (tmp_path / "weights.bin.part").write_bytes(data + b"tail")  # longer than the file: 416, then again
    sdk.download_file("alice/stars", "model/weights.bin", local_path=target)
    assert target.read_bytes() == data


def git_blob_id_of(data: bytes) -> str:
    import hashlib

    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def test_download_a_whole_repository_a_folder_and_a_single_file(
    sdk: Client, stars: str, tmp_path: Path
) -> None:
    calls: list[tuple[int, int]] = []
    everything = sdk.download(
        "alice/stars", local_dir=tmp_path / "all", progress=lambda d, t: calls.append((d, t))
    )
    assert everything.commit == stars
    assert sorted(p.relative_to(tmp_path / "all").as_posix() for p in everything.files) == sorted(FILES)
    for path, data in FILES.items():
        assert (tmp_path / "all" / path).read_bytes() == data
    total = sum(map(len, FILES.values()))
    assert calls[0] == (0, total) and calls[-1] == (total, total)

    folder = sdk.download("alice/stars", "data", local_dir=tmp_path / "part")
    assert sorted(p.relative_to(tmp_path / "part").as_posix() for p in folder.files) == [
        "data/deep/notes.txt",
        "data/stars.csv",
    ]
    one = sdk.download("alice/stars", "README.md", local_dir=tmp_path / "one")
    assert one.files == [tmp_path / "one" / "README.md"] and one.files[0].read_bytes() == FILES["README.md"]


def test_files_already_present_are_not_downloaded_again(sdk: Client, stars: str, tmp_path: Path) -> None:
    sdk.download("alice/stars", local_dir=tmp_path / "d")
    kept = tmp_path / "d" / "model" / "weights.bin"
    changed = tmp_path / "d" / "README.md"
    before = kept.stat().st_mtime_ns
    changed.write_bytes(b"# Edited locally\n")
    sdk.download("alice/stars", local_dir=tmp_path / "d")
    assert kept.stat().st_mtime_ns == before  # same content: skipped
    assert changed.read_bytes() == FILES["README.md"]  # different content: downloaded again


def test_folder_download_is_pinned_to_one_commit_while_the_branch_moves(
    sdk: Client, raw: Raw, tmp_path: Path
) -> None:
    sdk.create_repo("moving")
    v1 = {f"part/{i:02}.txt": f"v1 {i}\n".encode() for i in range(12)}
    first = sdk.upload("alice/moving", write_tree(tmp_path / "v1", v1))
    v2 = write_tree(tmp_path / "v2", {p: b"v2, different and longer\n" for p in v1})
    moved: list[str] = []

    def move_branch_once(done: int, total: int) -> None:
        if not moved:  # as the download starts, someone commits new content for every file
            moved.append(sdk.upload("alice/moving", v2, message="v2"))

    result = sdk.download(
        "alice/moving", "part", local_dir=tmp_path / "out", progress=move_branch_once, workers=3
    )

    assert raw.commits("alice/moving")[0] == moved[0] != first  # the branch did move
    assert result.commit == first
    for path, data in v1.items():
        assert (tmp_path / "out" / path).read_bytes() == data


def test_paths_that_would_escape_the_target_folder_are_refused(tmp_path: Path) -> None:
    assert local_target(tmp_path, "a/b.txt") == tmp_path / "a" / "b.txt"
    for bad in ("../x", "a/../../x", "/etc/passwd", "a//b", "a\\b"):
        with pytest.raises(TransferError):
            local_target(tmp_path, bad)
