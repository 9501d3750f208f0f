"""Re-uploads of an edited file: the SDK keeps a fingerprint of what it uploaded to each path, and the next
upload to that path takes the old chunks of unchanged blocks as they are and cuts only around the changes.
Whatever the edit, the chunks must be exactly those of a cut of the whole new file; a damaged, foreign or
stale cache entry must never make an upload fail or commit other bytes."""

from __future__ import annotations

import hashlib
import os
import random
import stat
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi import FastAPI
from xxhash import xxh3_128_digest

from opensci.client import Client, fingerprints
from opensci.client import chunks as client_chunks
from opensci.client.errors import TransferError
from opensci.client.fingerprints import MAGIC, Fingerprint, Reuse
from opensci.storage.gc import gc
from tests.client.conftest import Raw, write_tree
from tests.client.test_chunked_upload import edit_middle, pointer_in_git, random_file, sha256

MiB = 1024 * 1024
SERVER = "http://opensci.example.org"
Piece = tuple[str, int, int]
Edit = Callable[[bytes, list[int]], bytes]


# --- helpers -----------------------------------------------------------------------------------------------


def block_prints(data: bytes) -> bytes:
    """The xxh3-128 of each 1 MiB block, computed here independently of the code under test."""
    return b"".join(xxh3_128_digest(data[i : i + MiB]) for i in range(0, len(data), MiB))


def names_of(fp: Fingerprint) -> list[str]:
    return [fp.names[i : i + 32].hex() for i in range(0, len(fp.names), 32)]


def fingerprint_of(path: Path) -> Fingerprint:
    return client_chunks.chunk_file(path).fingerprint()


def full_cut(path: Path) -> list[Piece]:
    fc = client_chunks.chunk_file(path)
    return list(zip(fc.hashes, fc.offsets, fc.lengths, strict=True))


def cut_like(path: Path, old: Fingerprint) -> Reuse:
    """Cut `path` as an edit of `old` and check the result against a cut of the whole file."""
    reuse = Reuse(path, old, client_chunks.new_chunker, client_chunks.MAX_SIZE)
    pieces = [piece for batch in reuse for piece in batch]
    full = client_chunks.chunk_file(path)
    data = path.read_bytes()
    expected = list(zip(full.hashes, full.offsets, full.lengths, strict=True))
    if pieces != expected:
        first = next(
            (i for i, (a, b) in enumerate(zip(pieces, expected, strict=False)) if a != b),
            min(len(pieces), len(expected)),
        )
        raise AssertionError(
            f"the pieces differ from a full cut at piece {first} of {len(expected)} "
            f"(got {pieces[first : first + 2]}, a full cut gives {expected[first : first + 2]}; "
            f"{len(pieces)} pieces against {len(expected)})"
        )
    assert full.prints == block_prints(data)
    assert reuse.prints == full.prints
    assert reuse.size == full.size == len(data)
    assert (reuse.hashes, reuse.offsets, reuse.lengths) == (full.hashes, full.offsets, full.lengths)
    # Only names the old file had are taken without being cut, and they are names of the new file.
    assert reuse.known <= set(names_of(old))
    assert reuse.known <= set(full.hashes)
    reusable = sum(n for h, _, n in pieces if h in reuse.known)
    assert 0 <= reuse.reused_bytes <= reusable <= len(data)
    return reuse


def overwrite(data: bytes, at: int, n: int, seed: int = 0) -> bytes:
    """`n` bytes from `at` changed (each byte XORed with a non-zero byte: every one differs)."""
    out = bytearray(data)
    noise = random.Random(seed).randbytes(n)
    for i in range(n):
        out[at + i] ^= noise[i] | 1
    return bytes(out)


def rand(n: int, seed: int = 99) -> bytes:
    return random.Random(seed).randbytes(n)


# --- 1. Reuse gives exactly the chunks of a full cut ---------------------------------------------------


def _bases() -> dict[str, bytes]:
    block = rand(300_000, 5)
    return {
        "unaligned": rand(11 * MiB + 12345, 1),
        "aligned": rand(8 * MiB, 2),
        # Zeros (chunks of MAX_SIZE with one name) and repeats: names occur several times in the old file.
        "repetitive": rand(2 * MiB, 3) + bytes(3 * MiB) + block * 5 + rand(MiB + 777, 4),
    }


BASES = _bases()


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Fingerprint]]:
    folder = tmp_path_factory.mktemp("bases")
    out: dict[str, tuple[Path, Fingerprint]] = {}
    for name, data in BASES.items():
        path = folder / f"{name}.bin"
        path.write_bytes(data)
        out[name] = (path, fingerprint_of(path))
    return out


