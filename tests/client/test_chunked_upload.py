"""Large files through the SDK: cut into chunks as the server cuts them, only the missing chunks sent,
in parallel, resumable after an interruption; committed as Git LFS files and downloaded back intact."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy import update

from opensci.client import Client, UploadResult
from opensci.client import chunks as client_chunks
from opensci.storage import api as storage_api
from opensci.storage import chunking as server_chunking
from opensci.storage import files
from opensci.storage.maintenance import stats
from opensci.storage.models import StorageChunk
from tests.client.conftest import Raw
from tests.conftest import LiveServer

MiB = 1024 * 1024


def random_file(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def edit_middle(src: Path, dst: Path, n: int, seed: int) -> Path:
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    data[mid : mid + n] = random.Random(seed).randbytes(n)
    dst.write_bytes(bytes(data))
    return dst


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pack_bytes(app: FastAPI) -> int:
    return stats(app.state.blobs).pack_bytes


def pointer_in_git(app: FastAPI, sdk: Client, repo: str, commit: str, path: str) -> tuple[str, int] | None:
    g = app.state.store.open(sdk.repo_info(repo).id)
    return files.parse_pointer(g.revparse_single(f"{commit}:{path}").data)


def test_the_sdk_cuts_files_exactly_as_the_server_does(tmp_path: Path) -> None:
    for name in ("MIN_SIZE", "AVG_SIZE", "MAX_SIZE", "NORMALIZATION"):
        assert getattr(client_chunks, name) == getattr(server_chunking, name), name
    block = random.Random(1).randbytes(700_000)
    data = random.Random(2).randbytes(5 * MiB + 12345) + block * 4 + bytes(3 * MiB)  # random, repeats, zeros
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    seen: list[int] = []
    fc = client_chunks.chunk_file(path, seen.append)
    with io.BytesIO(data) as stream:
        server = server_chunking.ChunkedStream(stream)
        expected = [(d.hex(), len(b)) for block in server.blocks() for d, b in block]
    assert list(zip(fc.hashes, fc.lengths, strict=True)) == expected
    assert fc.oid == server.oid == hashlib.sha256(data).hexdigest() and fc.size == len(data)
    assert fc.offsets == [sum(fc.lengths[:i]) for i in range(len(fc.lengths))]
    assert sum(seen) == len(data)


def test_a_reupload_after_a_1_mib_edit_sends_a_few_percent(
    app: FastAPI, sdk: Client, raw: Raw, tmp_path: Path
) -> None:
    sdk.create_repo("survey", kind="dataset")
    size = 40 * MiB
    first_file = random_file(tmp_path / "cube.bin", size, 3)

    first = sdk.upload_with_result("alice/survey", first_file, "data/cube.bin", message="v1")
    assert isinstance(first, UploadResult) and first.chunked_files == ["data/cube.bin"]
    assert size <= first.bytes_sent < size * 1.01  # everything, plus 36 bytes of framing per chunk
    oid = sha256(first_file)
    assert pointer_in_git(app, sdk, "alice/survey", first.commit, "data/cube.bin") == (oid, size)
    after_first = pack_bytes(app)

    edited = edit_middle(first_file, tmp_path / "cube2.bin", MiB, 4)
    second = sdk.upload_with_result("alice/survey", edited, "data/cube.bin", message="v2")
    assert second.bytes_sent < 0.05 * size, second
    assert second.bytes_deduplicated > 0.95 * size
    assert pack_bytes(app) - after_first < 0.05 * size  # storage grew by the edit, not by the file
    assert pointer_in_git(app, sdk, "alice/survey", second.commit, "data/cube.bin") == (sha256(edited), size)

    # Both versions download byte for byte, from the blob store.
    for commit, src in ((first.commit, first_file), (second.commit, edited)):
        got = sdk.download_file("alice/survey", "data/cube.bin", rev=commit, local_path=tmp_path / "out.bin")
        assert sha256(got) == sha256(src)
    assert [c.title for c in sdk.list_commits("alice/survey")] == ["v2", "v1"]


def test_an_interrupted_upload_resumes_sending_only_what_is_missing(
    sdk: Client, raw: Raw, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_chunks, "BATCH_BYTES", MiB)
    sdk.create_repo("resume", kind="dataset")
    size = 12 * MiB
    path = random_file(tmp_path / "big.bin", size, 5)

    class Interrupted(Exception):
        pass

    sent_before: list[int] = []

    def stop_after_three_batches(done: int, total: int) -> None:
        if done:
            sent_before.append(done)
        if len(sent_before) == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        sdk.upload("alice/resume", path, workers=1, progress=stop_after_three_batches)
    assert list(sdk.list_commits("alice/resume")) == []  # nothing committed
    done_before = sent_before[-1]
    assert 2 * MiB < done_before < 4 * MiB

    again = sdk.upload_with_result("alice/resume", path, workers=3)
    assert again.bytes_sent < size - done_before + 64 * 1024, (again.bytes_sent, done_before)
    assert again.bytes_sent > size - done_before - 512 * 1024
    assert hashlib.sha256(raw.file("alice/resume", again.commit, "big.bin")).hexdigest() == sha256(path)


def test_progress_counts_every_byte_once_and_hashing_is_reported(sdk: Client, tmp_path: Path) -> None:
    sdk.create_repo("bars")
    src = tmp_path / "src"
    src.mkdir()
    random_file(src / "a.bin", 3 * MiB, 6)
    random_file(src / "b.bin", 2 * MiB, 7)
    (src / "small.txt").write_bytes(b"small\n")
    calls: list[tuple[int, int]] = []
    hashing: list[tuple[int, int]] = []

    result = sdk.upload_with_result(
        "alice/bars",
        src,
        progress=lambda d, t: calls.append((d, t)),
        hash_progress=lambda d, t: hashing.append((d, t)),
    )

    total = 5 * MiB + 6
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert hashing[0] == (0, 5 * MiB) and hashing[-1] == (5 * MiB, 5 * MiB)
    assert sorted(result.chunked_files) == ["a.bin", "b.bin"] and result.bytes_total == total
    assert sorted(result.files) == ["a.bin", "b.bin", "small.txt"]

    again = sdk.upload_with_result("alice/bars", src, message="same content")
    assert again.bytes_sent == 6  # only the small file travels again: the server has every chunk


def test_a_download_of_an_lfs_file_resumes_with_a_range(
    live_server: LiveServer, sdk: Client, raw: Raw, tmp_path: Path
) -> None:
    sdk.create_repo("weights", kind="model")
    path = random_file(tmp_path / "w.bin", 6 * MiB, 8)
    commit = sdk.upload("alice/weights", path)
    target = tmp_path / "dl" / "w.bin"
    target.parent.mkdir()
    part = target.with_name("w.bin.part")
    part.write_bytes(path.read_bytes()[: 2 * MiB])  # an interrupted earlier download
    seen: list[tuple[int, int]] = []
    sdk.download_file(
        "alice/weights", "w.bin", rev=commit, local_path=target, progress=lambda d, t: seen.append((d, t))
    )
    assert sha256(target) == sha256(path) and not part.exists()
    assert seen[0] == (2 * MiB, 6 * MiB)  # resumed where the partial file ended

    part.write_bytes(b"garbage" * 1000)  # a partial file of other bytes: detected, downloaded again
    sdk.download_file("alice/weights", "w.bin", rev=commit, local_path=target)
    assert sha256(target) == sha256(path)


def test_a_chunk_lost_while_the_manifest_streams_is_sent_again(
    app: FastAPI, sdk: Client, raw: Raw, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server answers the streamed manifest with the chunks it no longer has (here one a scrub
    quarantined right after it was stored): the SDK sends them again, then the whole manifest."""
    monkeypatch.setattr(client_chunks, "BATCH_BYTES", MiB)
    sdk.create_repo("lost", kind="dataset")
    size = 6 * MiB
    path = random_file(tmp_path / "f.bin", size, 9)
    fc = client_chunks.chunk_file(path)
    victim = bytes.fromhex(fc.hashes[0])
    lost: list[bytes] = []

    def quarantine_once_stored(done: int, total: int) -> None:
        # Called as each batch is acknowledged, before the part of the manifest it belongs to is released.
        if done and not lost:
            with app.state.db.session() as session:
                chunk = update(StorageChunk).where(StorageChunk.digest == victim)
                if session.execute(chunk.values(damaged=True)).rowcount:  # its batch is stored
                    lost.append(victim)
                session.commit()

    result = sdk.upload_with_result("alice/lost", path, progress=quarantine_once_stored)
    assert lost
    framing = client_chunks.FRAME.size
    once = size + framing * len(fc.unique())
    assert result.bytes_sent == once + framing + fc.lengths[0]  # the lost chunk travelled twice
    assert pointer_in_git(app, sdk, "alice/lost", result.commit, "f.bin") == (sha256(path), size)
    assert hashlib.sha256(raw.file("alice/lost", result.commit, "f.bin")).hexdigest() == sha256(path)


