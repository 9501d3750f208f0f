"""The route class of pages whose first path segment is an owner's name (`/{owner}`, `/{owner}/{name}/…`).

Such a pattern would also match `/api/nothing` or `/login/x`; those first segments are reserved (no owner
can take them), so these routes step aside and the request gets the app's plain 404 (or 405) instead.
"""

from __future__ import annotations

from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Scope

from opensci.validation import RESERVED_OWNER_NAMES


class OwnerPageRoute(APIRoute):
    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        first = scope.get("path", "").lstrip("/").split("/", 1)[0].lower()
        own_prefix = self.path.lstrip("/").split("/", 1)[0]
        if first in RESERVED_OWNER_NAMES and first != own_prefix:
            return Match.NONE, {}
        return super().matches(scope)
