"""Git clone speed: `git clone` over OpenSci's smart HTTP against `git clone --no-local` of the same
bare repository straight from disk (the git pack protocol with no network and no server), in one run.

The repository is generated: many source files across folders, a long history, and some binary data.
Run: `.venv/bin/python benchmarks/git_clone.py [--files N] [--commits N] [--binary-mb N] [--rounds N]`.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _server import Server

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@example.org",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@example.org",
    "GIT_TERMINAL_PROMPT": "0",
}


def git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True)


def make_repo(work: Path, files: int, commits: int, binary_mb: int) -> Path:
    rng = random.Random(42)
    src = work / "src"
    git("init", "-q", "-b", "main", str(src))
    words = [f"token{i}" for i in range(500)]
    for c in range(commits):
        for _ in range(max(1, files // commits)):
            i = rng.randrange(files)
            path = src / f"pkg{i % 40}" / f"module_{i}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(
                "\n".join(" ".join(rng.choices(words, k=12)) for _ in range(rng.randint(20, 200)))
            )
        if c == commits // 2 and binary_mb:
            (src / "data").mkdir(exist_ok=True)
            (src / "data" / "blob.bin").write_bytes(rng.randbytes(binary_mb * 1024 * 1024))
        git("add", "-A", cwd=src)
        git("commit", "-q", "-m", f"commit {c}", cwd=src)
    return src


def timed_clone(url: str, dest: Path, extra: list[str]) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    t = time.perf_counter()
    git("clone", "-q", *extra, url, str(dest))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--commits", type=int, default=300)
    ap.add_argument("--binary-mb", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="opensci-clone-bench-"))
    src = make_repo(work, args.files, args.commits, args.binary_mb)
    with Server() as server:
        r = httpx.post(
            f"{server.url}/api/v1/repos",
            json={"name": "bench", "kind": "code"},
            headers={"Authorization": f"Bearer {server.token}"},
        )
        r.raise_for_status()
        repo_id = r.json()["id"]
        auth_url = server.url.replace("http://", f"http://admin:{server.token}@") + "/admin/bench.git"
        git("push", "-q", auth_url, "main", cwd=src)
        bare = server.home / "git" / f"{repo_id}.git"
        git("repack", "-a", "-d", "-q", cwd=bare)  # the same packed state for both sides
        size = sum(f.stat().st_size for f in (bare / "objects" / "pack").glob("*.pack"))
        http_url = f"{server.url}/admin/bench.git"
        disk, http = [], []
        for _ in range(args.rounds):  # interleaved, so noise hits both sides alike
            disk.append(timed_clone(str(bare), work / "c-disk", ["--no-local"]))
            http.append(timed_clone(http_url, work / "c-http", []))
    shutil.rmtree(work, ignore_errors=True)
    d, h = statistics.median(disk), statistics.median(http)
    print(
        f"git clone of {args.files} files, {args.commits} commits, pack {size / 1e6:.1f} MB; "
        f"median of {args.rounds} rounds"
    )
    print(f"{'from disk (git clone --no-local)':36} {d:7.3f} s  {size / d / 1e6:8.1f} MB/s")
    print(f"{'over OpenSci smart HTTP':36} {h:7.3f} s  {size / h / 1e6:8.1f} MB/s")
    print(f"ratio http/disk time: {h / d:.2f}x  (throughput {d / h:.2f} of disk)")


if __name__ == "__main__":
    main()
