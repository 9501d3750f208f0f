"""Concurrent writers on one branch: pushes racing pushes, and pushes racing commits made over the API.
Exactly one writer wins each race, losers are told so and retry, and no commit is ever lost."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi import FastAPI

from tests.conftest import Account, LiveServer
from tests.repos.git_helpers import (
    api_commit,
    bare_path,
    create_repo,
    fsck,
    git,
    remote_url,
    rev,
    write_commit,
)

pytestmark = pytest.mark.live

ROUNDS = 3
# What git says when it lost a race: refused by the client (it saw the new head) or by the server.
LOST_RACE = ("fetch first", "non-fast-forward", "failed to lock", "cannot lock ref", "failed to update ref")


def _together(*jobs: Callable[[], object]) -> list[object]:
    """Run the jobs in threads released at the same instant; their results in order."""
    barrier = threading.Barrier(len(jobs))
    results: list[object] = [None] * len(jobs)

    def run(i: int, job: Callable[[], object]) -> None:
        barrier.wait()
        try:
            results[i] = job()
        except BaseException as exc:  # surfaced by the caller
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def _push(work: Path) -> Callable[[], subprocess.CompletedProcess[str]]:
    return lambda: git("push", "origin", "HEAD:main", cwd=work, check=False)


def _push_until_accepted(work: Path) -> str:
    """What a user does after losing a race: pull --rebase, push again."""
    for _ in range(10):
        out = git("push", "origin", "HEAD:main", cwd=work, check=False)
        if out.returncode == 0:
            return rev(work)
        assert any(s in out.stderr for s in LOST_RACE), out.stderr
        git("pull", "-q", "--rebase", "origin", "main", cwd=work)
    raise AssertionError("push never got through")


def test_two_pushes_racing_on_one_branch(
    app: FastAPI, live_server: LiveServer, alice: Account, tmp_path: Path
) -> None:
    repo = create_repo(live_server, alice, "race")
    api_commit(live_server, alice, "alice/race", {"start.txt": b"start\n"}, "start")
    one, two = tmp_path / "one", tmp_path / "two"
    for work in (one, two):
        git("clone", "-q", remote_url(live_server, "/alice/race.git", alice), work)

    expected: list[str] = []
    for i in range(ROUNDS):
        for work in (one, two):
            git("pull", "-q", "--rebase", "origin", "main", cwd=work)
        write_commit(one, {f"one/{i}.txt": f"one {i}\n"}, f"one {i}")
        write_commit(two, {f"two/{i}.txt": f"two {i}\n"}, f"two {i}")
        results = _together(_push(one), _push(two))
        codes = [r.returncode for r in results]  # type: ignore[attr-defined]
        assert sorted(codes)[0] == 0 and sorted(codes)[1] != 0, results  # exactly one wins
        loser = results[codes.index(max(codes))]
        assert any(s in loser.stderr for s in LOST_RACE), loser.stderr  # type: ignore[attr-defined]
        _push_until_accepted(two if codes[1] else one)
        expected += [f"one {i}", f"two {i}"]

    final = tmp_path / "final"
    git("clone", "-q", remote_url(live_server, "/alice/race.git"), final)
    subjects = git("log", "--format=%s", cwd=final).stdout.splitlines()
    assert sorted(subjects) == sorted([*expected, "start"])
    for i in range(ROUNDS):
        assert (final / f"one/{i}.txt").read_text() == f"one {i}\n"
        assert (final / f"two/{i}.txt").read_text() == f"two {i}\n"
    fsck(bare_path(app, str(repo["id"])))


def test_api_commits_racing_git_pushes_lose_nothing(
    app: FastAPI, live_server: LiveServer, alice: Account, tmp_path: Path
) -> None:
    repo = create_repo(live_server, alice, "mixed")
    api_commit(live_server, alice, "alice/mixed", {"start.txt": b"start\n"}, "start")
    work = tmp_path / "w"
    git("clone", "-q", remote_url(live_server, "/alice/mixed.git", alice), work)

    landed_api: list[str] = []
    landed_push: list[str] = []
    for i in range(ROUNDS):
        git("pull", "-q", "--rebase", "origin", "main", cwd=work)
        for j in range(3):
            write_commit(work, {f"push/{i}-{j}.txt": f"push {i} {j}\n"}, f"push {i} {j}")
        sha, pushed = _together(
            lambda i=i: api_commit(live_server, alice, "alice/mixed", {f"api/{i}.txt": b"api\n"}, f"api {i}"),
            _push(work),
        )
        landed_api.append(sha)  # type: ignore[arg-type]
        # The push either won, or lost to the API commit and is retried after a rebase.
        landed_push.append(
            rev(work) if pushed.returncode == 0 else _push_until_accepted(work)  # type: ignore[attr-defined]
        )

    bare = bare_path(app, str(repo["id"]))
    fsck(bare)
    main = git("rev-parse", "refs/heads/main", cwd=bare).stdout.strip()
    for sha in landed_api + landed_push:
        assert git("merge-base", "--is-ancestor", sha, main, cwd=bare, check=False).returncode == 0, sha
    final = tmp_path / "final"
    git("clone", "-q", remote_url(live_server, "/alice/mixed.git"), final)
    for i in range(ROUNDS):
        assert (final / f"api/{i}.txt").read_text() == "api\n"
        for j in range(3):
            assert (final / f"push/{i}-{j}.txt").read_text() == f"push {i} {j}\n"
    subjects = git("log", "--format=%s", cwd=final).stdout.splitlines()
    assert len(subjects) == len(set(subjects)) == 1 + ROUNDS * 4
