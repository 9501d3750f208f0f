"""What a finished job wrote under `outputs/`, committed to its output branch with its provenance.

The commit's message names the job and carries trailers that point back at it and at exactly what it
ran on; `git log` shows them and `GET /api/v1/jobs/{id}` has the rest:

    Output of job 12: python fit.py --bins 40

    OpenSci-Job: http://127.0.0.1:8000/jobs/12
    OpenSci-Code: alice/fitting@3f2c…
    OpenSci-Input: catalog=alice/gaia-sample@9e1a…
"""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path
from typing import IO

from sqlalchemy.orm import Session

from opensci.accounts.models import User
from opensci.accounts.permissions import Actor, can
from opensci.compute.models import Job
from opensci.compute.workspace import note
from opensci.errors import InvalidInput, OpenSciError
from opensci.repos import service as repos
from opensci.repos.gitstore import GitStore, Upload
from opensci.repos.models import Repository
from opensci.settings import Settings
from opensci.storage import files
from opensci.storage.store import BlobStore
from opensci.validation import check_repo_path


class OutputError(Exception):
    """The outputs could not be committed; the message says why."""


def message_of(settings: Settings, job: Job) -> str:
    command = shlex.join(job.spec["command"])
    if len(command) > 120:
        command = command[:117] + "..."
    code = job.resolved["code"]
    lines = [
        f"Output of job {job.id}: {command}",
        "",
        f"OpenSci-Job: {settings.base_url.rstrip('/')}/jobs/{job.id}",
        f"OpenSci-Code: {code['repo']}@{code['commit']}",
    ]
    lines += [
        f"OpenSci-Input: {name}={ref['repo']}@{ref['commit']}" for name, ref in job.resolved["inputs"].items()
    ]
    if job.rerun_of:
        lines.append(f"OpenSci-Rerun-Of: {job.rerun_of}")
    return "\n".join(lines) + "\n"


def output_files(outputs: Path) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """Regular files under `outputs` by repository path; and what was skipped, with why (links, odd
    files, names a repository cannot hold). Nothing outside `outputs` is ever read: a job that made
    `outputs` itself a link (to the platform's data, say) gets nothing committed, and links inside it are
    neither followed nor committed."""
    found: dict[str, Path] = {}
    skipped: list[tuple[str, str]] = []
    try:
        top = os.lstat(outputs)
    except FileNotFoundError:
        return found, skipped
    if not stat.S_ISDIR(top.st_mode):
        kind = "a link" if stat.S_ISLNK(top.st_mode) else "not a folder"
        return found, [("", f"outputs/ is {kind}; nothing under it is committed")]
    for dirpath, dirnames, filenames in os.walk(outputs):  # never descends into links
        dirnames.sort()
        for name in list(dirnames):
            if os.path.islink(os.path.join(dirpath, name)):
                dirnames.remove(name)
                rel = (Path(dirpath) / name).relative_to(outputs).as_posix()
                skipped.append((rel, "is a link to a folder, not followed"))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(outputs).as_posix()
            mode = os.lstat(path).st_mode
            if not stat.S_ISREG(mode):
                skipped.append((rel, "is not a regular file (a link, a pipe…)"))
                continue
            try:
                check_repo_path(rel)
            except InvalidInput as exc:
                skipped.append((rel, f"has a name a repository cannot hold ({exc.message})"))
                continue
            found[rel] = path
    return found, skipped


def commit_outputs(
    settings: Settings,
    session: Session,
    store: GitStore,
    blobs: BlobStore,
    job: Job,
    outputs: Path,
    log: IO[bytes],
) -> str | None:
    """Commit the job's outputs as its submitter; returns the commit (None when there is nothing to
    commit or nowhere to commit it). Large files go to the blob store, deduplicated, as for any commit."""
    target = job.resolved.get("output")
    found, skipped = output_files(outputs)
    for rel, why in skipped:
        if not rel and target is not None:  # outputs/ itself is a link: the job's outputs are not there
            raise OutputError(f"{why} (outputs are never read through links)")
        note(log, f"outputs/{rel} {why}: not committed" if rel else why)
    if target is None:
        if found:
            note(log, f"{len(found)} files in outputs/ are not kept: the job has no output repository")
        return None
    if not found:
        note(log, "the job wrote nothing under outputs/: no commit")
        return None
    repo = session.get(Repository, target["repo_id"])
    user = session.get(User, job.submitter_id) if job.submitter_id else None
    if repo is None:
        raise OutputError(f"the output repository {target['repo']} no longer exists")
    if user is None:
        raise OutputError("the job's submitter no longer exists")
    actor = Actor.for_user(session, user)
    if not can(actor, "write", repo):
        raise OutputError(f"{user.name} may no longer write to {repo.full_name}")
    try:
        g = repos.open_git(store, repo)
        base = repos.branch_base(g, repo, target["branch"])
        changes = files.with_large_files(
            session, settings, blobs, repo, actor, g, base, {rel: Upload(file=p) for rel, p in found.items()}
        )
        commit, _ = repos.commit_files(
            actor, session, store, repo, changes, message=message_of(settings, job), branch=target["branch"]
        )
    except OpenSciError as exc:
        session.rollback()
        raise OutputError(exc.message) from exc
    session.commit()
    note(log, f"committed {len(found)} output files to {repo.full_name}@{target['branch']}: {commit[:12]}")
    return commit