EDITS: dict[str, tuple[Edit, float]] = {
    # name: (the edit, given the old bytes and the old chunk offsets; the least fraction reused)
    "identical": (lambda d, o: d, 1.0),
    "1 MiB in the middle": (lambda d, o: overwrite(d, len(d) // 2, MiB), 0.5),
    "a few bytes at offset 0": (lambda d, o: overwrite(d, 0, 5), 0.6),
    "the first byte": (lambda d, o: overwrite(d, 0, 1), 0.6),
    "the last byte": (lambda d, o: overwrite(d, len(d) - 1, 1), 0.6),
    "the last 3 bytes": (lambda d, o: overwrite(d, len(d) - 3, 3), 0.6),
    "across a block boundary": (lambda d, o: overwrite(d, 3 * MiB - 50, 100), 0.5),
    "the last byte of a block": (lambda d, o: overwrite(d, 2 * MiB - 1, 1), 0.5),
    "the first byte of a block": (lambda d, o: overwrite(d, 2 * MiB, 1), 0.5),
    "one whole block": (lambda d, o: overwrite(d, 4 * MiB, MiB), 0.5),
    "several separate edits": (
        lambda d, o: overwrite(
            overwrite(overwrite(overwrite(d, 100_000, 10), 2 * MiB + 500_000, 3000), 5 * MiB + 7, 1),
            len(d) - 20_000,
            50,
        ),
        0.2,
    ),
    "the first byte of an old chunk": (lambda d, o: overwrite(d, o[len(o) // 2], 1), 0.5),
    "the last byte of an old chunk": (lambda d, o: overwrite(d, o[len(o) // 2] - 1, 1), 0.5),
    "insertion in the middle": (lambda d, o: d[: len(d) // 2] + rand(1000) + d[len(d) // 2 :], 0.3),
    "insertion at the start": (lambda d, o: rand(17) + d, 0.0),
    "insertion of a whole block": (lambda d, o: d[: 2 * MiB] + rand(MiB) + d[2 * MiB :], 0.1),
    "deletion in the middle": (lambda d, o: d[: len(d) // 2] + d[len(d) // 2 + 5000 :], 0.3),
    "deletion of the first byte": (lambda d, o: d[1:], 0.0),
    "deletion of a whole block": (lambda d, o: d[: 2 * MiB] + d[3 * MiB :], 0.1),
    "truncation": (lambda d, o: d[: len(d) * 2 // 3], 0.6),
    "truncation to whole blocks": (lambda d, o: d[: 4 * MiB], 0.6),
    "truncation at an old chunk boundary": (lambda d, o: d[: o[len(o) // 2]], 0.5),
    "truncation by one byte": (lambda d, o: d[:-1], 0.6),
    "append 3 MiB": (lambda d, o: d + rand(3 * MiB), 0.4),
    "append one byte": (lambda d, o: d + b"x", 0.6),
    "append up to a whole block": (lambda d, o: d + rand(-len(d) % MiB or MiB), 0.6),
    "the file twice": (lambda d, o: d + d, 0.3),
    "halves swapped": (lambda d, o: d[len(d) // 2 :] + d[: len(d) // 2], 0.0),
    "empty": (lambda d, o: b"", 0.0),
    "smaller than a block, other bytes": (lambda d, o: rand(100_000), 0.0),
    "a prefix smaller than a block": (lambda d, o: d[:200_000], 0.0),
    "a prefix smaller than a chunk": (lambda d, o: d[:1000], 0.0),
    "other bytes, same size": (lambda d, o: rand(len(d), 7), 0.0),
    "zeros, same size": (lambda d, o: bytes(len(d)), 0.0),
}


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edited_file_is_cut_exactly_as_a_full_cut_would_cut_it(
    bases: dict[str, tuple[Path, Fingerprint]], base: str, edit: str, tmp_path: Path
) -> None:
    old_path, old = bases[base]
    change, least = EDITS[edit]
    new = tmp_path / "new.bin"
    new.write_bytes(change(old_path.read_bytes(), old.offsets()))

    reuse = cut_like(new, old)

    size = new.stat().st_size
    assert reuse.reused_bytes >= least * size, (reuse.reused_bytes, size)
    if edit == "identical":
        assert reuse.reused_bytes == size and reuse.known == set(names_of(old))


def test_most_of_a_file_is_reused_after_a_1_mib_edit(tmp_path: Path) -> None:
    old_path = random_file(tmp_path / "old.bin", 20 * MiB + 4321, 11)
    old = fingerprint_of(old_path)
    new = edit_middle(old_path, tmp_path / "new.bin", MiB, 12)

    reuse = cut_like(new, old)

    size = new.stat().st_size
    assert reuse.reused_bytes > 0.8 * size
    assert reuse.reused_bytes > size - 4 * MiB  # the two blocks edited, and a chunk or two around them
    assert len(reuse.known) > 0.8 * len(names_of(old))


@pytest.mark.parametrize("base", ["unaligned", "repetitive"])
def test_random_edits_are_cut_exactly_as_a_full_cut_would_cut_them(
    bases: dict[str, tuple[Path, Fingerprint]], base: str, tmp_path: Path
) -> None:
    old_path, old = bases[base]
    original = old_path.read_bytes()
    new = tmp_path / "new.bin"
    for seed in range(12):
        rng = random.Random(1000 + seed)
        data = original
        for _ in range(rng.randint(1, 4)):
            kind = rng.choice(["overwrite", "overwrite", "insert", "delete", "truncate", "append"])
            at = rng.randrange(max(1, len(data)))
            n = rng.choice([1, 7, 4096, 70_000, MiB, 2 * MiB + 3])
            if kind == "overwrite":
                data = overwrite(data, at, min(n, len(data) - at), seed)
            elif kind == "insert":
                data = data[:at] + rand(n, seed) + data[at:]
            elif kind == "delete":
                data = data[:at] + data[at + n :]
            elif kind == "truncate":
                data = data[:at]
            else:
                data = data + rand(n, seed)
        new.write_bytes(data)
        try:
            cut_like(new, old)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}: {exc}") from exc


def test_a_chain_of_edits_each_cut_against_the_previous_fingerprint(tmp_path: Path) -> None:
    """As the SDK does it: each upload's fingerprint (from the reuse cut itself) guides the next."""
    path = random_file(tmp_path / "f.bin", 7 * MiB + 99, 13)
    fp = fingerprint_of(path)
    data = path.read_bytes()
    for step in range(6):
        data = overwrite(data, (step * 1_234_567) % len(data), 3000, step)
        if step % 2:
            data = data + rand(300_000, step)
        path.write_bytes(data)
        reuse = cut_like(path, fp)
        fp = client_chunks.FileChunks(
            path,
            hashlib.sha256(data).hexdigest(),
            reuse.size,
            reuse.hashes,
            reuse.offsets,
            reuse.lengths,
            reuse.prints,
        ).fingerprint()
        assert fp == fingerprint_of(path)


def test_block_prints_do_not_depend_on_how_the_bytes_are_fed(tmp_path: Path) -> None:
    data = rand(3 * MiB + MiB // 2, 14)
    rng = random.Random(15)
    for _ in range(5):
        prints = fingerprints.BlockPrints()
        at = 0
        while at < len(data):
            n = rng.choice([0, 1, 1000, MiB - 1, MiB, MiB + 1, 3 * MiB])
            prints.update(data[at : at + n])
            at += n
        assert prints.digest() == block_prints(data)
    assert fingerprints.BlockPrints().digest() == b""
    path = tmp_path / "f.bin"
    for size in (0, 1, MiB, MiB + 1, 2 * MiB):
        path.write_bytes(data[:size])
        assert client_chunks.chunk_file(path).prints == block_prints(data[:size])


# --- 2. the cache file ---------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "sdk-cache"
    monkeypatch.setenv("OPENSCI_CACHE_DIR", str(folder))
    return folder


def entry_path(cache: Path, server: str, repo: str, path: str) -> Path:
    return cache / "uploads" / hashlib.sha256(f"{server}\n{repo}\n{path}".encode()).hexdigest()


@pytest.fixture
def small_fp(tmp_path: Path) -> Fingerprint:
    return fingerprint_of(random_file(tmp_path / "small.bin", 2 * MiB + 100, 16))


def test_a_fingerprint_is_kept_per_server_repository_and_path(cache: Path, tmp_path: Path) -> None:
    path = random_file(tmp_path / "f.bin", 5 * MiB + 17, 17)
    fp = fingerprint_of(path)
    assert fp.oid == sha256(path) and fp.size == 5 * MiB + 17
    assert fingerprints.load(SERVER, "alice/survey", "data/f.bin") is None

    fingerprints.save(SERVER, "alice/survey", "data/f.bin", fp)

    got = fingerprints.load(SERVER, "alice/survey", "data/f.bin")
    assert got == fp
    assert got is not None and (got.oid, got.size, got.prints, got.names, list(got.lengths)) == (
        fp.oid,
        fp.size,
        block_prints(path.read_bytes()),
        b"".join(bytes.fromhex(h) for h in client_chunks.chunk_file(path).hashes),
        client_chunks.chunk_file(path).lengths,
    )
    assert entry_path(cache, SERVER, "alice/survey", "data/f.bin").is_file()
    assert fingerprints.load(SERVER + "/", "alice/survey", "data/f.bin") == fp  # the same server
    assert fingerprints.load(SERVER, "alice/survey", "data/g.bin") is None
    assert fingerprints.load(SERVER, "alice/survey", "f.bin") is None
    assert fingerprints.load(SERVER, "bob/survey", "data/f.bin") is None
    assert fingerprints.load("http://other.example.org", "alice/survey", "data/f.bin") is None
    assert [p.name for p in (cache / "uploads").iterdir()] == [
        entry_path(cache, SERVER, "alice/survey", "data/f.bin").name
    ]  # written atomically: no temporary file left

    # The last upload to a path replaces what was kept of the one before.
    other = fingerprint_of(random_file(tmp_path / "g.bin", 3 * MiB, 18))
    fingerprints.save(SERVER, "alice/survey", "data/f.bin", other)
    assert fingerprints.load(SERVER, "alice/survey", "data/f.bin") == other


@pytest.mark.parametrize("size", [0, 1, MiB, 3 * MiB])
def test_small_and_empty_files_round_trip(cache: Path, tmp_path: Path, size: int) -> None:
    fp = fingerprint_of(random_file(tmp_path / "f.bin", size, 19))
    fingerprints.save(SERVER, "alice/r", "f.bin", fp)
    assert fingerprints.load(SERVER, "alice/r", "f.bin") == fp


def test_a_damaged_cache_entry_is_ignored(cache: Path, small_fp: Fingerprint) -> None:
    fingerprints.save(SERVER, "alice/r", "f.bin", small_fp)
    entry = entry_path(cache, SERVER, "alice/r", "f.bin")
    good = entry.read_bytes()

    def loads(content: bytes) -> Fingerprint | None:
        entry.write_bytes(content)
        return fingerprints.load(SERVER, "alice/r", "f.bin")

    assert loads(good) == small_fp
    for n in (
        0,
        1,
        len(MAGIC),
        len(MAGIC) + 10,
        len(good) // 2,
        len(good) - 33,
        len(good) - 32,
        len(good) - 1,
    ):
        assert loads(good[:n]) is None, f"truncated to {n} bytes"
    for i in range(len(good)):  # a flipped bit in any byte, checksum included
        flipped = bytearray(good)
        flipped[i] ^= 0x10
        assert loads(bytes(flipped)) is None, f"byte {i} flipped"
    assert loads(good + b"\0") is None
    assert loads(rand(5000, 20)) is None
    assert loads(b"\n" * 100) is None
    entry.unlink()
    entry.mkdir()  # not even a file
    assert fingerprints.load(SERVER, "alice/r", "f.bin") is None


def forged(body: bytes) -> bytes:
    """A cache entry of any body, with a valid checksum."""
    return body + hashlib.sha256(body).digest()


def test_a_foreign_entry_with_a_valid_checksum_is_ignored(cache: Path, small_fp: Fingerprint) -> None:
    fingerprints.save(SERVER, "alice/r", "f.bin", small_fp)
    entry = entry_path(cache, SERVER, "alice/r", "f.bin")
    body = entry.read_bytes()[:-32]
    header_end = body.index(b"\n", len(MAGIC))
    rest = body[header_end:]  # from the newline after the header on
    count = len(small_fp.lengths)
    prints_and_entries = rest[1:]

    def loads(content: bytes) -> Fingerprint | None:
        entry.write_bytes(content)
        return fingerprints.load(SERVER, "alice/r", "f.bin")

    def header(text: str) -> bytes:
        return MAGIC + text.encode() + rest

    assert loads(forged(body)) == small_fp
    oid, size = small_fp.oid, small_fp.size
    cases = {
        "another magic": b"opensci-upload-fingerprint 2\n" + body[len(MAGIC) :],
        "no magic": body[len(MAGIC) :],
        "a magic in other case": MAGIC.upper() + body[len(MAGIC) :],
        "one chunk more than entries": header(f'{{"oid": "{oid}", "size": {size}, "chunks": {count + 1}}}'),
        "one chunk less than entries": header(f'{{"oid": "{oid}", "size": {size}, "chunks": {count - 1}}}'),
        "a size other than the chunks'": header(f'{{"oid": "{oid}", "size": {size - 1}, "chunks": {count}}}'),
        "a size of more blocks": header(f'{{"oid": "{oid}", "size": {size + 2 * MiB}, "chunks": {count}}}'),
        "a negative size": header(f'{{"oid": "{oid}", "size": -1, "chunks": {count}}}'),
        "no oid": header(f'{{"size": {size}, "chunks": {count}}}'),
        "no size": header(f'{{"oid": "{oid}", "chunks": {count}}}'),
        "no chunk count": header(f'{{"oid": "{oid}", "size": {size}}}'),
        "a chunk count that is not a number": header(f'{{"oid": "{oid}", "size": {size}, "chunks": "x"}}'),
        "a null size": header(f'{{"oid": "{oid}", "size": null, "chunks": {count}}}'),
        "a header that is a list": header("[1, 2, 3]"),
        "a header that is a string": header('"oid"'),
        "a header that is not JSON": header("{oid: 1"),
        "no header": MAGIC + prints_and_entries,
        "no newline after the header": MAGIC + b'{"oid": "x", "size": 0, "chunks": 0}',
        "an entry missing": body[:-1],
        "an entry too many": body + body[-36:],
        "the magic alone": MAGIC,
    }
    for name, content in cases.items():
        assert loads(forged(content)) is None, name


def test_a_foreign_entry_with_a_deeply_nested_header_is_ignored(cache: Path) -> None:
    """A header that is valid JSON nesting deeper than the parser recurses (only a file made on purpose
    has one: its checksum is valid) is a foreign entry too."""
    entry = entry_path(cache, SERVER, "alice/r", "f.bin")
    entry.parent.mkdir(parents=True)
    entry.write_bytes(forged(MAGIC + b"[" * 100_000 + b"]" * 100_000 + b"\n"))
    assert fingerprints.load(SERVER, "alice/r", "f.bin") is None


def test_the_cache_folder_is_chosen_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_fp: Fingerprint
) -> None:
    home = Path.home()
    assert str(home).startswith(str(tmp_path))  # tests/conftest.py gives each test a HOME of its own
    monkeypatch.delenv("OPENSCI_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert fingerprints.cache_dir() == home / ".cache" / "opensci"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert fingerprints.cache_dir() == home / ".cache" / "opensci"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fingerprints.cache_dir() == tmp_path / "xdg" / "opensci"
    monkeypatch.setenv("OPENSCI_CACHE_DIR", "")
    assert fingerprints.cache_dir() == tmp_path / "xdg" / "opensci"
    monkeypatch.setenv("OPENSCI_CACHE_DIR", str(tmp_path / "own"))
    assert fingerprints.cache_dir() == tmp_path / "own"

    # save and load follow it.
    fingerprints.save(SERVER, "alice/r", "f.bin", small_fp)
    assert entry_path(tmp_path / "own", SERVER, "alice/r", "f.bin").is_file()
    monkeypatch.delenv("OPENSCI_CACHE_DIR")
    assert fingerprints.load(SERVER, "alice/r", "f.bin") is None
    fingerprints.save(SERVER, "alice/r", "f.bin", small_fp)
    assert entry_path(tmp_path / "xdg" / "opensci", SERVER, "alice/r", "f.bin").is_file()
    monkeypatch.delenv("XDG_CACHE_HOME")
    fingerprints.save(SERVER, "alice/r", "f.bin", small_fp)
    assert fingerprints.load(SERVER, "alice/r", "f.bin") == small_fp
    assert entry_path(home / ".cache" / "opensci", SERVER, "alice/r", "f.bin").is_file()


def _under_a_file(tmp: Path) -> Path:
    """A cache folder that cannot be made: a path component is a regular file."""
    (tmp / "a-file").write_bytes(b"not a folder")
    return tmp / "a-file" / "cache"


def _uploads_is_a_file(tmp: Path) -> Path:
    (tmp / "c" / "uploads").parent.mkdir()
    (tmp / "c" / "uploads").write_bytes(b"a file where the folder should be")
    return tmp / "c"


def _entry_is_a_folder(tmp: Path) -> Path:
    (entry_path(tmp / "c", SERVER, "alice/r", "f.bin") / "inside").mkdir(parents=True)
    return tmp / "c"


@pytest.mark.parametrize("make", [_under_a_file, _uploads_is_a_file, _entry_is_a_folder])
def test_a_cache_that_cannot_be_written_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_fp: Fingerprint, make: Callable[[Path], Path]
) -> None:
    folder = make(tmp_path)
    monkeypatch.setenv("OPENSCI_CACHE_DIR", str(folder))

    fingerprints.save(SERVER, "alice/r", "f.bin", small_fp)  # best effort: no exception

    assert fingerprints.load(SERVER, "alice/r", "f.bin") is None
    uploads = folder / "uploads"
    if uploads.is_dir():  # no temporary file left behind
        kept = [entry_path(folder, SERVER, "alice/r", "f.bin").name]
        assert sorted(p.name for p in uploads.iterdir()) == kept


# --- 3. end to end, with the live server ---------------------------------------------------------------


@pytest.fixture
def bases_sent(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The `base` of every manifest the SDK posts, in order."""
    calls: list[str | None] = []
    real = client_chunks.post_manifest

    def recording(
        client: Client, repo: str, size: int, body: bytes | Iterator[bytes], *, base: str | None = None
    ) -> dict[str, object]:
        calls.append(base)
        return real(client, repo, size, body, base=base)

    monkeypatch.setattr(client_chunks, "post_manifest", recording)
    return calls


def check_committed(
    app: FastAPI, sdk: Client, raw: Raw, repo: str, commit: str, path: str, src: Path
) -> None:
    assert raw.file(repo, commit, path) == src.read_bytes()
    assert pointer_in_git(app, sdk, repo, commit, path) == (sha256(src), src.stat().st_size)


def test_a_reupload_of_an_edited_file_names_the_old_one_as_its_base(
    app: FastAPI, sdk: Client, raw: Raw, cache: Path, bases_sent: list[str | None], tmp_path: Path
) -> None:
    repo, where = "alice/survey", "data/cube.bin"
    sdk.create_repo("survey", kind="dataset")
    size = 24 * MiB
    first = random_file(tmp_path / "cube.bin", size, 21)

    r1 = sdk.upload_with_result(repo, first, where, message="v1")
    assert bases_sent == [None]
    assert size <= r1.bytes_sent < 1.01 * size
    check_committed(app, sdk, raw, repo, r1.commit, where, first)
    assert [p.name for p in (cache / "uploads").iterdir()] == [entry_path(cache, sdk.url, repo, where).name]
    assert fingerprints.load(sdk.url, repo, where) == fingerprint_of(first)

    edited = edit_middle(first, tmp_path / "cube2.bin", MiB, 22)
    progress: list[tuple[int, int]] = []
    hashing: list[tuple[int, int]] = []
    r2 = sdk.upload_with_result(
        repo,
        edited,
        where,
        message="v2",
        progress=lambda d, t: progress.append((d, t)),
        hash_progress=lambda d, t: hashing.append((d, t)),
    )
    assert bases_sent == [None, sha256(first)]
    assert r2.bytes_sent < 0.05 * size, r2
    check_committed(app, sdk, raw, repo, r2.commit, where, edited)
    assert fingerprints.load(sdk.url, repo, where) == fingerprint_of(edited)
    assert progress[-1] == (size, size) and [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert hashing[-1] == (size, size)

    # The same file once more: every chunk is named from the cache, nothing travels.
    r3 = sdk.upload_with_result(repo, edited, where, message="v3")
    assert bases_sent == [None, sha256(first), sha256(edited)]
    assert r3.bytes_sent == 0
    check_committed(app, sdk, raw, repo, r3.commit, where, edited)

    # Earlier versions are intact.
    check_committed(app, sdk, raw, repo, r1.commit, where, first)


def test_a_cache_entry_whose_file_and_chunks_the_server_no_longer_has(
    app: FastAPI, sdk: Client, raw: Raw, cache: Path, bases_sent: list[str | None], tmp_path: Path
) -> None:
    """The repository was deleted and made again, its objects and chunks collected: the cache still names
    the old file as the base and its chunks as present. The server ignores the base, answers with the
    chunks it lacks, and the SDK sends them."""
    repo, where = "alice/survey", "data/cube.bin"
    sdk.create_repo("survey", kind="dataset")
    first = random_file(tmp_path / "cube.bin", 12 * MiB, 23)
    sdk.upload_with_result(repo, first, where)
    sdk.delete_repo(repo)
    gc(app.state.blobs, [], grace=0)
    sdk.create_repo("survey", kind="dataset")

    edited = edit_middle(first, tmp_path / "cube2.bin", MiB, 24)
    result = sdk.upload_with_result(repo, edited, where)

    assert bases_sent[1] == sha256(first)
    assert result.bytes_sent >= edited.stat().st_size  # everything had to travel again
    check_committed(app, sdk, raw, repo, result.commit, where, edited)
    assert fingerprints.load(sdk.url, repo, where) == fingerprint_of(edited)


def test_a_cache_entry_for_a_file_another_repository_holds(
    app: FastAPI, sdk: Client, raw: Raw, cache: Path, bases_sent: list[str | None], tmp_path: Path
) -> None:
    where = "data/cube.bin"
    sdk.create_repo("survey", kind="dataset")
    sdk.create_repo("other", kind="dataset")
    first = random_file(tmp_path / "cube.bin", 12 * MiB, 25)
    sdk.upload_with_result("alice/survey", first, where)
    fp = fingerprints.load(sdk.url, "alice/survey", where)
    assert fp is not None
    fingerprints.save(sdk.url, "alice/other", where, fp)  # as if uploaded to alice/other

    edited = edit_middle(first, tmp_path / "cube2.bin", MiB, 26)
    result = sdk.upload_with_result("alice/other", edited, where)

    assert bases_sent[1] == sha256(first)
    check_committed(app, sdk, raw, "alice/other", result.commit, where, edited)
    assert raw.files("alice/other")[where] == 12 * MiB


@pytest.mark.parametrize("cached", ["the same file", "an edit of it"])
def test_a_cache_entry_naming_chunks_the_server_never_received(
    app: FastAPI, sdk: Client, raw: Raw, cache: Path, tmp_path: Path, cached: str
) -> None:
    repo, where = "alice/survey", "data/x.bin"
    sdk.create_repo("survey", kind="dataset")
    size = 8 * MiB + 5
    real = random_file(tmp_path / "x.bin", size, 27)
    like = real if cached == "the same file" else edit_middle(real, tmp_path / "y.bin", 100_000, 28)
    fingerprints.save(sdk.url, repo, where, fingerprint_of(like))

    result = sdk.upload_with_result(repo, real, where)

    assert result.bytes_sent >= size
    check_committed(app, sdk, raw, repo, result.commit, where, real)
    assert fingerprints.load(sdk.url, repo, where) == fingerprint_of(real)


def test_a_corrupted_cache_entry_is_ignored_and_replaced(
    app: FastAPI, sdk: Client, raw: Raw, cache: Path, bases_sent: list[str | None], tmp_path: Path
) -> None:
    repo, where = "alice/survey", "data/cube.bin"
    sdk.create_repo("survey", kind="dataset")
    first = random_file(tmp_path / "cube.bin", 10 * MiB, 29)
    sdk.upload_with_result(repo, first, where)
    entry = entry_path(cache, sdk.url, repo, where)
    entry.write_bytes(rand(3000, 30))

    edited = edit_middle(first, tmp_path / "cube2.bin", MiB, 31)
    result = sdk.upload_with_result(repo, edited, where)

    assert bases_sent == [None, None]
    assert result.bytes_sent < 0.3 * 10 * MiB  # the server still had most chunks: asked, not sent
    check_committed(app, sdk, raw, repo, result.commit, where, edited)
    assert fingerprints.load(sdk.url, repo, where) == fingerprint_of(edited)


@pytest.mark.parametrize(
    ("change", "most_sent"),
    [
        ("append 3 MiB", 4 * MiB),
        ("append a few bytes", MiB),
        ("truncate", MiB),
        ("truncate to whole blocks", MiB),
        ("truncate to less than a block", MiB),
    ],
)
def test_a_file_that_grew_or_shrank_is_uploaded_correctly(
    app: FastAPI,
    sdk: Client,
    raw: Raw,
    cache: Path,
    bases_sent: list[str | None],
    tmp_path: Path,
    change: str,
    most_sent: int,
) -> None:
    repo, where = "alice/survey", "data/cube.bin"
    sdk.create_repo("survey", kind="dataset")
    first = random_file(tmp_path / "cube.bin", 12 * MiB + 333, 32)
    sdk.upload_with_result(repo, first, where)
    data = first.read_bytes()
    new_data = {
        "append 3 MiB": data + rand(3 * MiB, 33),
        "append a few bytes": data + b"more",
        "truncate": data[: 7 * MiB + 1234],
        "truncate to whole blocks": data[: 6 * MiB],
        "truncate to less than a block": data[: MiB + 1],  # still above the chunked threshold
    }[change]
    new = tmp_path / "cube2.bin"
    new.write_bytes(new_data)

    result = sdk.upload_with_result(repo, new, where)

    assert bases_sent == [None, sha256(first)]
    assert result.bytes_sent < most_sent, result
    check_committed(app, sdk, raw, repo, result.commit, where, new)
    assert fingerprints.load(sdk.url, repo, where) == fingerprint_of(new)


def test_each_path_has_an_entry_of_its_own(
    app: FastAPI, sdk: Client, raw: Raw, cache: Path, bases_sent: list[str | None], tmp_path: Path
) -> None:
    repo = "alice/two"
    sdk.create_repo("two", kind="dataset")
    src = write_tree(tmp_path / "src", {"a.bin": rand(3 * MiB, 34), "b.bin": rand(2 * MiB + 1, 35)})
    sdk.upload_with_result(repo, src, "data")
    a, b = src / "a.bin", src / "b.bin"
    assert sorted(p.name for p in (cache / "uploads").iterdir()) == sorted(
        entry_path(cache, sdk.url, repo, p).name for p in ("data/a.bin", "data/b.bin")
    )
    assert fingerprints.load(sdk.url, repo, "data/a.bin") == fingerprint_of(a)
    assert fingerprints.load(sdk.url, repo, "data/b.bin") == fingerprint_of(b)
    old_a, old_b = sha256(a), sha256(b)

    a.write_bytes(overwrite(a.read_bytes(), MiB, 1000, 36))
    result = sdk.upload_with_result(repo, src, "data")

    assert sorted(bases_sent, key=str) == sorted([None, None, old_a, old_b], key=str)
    for p in (a, b):
        check_committed(app, sdk, raw, repo, result.commit, f"data/{p.name}", p)
    assert fingerprints.load(sdk.url, repo, "data/a.bin") == fingerprint_of(a)
    assert fingerprints.load(sdk.url, repo, "data/b.bin") == fingerprint_of(b)


def test_an_upload_succeeds_when_the_cache_cannot_be_written(
    app: FastAPI, sdk: Client, raw: Raw, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a folder")
    monkeypatch.setenv("OPENSCI_CACHE_DIR", str(blocker / "cache"))
    sdk.create_repo("survey", kind="dataset")
    path = random_file(tmp_path / "f.bin", 3 * MiB, 37)
    result = sdk.upload_with_result("alice/survey", path, "f.bin")
    check_committed(app, sdk, raw, "alice/survey", result.commit, "f.bin", path)
    edited = edit_middle(path, tmp_path / "g.bin", 1000, 38)
    again = sdk.upload_with_result("alice/survey", edited, "f.bin")
    check_committed(app, sdk, raw, "alice/survey", again.commit, "f.bin", edited)


def test_the_sdk_uses_the_default_cache_folder(
    app: FastAPI, sdk: Client, raw: Raw, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    sdk.create_repo("survey", kind="dataset")
    path = random_file(tmp_path / "f.bin", 2 * MiB, 39)
    sdk.upload_with_result("alice/survey", path, "f.bin")
    entry = entry_path(Path.home() / ".cache" / "opensci", sdk.url, "alice/survey", "f.bin")
    assert entry.is_file()
    assert fingerprints.load(sdk.url, "alice/survey", "f.bin") == fingerprint_of(path)


def test_a_fingerprint_with_another_oid_is_still_only_a_hint(
    app: FastAPI, sdk: Client, raw: Raw, cache: Path, bases_sent: list[str | None], tmp_path: Path
) -> None:
    """A cache entry whose oid the repository does not hold (here: a made-up one) is harmless."""
    repo, where = "alice/survey", "data/cube.bin"
    sdk.create_repo("survey", kind="dataset")
    first = random_file(tmp_path / "cube.bin", 6 * MiB, 40)
    sdk.upload_with_result(repo, first, where)
    fp = fingerprints.load(sdk.url, repo, where)
    assert fp is not None
    fingerprints.save(sdk.url, repo, where, replace(fp, oid="ab" * 32))

    edited = edit_middle(first, tmp_path / "cube2.bin", 5000, 41)
    result = sdk.upload_with_result(repo, edited, where)

    assert bases_sent == [None, "ab" * 32]
    check_committed(app, sdk, raw, repo, result.commit, where, edited)


# --- found by QA: privacy of the entries, a file truncated during a re-upload, a wrong entry -------------


def test_cache_entries_are_private_to_their_user(
    sdk: Client, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunk names let a server hand over their content (that is how uploads skip bytes): another local
    user who could read them could take the files. The folder is 0700, the entries 0600, whatever the
    umask, and a folder left open by an earlier version is closed."""
    old = os.umask(0o022)
    try:
        (cache / "uploads").mkdir(parents=True, mode=0o755)
        (cache / "uploads").chmod(0o755)
        sdk.create_repo("survey", kind="dataset")
        sdk.upload_with_result("alice/survey", random_file(tmp_path / "f.bin", 3 * MiB, 50), "f.bin")
    finally:
        os.umask(old)
    entry = entry_path(cache, sdk.url, "alice/survey", "f.bin")
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE((cache / "uploads").stat().st_mode) == 0o700


def test_a_file_truncated_while_it_is_compared_is_a_transfer_error(tmp_path: Path) -> None:
    path = random_file(tmp_path / "f.bin", 12 * MiB, 51)
    old = fingerprint_of(path)
    with open(path, "r+b") as fh:
        fh.seek(5 * MiB)
        fh.write(b"edited")
    reuse = Reuse(path, old, client_chunks.new_chunker, client_chunks.MAX_SIZE)
    pieces = iter(reuse)
    next(pieces)
    os.truncate(path, 2 * MiB)
    with pytest.raises(TransferError, match="shrank while it was being uploaded"):
        for _ in pieces:
            pass


def test_an_entry_that_names_the_wrong_chunks_costs_no_failed_upload(
    app: FastAPI, sdk: Client, raw: Raw, cache: Path, bases_sent: list[str | None], tmp_path: Path
) -> None:
    """An entry that passes its checks but names a chunk that is not this content's (hand-edited, or
    damaged before its checksum was taken): the upload that follows it fails at the server's check of
    that chunk, and is made again at once without the entry; progress is taken back, not counted twice."""
    repo, where = "alice/survey", "data/cube.bin"
    sdk.create_repo("survey", kind="dataset")
    first = random_file(tmp_path / "cube.bin", 6 * MiB, 52)
    sdk.upload_with_result(repo, first, where)
    fp = fingerprints.load(sdk.url, repo, where)
    assert fp is not None
    wrong = bytes(32 * 3) + fp.names[32 * 3 :]  # its first three chunks renamed
    fingerprints.save(sdk.url, repo, where, replace(fp, names=wrong))

    edited = edit_middle(first, tmp_path / "cube2.bin", MiB, 53)
    seen: list[tuple[int, int]] = []
    commit = sdk.upload(repo, edited, where, progress=lambda done, total: seen.append((done, total)))

    check_committed(app, sdk, raw, repo, commit, where, edited)
    assert bases_sent == [None, sha256(first), None]  # the second try follows no entry
    assert seen[-1] == (edited.stat().st_size, edited.stat().st_size)
    assert all(done <= total for done, total in seen)
    assert fingerprints.load(sdk.url, repo, where) == fingerprint_of(edited)


def test_an_entry_with_an_oid_that_is_no_sha256_is_ignored(cache: Path, small_fp: Fingerprint) -> None:
    fingerprints.save("http://h", "a/b", "f", replace(small_fp, oid="not-a-sha256"))
    assert fingerprints.load("http://h", "a/b", "f") is None
    fingerprints.save("http://h", "a/b", "f", replace(small_fp, oid=small_fp.oid.upper()))
    assert fingerprints.load("http://h", "a/b", "f") is None
