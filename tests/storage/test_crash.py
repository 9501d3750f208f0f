"""kill -9 during uploads: nothing acknowledged is lost and no partial object ever becomes visible."""

from __future__ import annotations

import functools
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from opensci.db import Database
from opensci.settings import Settings
from opensci.storage.maintenance import verify
from opensci.storage.models import StorageObject
from opensci.storage.store import BlobStore
from tests.storage.crash_child import content

CHILD = Path(__file__).with_name("crash_child.py")
ROUNDS = 6
REPO_ROOT = Path(__file__).parents[2]


@functools.cache
def oid_of(i: int) -> str:
    return hashlib.sha256(content(i)).hexdigest()


def run_and_kill(settings: Settings, start: int, delay: float) -> list[str]:
    env = {
        **os.environ,
        "OPENSCI_HOME": str(settings.home),
        "OPENSCI_DATABASE_URL": settings.effective_database_url,
        "OPENSCI_STORAGE_PACK_MAX_BYTES": str(4 * 1024 * 1024),
        "PYTHONPATH": str(REPO_ROOT / "src"),
    }
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(start)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the child ended by itself:\n{err.decode()}"
    return out.decode().splitlines()


def test_kill_9_during_puts_loses_nothing_acknowledged(settings: Settings, db: Database) -> None:
    settings.ensure_dirs()
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    store = BlobStore(settings, db)
    acknowledged: dict[str, int] = {}
    attempted: dict[str, int] = {}
    checked: set[str] = set()
    killed_during: set[int] = set()
    start = 0
    for round_ in range(ROUNDS):
        lines = run_and_kill(settings, start, rng.uniform(1.0, 3.0))
        started = [int(line.split()[1]) for line in lines if line.startswith("start ")]
        for line in lines:
            if line.startswith("ok "):
                _, i, oid = line.split()
                assert oid == oid_of(int(i))
                acknowledged[oid] = int(i)
        for i in started:
            attempted[oid_of(i)] = i
        in_flight = max(started) if started else start
        killed_during.add(in_flight)  # its object may or may not have committed: both are fine

        with db.session() as session:
            visible = set(session.scalars(select(StorageObject.oid)))
        context = f"(seed {seed}, round {round_}, {len(started)} puts started)"
        assert set(acknowledged) <= visible, f"acknowledged objects lost {context}"
        assert visible <= set(attempted), f"an object nobody uploaded is visible {context}"
        unacknowledged = visible - set(acknowledged)
        assert {attempted[o] for o in unacknowledged} <= killed_during, f"stray objects {context}"
        for oid in visible - checked:
            with store.open(oid) as fh:
                assert fh.read() == content(attempted[oid]), f"object {attempted[oid]} reads wrong {context}"
        checked |= visible
        start = in_flight + 1

    assert len(acknowledged) >= ROUNDS, "the kills should land after some puts completed"
    report = store.verify()
    assert report.ok, report
    # The dead bytes left by the kills are garbage; collecting them keeps every object intact.
    with db.session() as session:
        visible = set(session.scalars(select(StorageObject.oid)))
    store.gc(visible, grace=0)
    for oid in visible:
        assert b"".join(store.iter_range(oid)) == content(attempted[oid])
    assert verify(store).ok
    store.close()
