"""What a finished job wrote under `outputs/`, committed to its output branch with its provenance.

The commit's message names the job and carries trailers that point back at it and at exactly what it
ran on; `git log` shows them and `GET /api/v1/jobs/{id}` has the rest:

    Output of job 12: python fit.py --bins 40

    OpenSci-Job: http://127.0.0.1:8000/jobs/12
    OpenSci-Code: alice/fitting@3f2c…
    OpenSci-Input: catalog=alice/gaia-sample@9e1a…

A private repository among them is named only "(a private repository)" when the output's readers may not
know of it (see `hidden_sources`).
"""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path
from typing import IO

from sqlalchemy.orm import Session

from opensci.accounts.models import User
from opensci.accounts.permissions import Actor
from opensci.compute import service
from opensci.compute.models import Job
from opensci.compute.shim import human_size
from opensci.compute.workspace import note
from opensci.errors import InvalidInput, OpenSciError
from opensci.repos import service as repos
from opensci.repos.gitstore import GitStore, Upload
from opensci.repos.models import Repository
from opensci.settings import Settings
from opensci.storage import files
from opensci.storage.store import BlobStore
from opensci.validation import MAX_PATH_DEPTH, check_repo_path


class OutputError(Exception):
    """The outputs could not be committed; the message says why, `reason` is the job's reason."""

    def __init__(self, message: str, reason: str = "outputs") -> None:
        super().__init__(message)
        self.reason = reason


def message_of(settings: Settings, job: Job, hidden: frozenset[str] = frozenset()) -> str:
    """The output commit's message: the job and its command, then trailers naming the code and inputs at
    their commits, except those in `hidden` ("code", or an input's name), which say only "private"."""
    command = " ".join(shlex.join(job.spec["command"]).split())  # one line, whatever the command holds
    if len(command) > 120:
        command = command[:117] + "..."

    def ref(key: str, r: dict[str, str]) -> str:
        return PRIVATE if key in hidden else f"{r['repo']}@{r['commit']}"

    lines = [
        f"Output of job {job.id}: {command}",
        "",
        f"OpenSci-Job: {settings.base_url.rstrip('/')}/jobs/{job.id}",
        f"OpenSci-Code: {ref('code', job.resolved['code'])}",
    ]
    lines += [f"OpenSci-Input: {name}={ref(name, r)}" for name, r in job.resolved["inputs"].items()]
    if job.rerun_of:
        lines.append(f"OpenSci-Rerun-Of: {job.rerun_of}")
    return "\n".join(lines) + "\n"


PRIVATE = "(a private repository)"


def hidden_sources(session: Session, job: Job, output: Repository) -> frozenset[str]:
    """The job's code and inputs that the output's readers may not know about: private repositories,
    unless the output is private to the same owner. Their trailers name no repository and no commit (the
    job, visible to those who may read it all, keeps them)."""
    hidden: set[str] = set()
    sources = {"code": job.resolved["code"], **job.resolved["inputs"]}
    for key, r in sources.items():
        source = session.get(Repository, r.get("repo_id")) if r.get("repo_id") else None
        if (
            source is not None
            and source.private
            and not (output.private and source.owner_id == output.owner_id)
        ):
            hidden.add(key)
    return frozenset(hidden)


SKIPPED_NOTES = 20  # skipped files named one by one in the log; the rest are counted


