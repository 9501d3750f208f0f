"""Reading Hub URLs: the raw path (revisions arrive `%2F`-encoded), revisions, and the URLs we hand back.

Starlette decodes `%2F` in `scope["path"]`, so `tree/feat%2Fx/dir` would look like revision `feat`.
The routes match on the decoded path, then read what follows the operation from `scope["raw_path"]`,
one segment at a time.
"""

from __future__ import annotations

from urllib.parse import unquote, urlencode

import pygit2
from fastapi import Request
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Scope

from opensci.errors import RevisionNotFound
from opensci.repos import gitstore
from opensci.repos.models import RepoKind, Repository
from opensci.validation import RESERVED_OWNER_NAMES, is_plain_text

# `/api/{repo_type}/…`: the Hub's plural types, and the repository kinds each one serves.
REPO_TYPES: dict[str, tuple[RepoKind, ...]] = {
    "models": (RepoKind.model, RepoKind.code),
    "datasets": (RepoKind.dataset,),
}
_TYPE_PREFIXES = ("models", "datasets", "spaces")


def raw_segments(request: Request) -> list[str]:
    """The request path as sent, split on `/` and then decoded, without the app's root path."""
    raw: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
    path = raw.decode("latin-1").split("?", 1)[0]
    root = request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return [unquote(s, errors="strict") for s in path.split("/")[1:]]


def tail(request: Request, marker: str, start: int) -> list[str]:
    """The decoded segments after the first `marker` segment at index `start` or later."""
    segs = raw_segments(request)
    for i in range(start, len(segs)):
        if segs[i] == marker:
            return segs[i + 1 :]
    return []


def split_revision(segs: list[str]) -> tuple[str, str]:
    """(revision, path) from the segments after an operation: `refs/pr/N` and `refs/convert/x` may also
    arrive unencoded, as three segments; any other revision is one (decoded) segment."""
    if not segs or not segs[0]:
        return "", ""
    if len(segs) >= 3 and segs[0] == "refs" and segs[1] in ("pr", "convert"):
        return "/".join(segs[:3]), "/".join(segs[3:]).strip("/")
    return segs[0], "/".join(segs[1:]).strip("/")


def resolve_revision(g: pygit2.Repository, rev: str) -> pygit2.Commit:
    """A branch, a tag, a commit id, or a full ref name such as `refs/pr/1`."""
    if rev.startswith("refs/"):
        valid = is_plain_text(rev) and pygit2.reference_is_valid_name(rev)
        ref = g.references.get(rev) if valid else None
        if ref is None:
            raise RevisionNotFound(f"revision {rev!r} not found")
        try:
            return ref.resolve().peel(pygit2.Commit)
        except (pygit2.GitError, KeyError) as exc:
            raise RevisionNotFound(f"{rev!r} does not point to a commit") from exc
    return gitstore.resolve(g, rev)


def endpoint(request: Request) -> str:
    """The base URL the client used (its HF_ENDPOINT): returned URLs are built on it."""
    return str(request.base_url).rstrip("/")


def repo_url(request: Request, repo: Repository) -> str:
    return f"{endpoint(request)}{repo.url_path}"


def next_link(request: Request, cursor: int) -> str:
    """`Link` header value for the next page: the same URL and query, with the cursor replaced."""
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
    params.append(("cursor", str(cursor)))
    url = f"{endpoint(request)}{request.url.path[len(request.scope.get('root_path', '')) :]}"
    raw = request.scope.get("raw_path")
    if raw:  # keep `%2F` in revisions: the decoded path would name another revision
        url = f"{endpoint(request)}{raw.decode('latin-1')[len(request.scope.get('root_path', '')) :]}"
    return f'<{url}?{urlencode(params)}>; rel="next"'


class HubRoute(APIRoute):
    """A Hub route. `/api/{repo_type}/…` matches only the Hub's types, and `/{namespace}/{name}/…`
    steps aside for reserved first segments (`/api/…`, `/login/…`), so neither shadows other routes."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        segs = scope.get("path", "").lstrip("/").split("/")
        if self.path.startswith("/api/{repo_type}"):
            if len(segs) < 2 or segs[1] not in _TYPE_PREFIXES:
                return Match.NONE, {}
        elif self.path.startswith("/{namespace}/") and segs[0].lower() in RESERVED_OWNER_NAMES:
            return Match.NONE, {}
        return super().matches(scope)

    def get_route_handler(self):  # type: ignore[no-untyped-def]
        from opensci.hub.errors import translating

        return translating(super().get_route_handler())
