"""Pages of the repos domain that change things: the new-repository form and a repository's settings
(description, license, tags, visibility, default branch, rename, delete)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from opensci.accounts import service as accounts
from opensci.accounts.models import Owner, Role
from opensci.accounts.permissions import Actor
from opensci.deps import ActorDep, SessionDep, StoreDep
from opensci.errors import InvalidInput, OpenSciError, Unauthorized
from opensci.repos import service as repos
from opensci.repos.gitstore import GitStore, Upload
from opensci.repos.models import RepoKind, Repository
from opensci.web.render import render
from opensci.web.session import check_csrf
from opensci.web.views.accounts import login_redirect, see_other
from opensci.web.views.repos import load_repo, repo_page

router = APIRouter(include_in_schema=False)

FormStr = Annotated[str, Form()]


def _owner_choices(session: Session, actor: Actor) -> list[Owner]:
    """Where the user may create repositories: their own namespace and orgs where they have write or more."""
    assert actor.user is not None
    orgs = [o for o, role in accounts.list_user_orgs(session, actor.user) if role.rank >= Role.write.rank]
    return [actor.user.owner, *orgs]


def _readme_text(name: str, description: str) -> str:
    body = f"# {name}\n"
    if description.strip():
        body += f"\n{description.strip()}\n"
    return body


@router.get("/new")
def new_repo_page(request: Request, session: SessionDep, actor: ActorDep, kind: str = "code") -> Response:
    if actor.user is None:
        return login_redirect(request)
    form = {
        "owner": actor.user.name,
        "kind": kind if kind in {k.value for k in RepoKind} else "code",
        "visibility": "public",
        "readme": True,
    }
    return render(request, "repos/new.html", owners=_owner_choices(session, actor), form=form, error="")


@router.post("/new")
def create_repo(
    request: Request,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
    owner: FormStr = "",
    name: FormStr = "",
    kind: FormStr = "code",
    visibility: FormStr = "public",
    description: FormStr = "",
    license: FormStr = "",
    readme: FormStr = "",
    csrf_token: FormStr = "",
) -> Response:
    check_csrf(request, csrf_token)
    form = {
        "owner": owner,
        "name": name,
        "kind": kind,
        "visibility": visibility,
        "description": description,
        "license": license,
        "readme": bool(readme),
    }
    try:
        repo = repos.create_repo(
            actor,
            session,
            store,
            name=name.strip(),
            kind=kind,
            owner=owner or None,
            private=visibility == "private",
            description=description,
            license=license,
        )
    except OpenSciError as exc:
        session.rollback()
        return render(
            request,
            "repos/new.html",
            status=exc.status,
            owners=_owner_choices(session, actor),
            form=form,
            error=exc.message,
        )
    if readme:
        repos.commit_files(
            actor,
            session,
            store,
            repo,
            {"README.md": Upload(data=_readme_text(repo.name, description).encode())},
            message="Initial commit",
        )
    return see_other(repo.url_path)


# --- settings of one repository ----------------------------------------------------------------------------


def _admin_repo(
    request: Request, session: Session, actor: Actor, owner: str, name: str
) -> Repository | Response:
    """The repository if the actor administers it; anonymous readers are sent to log in."""
    try:
        return load_repo(request, session, actor, owner, name, "admin")
    except Unauthorized:
        return login_redirect(request)


def _settings_page(
    request: Request,
    actor: Actor,
    store: GitStore,
    repo: Repository,
    status: int = 200,
    error: str = "",
    saved: str = "",
    form: dict[str, str] | None = None,
) -> Response:
    g = repos.open_git(store, repo)
    return repo_page(
        request,
        "repos/settings.html",
        actor,
        repo,
        g,
        "settings",
        status=status,
        error=error,
        saved=saved,
        form=form
        or {
            "description": repo.description,
            "license": repo.license,
            "tags": ", ".join(repo.tags or []),
            "visibility": "private" if repo.private else "public",
            "default_branch": repo.default_branch,
        },
    )


def settings_page(
    owner: str,
    name: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
    saved: str = "",
) -> Response:
    repo = _admin_repo(request, session, actor, owner, name)
    if isinstance(repo, Response):
        return repo
    return _settings_page(request, actor, store, repo, saved=saved[:20])


def update_settings(
    owner: str,
    name: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
    description: FormStr = "",
    license: FormStr = "",
    tags: FormStr = "",
    visibility: FormStr = "public",
    default_branch: FormStr = "",
    csrf_token: FormStr = "",
) -> Response:
    check_csrf(request, csrf_token)
    repo = load_repo(request, session, actor, owner, name, "admin")
    if isinstance(repo, Response):
        return repo
    form = {
        "description": description,
        "license": license,
        "tags": tags,
        "visibility": visibility,
        "default_branch": default_branch,
    }
    try:
        if visibility not in ("public", "private"):
            raise InvalidInput("visibility must be public or private")
        repos.update_repo(
            actor,
            session,
            repo,
            description=description,
            license=license,
            tags=[t for t in re.split(r"[,\s]+", tags) if t],
            private=visibility == "private",
            default_branch=default_branch
            if default_branch and default_branch != repo.default_branch
            else None,
            store=store,
        )
    except OpenSciError as exc:
        session.rollback()
        session.refresh(repo)
        return _settings_page(request, actor, store, repo, status=exc.status, error=exc.message, form=form)
    return see_other(f"{repo.url_path}/settings?saved=settings")


def rename_repo(
    owner: str,
    name: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
    new_name: FormStr = "",
    csrf_token: FormStr = "",
) -> Response:
    check_csrf(request, csrf_token)
    repo = load_repo(request, session, actor, owner, name, "admin")
    if isinstance(repo, Response):
        return repo
    try:
        repos.update_repo(actor, session, repo, name=new_name.strip())
    except OpenSciError as exc:
        session.rollback()
        session.refresh(repo)
        return _settings_page(request, actor, store, repo, status=exc.status, error=exc.message)
    return see_other(f"{repo.url_path}/settings?saved=rename")


def delete_repo(
    owner: str,
    name: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
    confirm: FormStr = "",
    csrf_token: FormStr = "",
) -> Response:
    check_csrf(request, csrf_token)
    repo = load_repo(request, session, actor, owner, name, "admin")
    if isinstance(repo, Response):
        return repo
    if confirm.strip() != repo.full_name:
        return _settings_page(
            request,
            actor,
            store,
            repo,
            status=400,
            error=f"Type {repo.full_name} exactly to confirm the deletion; nothing was deleted.",
        )
    owner_name = repo.owner.name
    repos.delete_repo(actor, session, store, repo)
    return see_other(f"/{owner_name}")


# Registered by `opensci.web.mount` under both "/datasets" and "", like the reading pages.
PAGES: list[tuple[str, Callable[..., Response], list[str]]] = [
    ("/{owner}/{name}/settings", settings_page, ["GET"]),
    ("/{owner}/{name}/settings", update_settings, ["POST"]),
    ("/{owner}/{name}/settings/rename", rename_repo, ["POST"]),
    ("/{owner}/{name}/settings/delete", delete_repo, ["POST"]),
]
