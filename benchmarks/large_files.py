"""Large files through the server, against a plain static download of the same bytes in the same run.

One server process (`benchmarks/_bench_app.py`: the OpenSci app plus a Starlette FileResponse route,
SQLite, its own OPENSCI_HOME) serves everything:

1. baselines: the file downloaded as a plain static file (`GET /bench-static/…`) with curl to a file;
   and a copy of the file with fsync, through the page cache and with direct I/O (the blob store writes
   packs with direct I/O): the most a durable upload can do on this disk;
2. `opensci upload` (the SDK's chunk protocol, the code path of the CLI) of the new file, and of
   `--uploads` - 1 other new files (the figure is the median);
3. the stored file downloaded through the raw endpoint (content from the blob store) the same way;
4. `opensci upload` of a copy with 1 MiB rewritten in the middle: bytes sent, time, pack growth; the
   old chunks are in the page cache then (the stored file was just downloaded); then of a copy of that
   with another 1 MiB rewritten in the middle, with the packs dropped from the page cache first (a
   re-upload long after the last one: the server reads the old chunks from the disk);
5. a Git LFS PUT of the file (what `git lfs` and Hugging Face clients do), and its pack growth;
6. a 1 MiB HTTP Range read from the middle of the stored file (remote Parquet reads).

Targets (issue 3): download >= 0.8x static; upload >= 0.5x the static download; re-upload bytes
<= 1 % and time <= 10 % of the first upload; storage growth <= 2 % of the file, whichever client.

Run: `.venv/bin/python benchmarks/large_files.py [--size 1G] [--runs 3] [--workers 4]`.
"""

from __future__ import annotations

import argparse
import hashlib
import mmap
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._server import BIN, free_port, wait_healthy  # noqa: E402
from benchmarks.storage_throughput import parse_size  # noqa: E402

from opensci.client import Client  # noqa: E402

BLOCK = 8 * 1024 * 1024
EDIT = 1024 * 1024
LFS = {"Accept": "application/vnd.git-lfs+json", "Content-Type": "application/vnd.git-lfs+json"}


