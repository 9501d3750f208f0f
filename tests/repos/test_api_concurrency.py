"""Concurrent commits through the API over a real socket: no writer's update is lost."""

from __future__ import annotations

import itertools
import threading

import httpx
import pytest

from tests.api_helpers import API, commit, committed, create_repo, heads, tree_paths
from tests.conftest import Account, LiveServer

WRITERS = 8


@pytest.mark.live
def test_concurrent_commits_to_one_branch_lose_nothing(live_server: LiveServer, alice: Account) -> None:
    with httpx.Client(base_url=live_server.url, timeout=60) as client:
        create_repo(client, alice, "busy")
        base = committed(client, alice, "alice/busy", {"README.md": "start\n"}, message="start")

    barrier = threading.Barrier(WRITERS)
    results: dict[int, httpx.Response | BaseException] = {}

    def write(i: int) -> None:
        with httpx.Client(base_url=live_server.url, timeout=120) as client:
            barrier.wait(timeout=30)
            try:
                results[i] = commit(
                    client,
                    alice,
                    "alice/busy",
                    {f"writers/w{i}.txt": f"from writer {i}\n"},
                    message=f"writer {i}",
                )
            except BaseException as exc:  # reported below, with the others
                results[i] = exc

    threads = [threading.Thread(target=write, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert all(not t.is_alive() for t in threads)

    statuses = {i: (r.status_code if isinstance(r, httpx.Response) else repr(r)) for i, r in results.items()}
    assert statuses == dict.fromkeys(range(WRITERS), 201), {
        i: r.text if isinstance(r, httpx.Response) else repr(r) for i, r in results.items()
    }
    created = {r.json()["commit"] for r in results.values() if isinstance(r, httpx.Response)}
    assert len(created) == WRITERS

    with httpx.Client(base_url=live_server.url, timeout=60) as client:
        paths = tree_paths(client, alice, "alice/busy")
        assert paths == {"README.md"} | {f"writers/w{i}.txt" for i in range(WRITERS)}
        for i in range(WRITERS):
            r = client.get(f"{API}/repos/alice/busy/raw/main/writers/w{i}.txt")
            assert r.text == f"from writer {i}\n"

        history = client.get(f"{API}/repos/alice/busy/commits", params={"per_page": 100}).json()["items"]
        assert len(history) == WRITERS + 1
        assert history[-1]["id"] == base
        assert {c["id"] for c in history[:-1]} == created
        # A straight line: each commit's parent is the next older one.
        for newer, older in itertools.pairwise(history):
            assert newer["parents"] == [older["id"]]
        assert heads(client, alice, "alice/busy") == {"main": history[0]["id"]}
