"""Which stored objects the repositories reference: LFS pointers reachable from any ref, found by git."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from opensci.accounts.permissions import Actor
from opensci.cli.main import app as cli
from opensci.db.base import utcnow
from opensci.repos import service
from opensci.repos.gitstore import GitStore, Upload
from opensci.repos.models import Repository
from opensci.settings import Settings
from opensci.storage import files, quota
from opensci.storage.gc import gc, release_holds
from opensci.storage.models import RepoObject
from opensci.storage.pointers import parse_pointer
from opensci.storage.references import referenced_by_repo, referenced_lfs_oids
from opensci.storage.store import BlobStore
from tests.conftest import Account
from tests.storage.conftest import backdate, random_bytes

DAY = 86400


def pointer(data: bytes) -> bytes:
    oid = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()


def oid(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def commit(
    session: Session,
    store: GitStore,
    actor: Actor,
    repo: Repository,
    files: dict[str, bytes | None],
    **kw: str,
) -> str:
    changes = {path: None if data is None else Upload(data=data) for path, data in files.items()}
    commit_id, _ = service.commit_files(actor, session, store, repo, changes, message="change", **kw)
    session.commit()
    return commit_id


def test_parse_pointer() -> None:
    p = pointer(b"abc")
    assert parse_pointer(p) == (oid(b"abc"), 3)
    with_ext = (
        b"version https://git-lfs.github.com/spec/v1\next-0-foo sha256:" + b"1" * 64 + b"\n"
        b"oid sha256:" + oid(b"x").encode() + b"\nsize 1\n"
    )
    assert parse_pointer(with_ext) == (oid(b"x"), 1)
    assert parse_pointer(p.replace(b"sha256:", b"sha1:")) is None
    assert parse_pointer(p.replace(b"size 3", b"size three")) is None
    assert parse_pointer(p[:-1] + b" " * 1100 + b"\n") is None  # pointers are at most 1024 bytes
    assert parse_pointer(b"just some text\n") is None
    assert parse_pointer(p.replace(oid(b"abc").encode(), b"A" * 64)) is None


def test_pointers_reachable_from_any_ref_are_referenced(app: FastAPI, alice: Account) -> None:
    gitstore: GitStore = app.state.store
    with app.state.db.session() as session:
        actor = Actor.for_user(session, alice.user)
        repo = service.create_repo(actor, session, gitstore, name="data", kind="dataset")
        other = service.create_repo(actor, session, gitstore, name="other", kind="model")
        unlisted = service.create_repo(actor, session, gitstore, name="unlisted")
        blobs = {
            name: name.encode() * 100 for name in ("main", "branch", "old", "deleted", "tagged", "other")
        }

        commit(
            session,
            gitstore,
            actor,
            repo,
            {
                "a.bin": pointer(blobs["main"]),
                "README.md": b"# not a pointer\n",
                "fake.bin": b"version https://git-lfs.github.com/spec/v1\noid sha256:nothex\nsize 1\n",
            },
        )
        # Only in an old commit of the default branch.
        commit(session, gitstore, actor, repo, {"old.bin": pointer(blobs["old"])})
        commit(session, gitstore, actor, repo, {"old.bin": None})
        # Only on a non-default branch.
        commit(session, gitstore, actor, repo, {"b.bin": pointer(blobs["branch"])}, branch="feature")
        # On a branch that is deleted: its commit becomes unreachable.
        commit(session, gitstore, actor, repo, {"d.bin": pointer(blobs["deleted"])}, branch="tmp")
        service.delete_ref(actor, session, gitstore, repo, type="branch", name="tmp")
        # On a branch that is deleted after a tag was made of it: the tag keeps it.
        commit(session, gitstore, actor, repo, {"t.bin": pointer(blobs["tagged"])}, branch="release")
        service.create_ref(
            actor, session, gitstore, repo, type="tag", name="v1", revision="release", message="v1"
        )
        service.delete_ref(actor, session, gitstore, repo, type="branch", name="release")
        commit(session, gitstore, actor, other, {"nested/dir/o.bin": pointer(blobs["other"])})
        commit(session, gitstore, actor, unlisted, {"u.bin": pointer(b"unlisted")})
        session.commit()

        found = referenced_lfs_oids(gitstore, [repo.id, other.id])
        assert found == {oid(blobs[k]) for k in ("main", "branch", "old", "tagged", "other")}
        assert referenced_lfs_oids(gitstore, []) == set()
        empty = service.create_repo(actor, session, gitstore, name="empty")
        assert referenced_lfs_oids(gitstore, [empty.id]) == set()
        gitstore.remove(empty.id)
        with pytest.raises(FileNotFoundError):
            referenced_lfs_oids(gitstore, [empty.id])


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("OPENSCI_HOME", str(settings.home))
    monkeypatch.setenv("OPENSCI_DATABASE_URL", settings.effective_database_url)
    return settings


def test_gc_command_keeps_what_repositories_reference(
    app: FastAPI, alice: Account, cli_env: Settings, make_store: Callable[..., BlobStore]
) -> None:
    runner = CliRunner()
    store = make_store()
    gitstore: GitStore = app.state.store
    kept, dropped = random_bytes(1_500_000, 60), random_bytes(1_500_000, 61)
    store.put(io.BytesIO(kept))
    store.put(io.BytesIO(dropped))
    store.close()
    with app.state.db.session() as session:
        actor = Actor.for_user(session, alice.user)
        repo = service.create_repo(actor, session, gitstore, name="weights", kind="model")
        commit(session, gitstore, actor, repo, {"model.bin": pointer(kept)})
    backdate(store.db, 2 * DAY)

    result = runner.invoke(cli, ["storage", "gc", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "1 repositories reference 1 objects" in result.output
    assert "would delete 1 objects" in result.output
    assert store.has(oid(dropped))

    result = runner.invoke(cli, ["storage", "gc", "--grace", "3600", "--json"])
    assert result.exit_code == 0, result.output
    assert '"objects_deleted": 1' in result.output
    assert not store.has(oid(dropped))
    assert b"".join(store.iter_range(oid(kept))) == kept

    result = runner.invoke(cli, ["storage", "stats"])
    assert result.exit_code == 0 and "objects: 1 " in result.output

    # A repository whose git directory vanished stops the collection rather than losing its objects.
    gitstore.remove(repo.id)
    result = runner.invoke(cli, ["storage", "gc", "--grace", "0"])
    assert result.exit_code == 1
    assert "nothing was collected" in result.output
    assert store.has(oid(kept))


def test_gc_returns_uploads_never_committed_to_the_owners_quota(
    app: FastAPI, alice: Account, cli_env: Settings, make_store: Callable[..., BlobStore]
) -> None:
    runner = CliRunner()
    store = make_store()
    gitstore: GitStore = app.state.store
    committed, abandoned = random_bytes(300_000, 70), random_bytes(300_000, 71)
    with app.state.db.session() as session:
        actor = Actor.for_user(session, alice.user)
        repo = service.create_repo(actor, session, gitstore, name="held", kind="dataset")
        infos = [store.put(io.BytesIO(data)) for data in (committed, abandoned)]
        for info in infos:  # both uploaded to the repository: held, counted
            files.hold_object(session, app.state.settings, repo, info.oid, info.size)
        session.commit()
        commit(session, gitstore, actor, repo, {"data.bin": pointer(committed)})
        assert quota.usage(session, app.state.settings, repo.owner_id).used_bytes == 600_000
    store.close()
    backdate(store.db, 2 * DAY)
    with app.state.db.session() as session:
        session.execute(sa.update(RepoObject).values(created_at=utcnow() - timedelta(days=2)))
        session.commit()

    result = runner.invoke(cli, ["storage", "gc", "--grace", "3600"])
    assert result.exit_code == 0, result.output
    assert "released 1 unreferenced objects from quotas" in result.output
    with app.state.db.session() as session:
        assert quota.usage(session, app.state.settings, repo.owner_id).used_bytes == 300_000
        assert files.held_oids(session, repo.id) == [oid(committed)]
    assert not store.has(oid(abandoned)) and store.has(oid(committed))


def test_a_commit_landing_while_gc_reads_the_references_keeps_its_object_and_hold(
    app: FastAPI, alice: Account, make_store: Callable[..., BlobStore]
) -> None:
    """What QA saw: `opensci storage gc --grace 0` during re-uploads released the hold of an object
    that `main` pointed at (its raw file then came back as the pointer text), and could have deleted the
    object: the references were read before the commit moved the branch, and the grace period counted
    back from after that. Now it counts back from the start of the collection, a commit dates the object
    and the hold, and every delete re-checks the date."""
    store = make_store()
    gitstore: GitStore = app.state.store
    settings: Settings = app.state.settings
    data = random_bytes(300_000, 80)
    with app.state.db.session() as session:
        actor = Actor.for_user(session, alice.user)
        repo = service.create_repo(actor, session, gitstore, name="racy", kind="dataset")
        repo_id = repo.id
        info = store.put(io.BytesIO(data))
        files.hold_object(session, settings, repo, info.oid, info.size)  # uploaded, not committed yet
        session.commit()
    store.close()
    backdate(store.db, 2 * DAY)  # uploaded long ago (or a moment ago, with --grace 0)
    with app.state.db.session() as session:
        session.execute(sa.update(RepoObject).values(created_at=utcnow() - timedelta(days=2)))
        session.commit()

    started = utcnow()  # the collection starts and reads the references: no revision points at it yet
    per_repo = referenced_by_repo(gitstore, [repo_id])
    assert per_repo == {repo_id: set()}

    with app.state.db.session() as session:  # the commit lands meanwhile
        actor = Actor.for_user(session, alice.user)
        repo = session.get(Repository, repo_id)
        assert repo is not None
        files.attach_object(session, settings, store, repo, actor, info.oid, info.size)
        commit(session, gitstore, actor, repo, {"data.bin": pointer(data)})

    report = gc(store, set(), grace=0, started=started)  # then deletes what it found unreferenced
    assert release_holds(store, per_repo, grace=0, started=started) == 0
    assert report.objects_deleted == 0
    assert b"".join(store.iter_range(info.oid)) == data
    with app.state.db.session() as session:
        assert files.held_oids(session, repo_id) == [info.oid]

    # An upload never committed is still released, and its object collected, once its time is past.
    other = store.put(io.BytesIO(random_bytes(200_000, 81)))
    with app.state.db.session() as session:
        repo = session.get(Repository, repo_id)
        assert repo is not None
        files.hold_object(session, settings, repo, other.oid, other.size)
        session.commit()
    store.close()
    later = utcnow() + timedelta(seconds=1)
    per_repo = referenced_by_repo(gitstore, [repo_id])
    assert gc(store, set().union(*per_repo.values()), grace=0, started=later).objects_deleted == 1
    assert release_holds(store, per_repo, grace=0, started=later) == 1
    with app.state.db.session() as session:
        assert files.held_oids(session, repo_id) == [info.oid]