def write_random(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(BLOCK, left)
            f.write(rng.randbytes(n))
            left -= n


def edited_copy(src: Path, dst: Path, seed: int = 7) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.seek(src.stat().st_size // 2)
        f.write(random.Random(seed).randbytes(EDIT))


def uncache_packs(home: Path) -> None:
    """Drop the packs from the page cache (their pages are clean once synced: no root needed)."""
    for path in (home / "blobs" / "packs").glob("*.pack"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def pack_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in (home / "blobs" / "packs").glob("*.pack"))


def curl(url: str, token: str, out: Path, *extra: str) -> tuple[int, float]:
    """(bytes, seconds) of a download with curl into `out` (then removed)."""
    words = subprocess.run(
        [
            "curl",
            "-s",
            "-f",
            "-o",
            str(out),
            "-H",
            f"Authorization: Bearer {token}",
            *extra,
            "-w",
            "%{size_download} %{time_total}",
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    out.unlink()
    return int(words[0]), float(words[1])


def copy_fsync(src: Path, dst: Path, *, direct: bool = False) -> float | None:
    """Seconds to copy a file and fsync the copy: through the page cache, or with direct I/O (what the
    device itself allows; None where the filesystem refuses O_DIRECT)."""
    start = time.perf_counter()
    if direct:
        buf = mmap.mmap(-1, BLOCK)  # page-aligned, as direct I/O wants
        try:
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_DIRECT", 0))
        except OSError:
            return None
        try:
            with open(src, "rb", buffering=0) as f:
                offset = 0
                while n := f.readinto(buf):  # type: ignore[arg-type]
                    os.pwrite(fd, memoryview(buf)[: n + (-n) % 4096], offset)
                    offset += n
            os.ftruncate(fd, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
            buf.close()
    else:
        with open(src, "rb") as f, open(dst, "wb") as out:
            while block := f.read(BLOCK):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
    seconds = time.perf_counter() - start
    dst.unlink()
    return seconds


def cpu_seconds(server_pid: int) -> tuple[float, float]:
    """CPU time used so far by this process and its children (the client side: the SDK, curl), and by
    the server process."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    client = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime
    fields = Path(f"/proc/{server_pid}/stat").read_text().rsplit(")", 1)[1].split()
    return client, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(fn) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--runs", type=int, default=3, help="downloads per figure (median)")
    ap.add_argument("--workers", type=int, default=4, help="parallel chunk batches of the upload")
    ap.add_argument("--uploads", type=int, default=3, help="new files uploaded (median)")
    args = ap.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="opensci-bench-large-"))
    try:
        run(work, size, args.runs, args.workers, args.uploads)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, size: int, runs: int, workers: int, uploads: int) -> None:
    home, static = work / "home", work / "static"
    static.mkdir()
    v1, v2, v3, v4 = static / "v1.bin", work / "v2.bin", work / "v3.bin", work / "v4.bin"
    v5 = work / "v5.bin"
    print(f"writing {size / 2**20:.0f} MiB of random data …", flush=True)
    write_random(v1, size, 2024)
    edited_copy(v1, v2)
    edited_copy(v2, v5, seed=8)
    write_random(v3, size, 99)
    edited_copy(v3, v4)
    others = [work / f"new{i}.bin" for i in range(1, max(uploads, 1))]
    for i, path in enumerate(others):
        write_random(path, size, 500 + i)
    os.sync()  # the test files' write-back would otherwise slow down every figure below
    t_disk = copy_fsync(v1, work / "copy.bin")
    t_direct = copy_fsync(v1, work / "copy.bin", direct=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "OPENSCI_HOME": str(home),
        "OPENSCI_BASE_URL": url,
        "OPENSCI_LOG_LEVEL": "warning",
        "OPENSCI_BENCH_STATIC_DIR": str(static),
    }

    def opensci(*a: str) -> str:
        return subprocess.run(
            [str(BIN / "opensci"), *a], env=env, check=True, capture_output=True, text=True
        ).stdout

    os.environ["OPENSCI_CACHE_DIR"] = str(work / "cache")  # the SDK's fingerprints of its uploads
    opensci("demo", "seed")
    token = opensci("token", "create", "--user", "admin", "--scope", "write").strip().splitlines()[-1]
    proc = subprocess.Popen(
        [
            str(BIN / "uvicorn"),
            "--factory",
            "benchmarks._bench_app:make_app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
        cwd=ROOT,
    )
    out = work / "download.bin"
    try:
        wait_healthy(url)
        static_url = f"{url}/bench-static/v1.bin"
        stored_url = f"{url}/api/v1/repos/admin/big/raw/main/data.bin"
        curl(static_url, token, out)  # warm-up (page cache, first-request costs)
        cpu0 = cpu_seconds(proc.pid)
        t_static = statistics.median(curl(static_url, token, out)[1] for _ in range(runs))
        cpu_static = [(b - a) / runs for a, b in zip(cpu0, cpu_seconds(proc.pid), strict=True)]

        with Client(url, token, timeout=600) as client:
            client.create_repo("admin/big", kind="dataset")
            packs0 = pack_bytes(home)
            cpu0 = cpu_seconds(proc.pid)
            t_first, first = timed(
                lambda: client.upload_with_result("admin/big", v1, "data.bin", workers=workers)
            )
            cpu_up1 = [b - a for a, b in zip(cpu0, cpu_seconds(proc.pid), strict=True)]
            packs1 = pack_bytes(home)
            t_news = [t_first]
            for i, path in enumerate(others):
                t_news.append(
                    timed(
                        lambda path=path, i=i: client.upload_with_result(
                            "admin/big", path, f"other/{i}.bin", workers=workers
                        )
                    )[0]
                )
            t_up1 = statistics.median(t_news)
            n, _ = curl(stored_url, token, out)  # warm-up
            assert n == size, n
            t_stored = statistics.median(curl(stored_url, token, out)[1] for _ in range(runs))
            cpu0 = cpu_seconds(proc.pid)
            packs_edit = pack_bytes(home)
            t_up2, second = timed(
                lambda: client.upload_with_result("admin/big", v2, "data.bin", workers=workers)
            )
            cpu_up2 = [b - a for a, b in zip(cpu0, cpu_seconds(proc.pid), strict=True)]
            packs2 = pack_bytes(home)
            uncache_packs(home)
            t_up3, third = timed(
                lambda: client.upload_with_result("admin/big", v5, "data.bin", workers=workers)
            )

        mid = size // 2
        rng = ("-H", f"Range: bytes={mid}-{mid + 2**20 - 1}")
        t_range = statistics.median(curl(stored_url, token, out, *rng)[1] for _ in range(5))

        # Git LFS: PUTs of another new file, then of its edited copy (what git lfs or hf clients send).
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=600) as c:
            timings, growth = [], []
            for path in (v3, v4):
                data_oid = hashlib.sha256(path.read_bytes()).hexdigest()
                batch = c.post(
                    "/datasets/admin/big.git/info/lfs/objects/batch",
                    headers=LFS,
                    json={"operation": "upload", "objects": [{"oid": data_oid, "size": size}]},
                ).json()
                href = batch["objects"][0]["actions"]["upload"]["href"]
                before = pack_bytes(home)
                with open(path, "rb") as f:
                    t, r = timed(
                        lambda f=f, href=href: httpx.put(
                            href,
                            content=iter(lambda: f.read(BLOCK), b""),
                            timeout=600,
                            headers={"Content-Length": str(size)},
                        )
                    )
                assert r.status_code == 200, r.text  # type: ignore[attr-defined]
                timings.append(t)
                growth.append(pack_bytes(home) - before)
            t_lfs, lfs_growth = timings[0], growth[1]
    finally:
        proc.terminate()
        proc.wait(10)

    # The floor of any re-upload: the edited file's Git LFS oid is its sha256, a sequential chain, so every
    # byte from the edit to the end must be hashed again once the edit is known (half the file here).
    with open(v2, "rb") as f:
        f.seek(size // 2)
        tail = f.read()
    t_tail, _ = timed(lambda tail=tail: hashlib.sha256(tail).digest())
    mb = size / 1e6
    static_mbs, stored_mbs, up_mbs = mb / t_static, mb / t_stored, mb / t_up1
    print(
        f"\nfile: {size:,} bytes; downloads: curl to a file, median of {runs}; upload: SDK, {workers} "
        f"workers, median of {len(t_news)} new files ({', '.join(f'{t:.2f}' for t in t_news)} s)"
    )
    print(f"{'static download (baseline)':38} {t_static:7.2f} s {static_mbs:7.0f} MB/s")
    print(f"{'disk: copy + fsync, page cache':38} {t_disk:7.2f} s {mb / t_disk:7.0f} MB/s")
    if t_direct is not None:
        print(f"{'disk: copy + fsync, direct I/O':38} {t_direct:7.2f} s {mb / t_direct:7.0f} MB/s")
    print(f"{'stored download (raw, blob store)':38} {t_stored:7.2f} s {stored_mbs:7.0f} MB/s")
    print(
        f"{'opensci upload, new file':38} {t_up1:7.2f} s {up_mbs:7.0f} MB/s  "
        f"sent {first.bytes_sent / size:.1%}, packs +{(packs1 - packs0) / size:.1%}"
    )
    print(f"{'opensci upload, 1 MiB edited':38} {t_up2:7.2f} s {mb / t_up2:7.0f} MB/s")
    print(
        f"{'  again, old chunks not in page cache':38} {t_up3:7.2f} s {mb / t_up3:7.0f} MB/s  "
        f"sent {third.bytes_sent / size:.2%}"  # type: ignore[attr-defined]
    )
    print(f"{'git-lfs PUT, new file':38} {t_lfs:7.2f} s {mb / t_lfs:7.0f} MB/s")
    print(f"{'1 MiB Range read mid-file':38} {t_range * 1000:7.1f} ms")
    print(f"{'sha256 of the half after the edit':38} {t_tail:7.2f} s {size / 2e6 / t_tail:7.0f} MB/s")
    print(f"CPU seconds (client / server, {os.cpu_count()} cores shared by both):")
    for label, (client_cpu, server_cpu) in (
        ("static download (curl / server)", cpu_static),
        ("opensci upload, new file", cpu_up1),
        ("opensci upload, 1 MiB edited", cpu_up2),
    ):
        print(f"  {label:36} {client_cpu:5.2f} / {server_cpu:5.2f}")
    print()
    rows = [
        (
            "download stored / static",
            f"{stored_mbs / static_mbs:.2f}x",
            ">= 0.8x",
            stored_mbs / static_mbs >= 0.8,
        ),
        ("upload / static download", f"{up_mbs / static_mbs:.2f}x", ">= 0.5x", up_mbs / static_mbs >= 0.5),
        ("upload / disk copy+fsync (info)", f"{t_disk / t_up1:.2f}x", "-", True),
        (
            "re-upload bytes sent",
            f"{second.bytes_sent / size:.2%}",
            "<= 1 %",
            second.bytes_sent / size <= 0.01,
        ),
        ("re-upload time / first upload", f"{t_up2 / t_up1:.1%}", "<= 10 %", t_up2 / t_up1 <= 0.10),
        ("  packs not in the page cache", f"{t_up3 / t_up1:.1%}", "<= 10 %", t_up3 / t_up1 <= 0.10),
        ("  floor: sha256 of the half after it", f"{t_tail / t_up1:.1%}", "-", True),
        (
            "storage growth, SDK re-upload",
            f"{(packs2 - packs_edit) / size:.2%}",
            "<= 2 %",
            (packs2 - packs_edit) / size <= 0.02,
        ),
        (
            "storage growth, git-lfs PUT of an edit",
            f"{lfs_growth / size:.2%}",
            "<= 2 %",
            lfs_growth / size <= 0.02,
        ),
    ]
    for label, value, target, ok in rows:
        print(f"{label:38} {value:>10}   target {target:8} {'ok' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
