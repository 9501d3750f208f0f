"""The page of an owner: a user (profile, repositories, organizations) or an organization (members,
repositories). Repositories are listed through `repos.service.list_repos`, so private ones appear only to
those who may read them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from opensci.accounts import service as accounts
from opensci.accounts.models import OwnerKind
from opensci.deps import ActorDep, SessionDep, SettingsDep
from opensci.repos import service as repos
from opensci.storage.quota_api import may_see_usage, usage_out
from opensci.web.render import render
from opensci.web.routing import OwnerPageRoute

router = APIRouter(include_in_schema=False, route_class=OwnerPageRoute)

PER_PAGE = 20


@router.get("/{owner}")
def owner_page(
    owner: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    actor: ActorDep,
    page: Annotated[int, Query(ge=1, le=10_000)] = 1,
) -> Response:
    row = accounts.get_owner(session, owner)
    items, total = repos.list_repos(actor, session, owner=row.name, page=page, per_page=PER_PAGE)
    pages = max(1, -(-total // PER_PAGE))
    usage = usage_out(session, settings, row) if may_see_usage(actor, row) else None
    common = {"owner": row, "repos": items, "total": total, "page": page, "pages": pages, "usage": usage}
    if row.kind == OwnerKind.org:
        members = accounts.list_members(session, row)
        return render(request, "owners/org.html", members=members, **common)
    assert row.user is not None
    orgs = accounts.list_user_orgs(session, row.user)
    return render(request, "owners/user.html", user=row.user, orgs=orgs, **common)