def output_files(outputs: Path) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """Regular files under `outputs` by repository path; and what was skipped, with why (links, odd
    files, names a repository cannot hold, folders too deep). Nothing outside `outputs` is ever read or
    even looked at: entries are classified by `lstat` alone, so links are neither followed nor resolved,
    and a job that made `outputs` itself a link (to the platform's data, say) gets nothing committed.
    The walk is iterative: a tree of any depth cannot exhaust the interpreter's stack."""
    found: dict[str, Path] = {}
    skipped: list[tuple[str, str]] = []
    try:
        top = os.lstat(outputs)
    except FileNotFoundError:
        return found, skipped
    if not stat.S_ISDIR(top.st_mode):
        kind = "a link" if stat.S_ISLNK(top.st_mode) else "not a folder"
        return found, [("", f"outputs/ is {kind}; nothing under it is committed")]
    folders: list[tuple[Path, str, int]] = [(outputs, "", 0)]  # (path, repository path, depth)
    while folders:
        folder, base, depth = folders.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name, reverse=True)
        except OSError as exc:
            skipped.append((base or ".", f"cannot be read ({exc.strerror})"))
            continue
        for entry in entries:
            rel = f"{base}{entry.name}"
            shown = _shown(rel)
            if shown != rel:
                skipped.append((shown, "has a name that is not UTF-8 text"))
                continue
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                skipped.append((rel, "is a link, not followed"))
            elif stat.S_ISDIR(mode):
                if depth + 1 >= MAX_PATH_DEPTH:
                    skipped.append((rel, f"is deeper than {MAX_PATH_DEPTH} folders"))
                else:
                    folders.append((Path(entry.path), rel + "/", depth + 1))
            elif not stat.S_ISREG(mode):
                skipped.append((rel, "is not a regular file (a pipe, a socket…)"))
            else:
                try:
                    check_repo_path(rel)
                except InvalidInput as exc:
                    skipped.append((rel, f"has a name a repository cannot hold ({exc.message})"))
                    continue
                found[rel] = Path(entry.path)
    skipped.sort()
    return dict(sorted(found.items())), skipped


def _shown(name: str) -> str:
    """A file name as text: itself when it is UTF-8, else with its undecodable bytes escaped."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return name


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
    for rel, why in skipped[:SKIPPED_NOTES]:
        if not rel and target is not None:  # outputs/ itself is a link: the job's outputs are not there
            raise OutputError(f"{why} (outputs are never read through links)")
        note(log, f"outputs/{rel} {why}: not committed" if rel else why)
    if len(skipped) > SKIPPED_NOTES:
        note(log, f"and {len(skipped) - SKIPPED_NOTES} more entries of outputs/ are not committed")
    if target is None:
        if found:
            note(log, f"{len(found)} files in outputs/ are not kept: the job has no output repository")
        return None
    if not found:
        note(log, "the job wrote nothing under outputs/: no commit")
        return None
    total = sum(path.stat().st_size for path in found.values())
    limit = settings.compute_max_output_bytes
    if limit and total > limit:  # reading and hashing them would hold this server for too long
        raise OutputError(
            f"outputs/ holds {human_size(total)}, more than the {human_size(limit)} a job may commit "
            "(OPENSCI_COMPUTE_MAX_OUTPUT_BYTES); nothing was committed"
        )
    repo = session.get(Repository, target["repo_id"])
    user = session.get(User, job.submitter_id) if job.submitter_id else None
    if repo is None:
        raise OutputError(f"the output repository {target['repo']} no longer exists")
    if user is None:
        raise OutputError("the job's submitter no longer exists")
    actor = Actor.for_user(session, user)
    # Rights may have changed while the job ran: an input made private must not be published now.
    refusal = service.submitter_refusal(session, job)
    if refusal is not None:
        raise OutputError(refusal, reason="permissions")
    try:
        g = repos.open_git(store, repo)
        base = repos.branch_base(g, repo, target["branch"])
        changes = files.with_large_files(
            session, settings, blobs, repo, actor, g, base, {rel: Upload(file=p) for rel, p in found.items()}
        )
        commit, _ = repos.commit_files(
            actor,
            session,
            store,
            repo,
            changes,
            message=message_of(settings, job, hidden_sources(session, job, repo)),
            branch=target["branch"],
        )
    except OpenSciError as exc:
        session.rollback()
        raise OutputError(exc.message) from exc
    session.commit()
    note(log, f"committed {len(found)} output files to {repo.full_name}@{target['branch']}: {commit[:12]}")
    return commit
