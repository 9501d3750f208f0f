"""Blob store throughput: put, re-put after an edit, and read, against plain file I/O in the same run.

Baselines, on the same disk and the same bytes: reading the file with large `read`s (page cache warm),
and copying it to a new file followed by fsync. Then the store (SQLite index in the work directory,
or OPENSCI_DATABASE_URL): `put` of the new file, `put` of a copy with 1 MiB rewritten in the middle
(bytes added to the packs, as a share of the file size), and a full read through `open()` with and
without the per-chunk sha256 check. Ratios are store / baseline throughput.

Run: `.venv/bin/python benchmarks/storage_throughput.py [--size 1G] [--dir PATH]`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from opensci.db import Database
from opensci.settings import Settings
from opensci.storage.maintenance import stats
from opensci.storage.store import BlobStore

BLOCK = 8 * 1024 * 1024
EDIT = 1024 * 1024


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def write_random(path: Path, size: int, edit_at: int | None = None, source: Path | None = None) -> None:
    """A random file, or a copy of `source` with EDIT random bytes at `edit_at`; fsynced."""
    with open(path, "wb") as out:
        if source is None:
            left = size
            while left:
                n = min(BLOCK, left)
                out.write(os.urandom(n))
                left -= n
        else:
            assert edit_at is not None
            with open(source, "rb") as src:
                shutil.copyfileobj(src, out, BLOCK)
            out.seek(edit_at)
            out.write(os.urandom(EDIT))
        out.flush()
        os.fsync(out.fileno())


def read_file(path: Path) -> int:
    n = 0
    with open(path, "rb", buffering=0) as fh:
        while block := fh.read(BLOCK):
            n += len(block)
    return n


def copy_and_fsync(src: Path, dst: Path) -> None:
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        while block := fin.read(BLOCK):
            fout.write(block)
        os.fsync(fout.fileno())


def read_object(store: BlobStore, oid: str) -> int:
    n = 0
    with store.open(oid) as fh:
        while block := fh.read(BLOCK):
            n += len(block)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G", help="file size, e.g. 1G, 256M (default 1G)")
    ap.add_argument("--dir", default=None, help="work directory on the disk to measure (default: a temp dir)")
    args = ap.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="storage-bench-", dir=args.dir))
    try:
        run(work, size)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, size: int) -> None:
    mb = size / 1e6
    src, edited, copy = work / "file.bin", work / "edited.bin", work / "copy.bin"
    print(f"generating {size / 2**20:.0f} MiB of random data in {work} …", flush=True)
    write_random(src, size)
    write_random(edited, size, edit_at=size // 2, source=src)

    read_file(src)  # warm the page cache
    read_base = min(timed(lambda: read_file(src)) for _ in range(2))
    write_base = timed(lambda: copy_and_fsync(src, copy))
    copy.unlink()

    settings = Settings(home=work / "home", _env_file=None)  # type: ignore[call-arg]
    settings.ensure_dirs()
    db = Database(settings.effective_database_url)
    db.upgrade()
    store = BlobStore(settings, db)
    try:
        with open(src, "rb") as fh:
            t_put = timed(lambda: store.put(fh))
        with open(src, "rb") as fh:
            oid = hashlib.file_digest(fh, "sha256").hexdigest()
        before = stats(store).pack_bytes
        with open(edited, "rb") as fh:
            t_edit = timed(lambda: store.put(fh))
        with open(edited, "rb") as fh:
            edited_oid = hashlib.file_digest(fh, "sha256").hexdigest()
        added = stats(store).pack_bytes - before
        with open(src, "rb") as fh:
            t_again = timed(lambda: store.put(fh))

        read_object(store, oid)  # warm
        t_read = min(timed(lambda: read_object(store, oid)) for _ in range(2))
        store.verify_reads = False
        t_read_nv = min(timed(lambda: read_object(store, oid)) for _ in range(2))
        store.verify_reads = True
        t_range = timed(lambda: sum(len(b) for b in store.iter_range(edited_oid)))
        with store.open(edited_oid) as fh:
            fh.seek(size // 2 - 10)
            assert fh.read(EDIT + 20)[10:-10] == edited.read_bytes()[size // 2 : size // 2 + EDIT]
    finally:
        store.close()
        db.dispose()

    def line(label: str, seconds: float, base: float | None = None) -> None:
        ratio = f"  {base / seconds:5.2f}x baseline" if base is not None else ""
        print(f"{label:46} {seconds:7.2f} s {mb / seconds:8.0f} MB/s{ratio}")

    print(f"\nfile size {size} bytes ({size / 2**20:.0f} MiB); chunk sha256 + whole-file sha256 on every put")
    line("baseline: read plain file (page cache warm)", read_base)
    line("baseline: copy to new file + fsync", write_base)
    line("put, new content", t_put, write_base)
    line("put, 1 MiB edited in the middle", t_edit, write_base)
    line("put, content already stored", t_again, write_base)
    line("read via open(), sha256 check per chunk", t_read, read_base)
    line("read via open(), no check", t_read_nv, read_base)
    line("iter_range of the edited file, checked", t_range, read_base)
    print(
        f"storage growth for the 1 MiB edit: {added} bytes = {added / size:.3%} of the file "
        f"(target <= 2%); new chunk bytes to send <= {added / size:.3%} (target <= 1%)"
    )
    print(f"cost of checking chunks on read: {1 - t_read_nv / t_read:.0%} of read throughput")


if __name__ == "__main__":
    main()