def test_batches_beyond_what_the_server_receives_at_once_wait_their_turn(
    app: FastAPI, sdk: Client, raw: Raw, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's defaults (4 workers, 16 MiB batches) against a server that receives two batches at once:
    the others wait their turn and the upload completes."""
    receiving = storage_api._Admission(2 * (client_chunks.BATCH_BYTES + MiB))
    monkeypatch.setattr(storage_api, "_receiving", receiving)
    peak, waited = [0], [0]
    real = receiving._acquire

    async def acquire(amount: int) -> None:
        waited[0] += receiving.used + amount > receiving.capacity
        await real(amount)
        peak[0] = max(peak[0], receiving.used)

    monkeypatch.setattr(receiving, "_acquire", acquire)
    sdk.create_repo("queued", kind="dataset")
    path = random_file(tmp_path / "big.bin", 5 * client_chunks.BATCH_BYTES + 12345, 11)
    result = sdk.upload_with_result("alice/queued", path)
    assert result.bytes_sent >= path.stat().st_size
    assert waited[0] > 0 and 0 < peak[0] <= receiving.capacity and receiving.used == 0
    assert pointer_in_git(app, sdk, "alice/queued", result.commit, "big.bin") == (
        sha256(path),
        path.stat().st_size,
    )
    assert hashlib.sha256(raw.file("alice/queued", result.commit, "big.bin")).hexdigest() == sha256(path)
