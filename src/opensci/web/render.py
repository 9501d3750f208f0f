"""Rendering for the pages: the Jinja environment, Markdown → sanitized HTML, syntax highlighting, helpers.

Everything user-supplied reaches the page either escaped by Jinja (autoescape is on for every template)
or through `markdown()`, whose output is cleaned by nh3: no scripts, no event handlers, no `javascript:`.
"""

from __future__ import annotations

import posixpath
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import nh3
from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup
from pygments import highlight as pygments_highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import DiffLexer, TextLexer, get_lexer_by_name, get_lexer_for_filename
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

from opensci import __version__
from opensci.web import session as web_session

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

# Files larger than this are not highlighted nor shown inline, only linked for download.
MAX_HIGHLIGHT_BYTES = 1024 * 1024
MAX_MARKDOWN_BYTES = 1024 * 1024

# Pages are our own markup plus sanitized user content; the policy is a second line of defence.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: https:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    # Pages differ by who is looking: never kept by shared caches.
    "Cache-Control": "private, no-cache",
}


# --- formatting helpers ------------------------------------------------------------------------------


def timeago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return "never"
    now = now or datetime.now(UTC)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    seconds = int((now - value).total_seconds())
    if seconds < 60:
        return "just now"
    for unit, size in (("year", 365 * 86400), ("month", 30 * 86400), ("day", 86400), ("hour", 3600)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    n = seconds // 60
    return f"{n} minute{'s' if n != 1 else ''} ago"


def isodate(value: datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat(timespec="seconds")


def filesize(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def urlpath(value: str) -> str:
    """Quote a revision or file path for use inside a URL path (keeps the slashes)."""
    return quote(value, safe="/")


def repo_href(repo: Any, *parts: str) -> str:
    """`/owner/name/tree/main/src`, `/datasets/owner/name/...`: the page URL of a repository view."""
    tail = "/".join(urlpath(p) for p in parts if p)
    return f"{repo.url_path}/{tail}" if tail else repo.url_path


def raw_href(repo: Any, rev: str, path: str) -> str:
    return f"/api/v1/repos/{urlpath(repo.owner.name)}/{urlpath(repo.name)}/raw/{urlpath(rev)}/{urlpath(path)}"


def with_query(request: Request, **params: object) -> str:
    """The current path with some query parameters replaced (None or "" removes one)."""
    query = dict(request.query_params)
    for key, value in params.items():
        if value is None or value == "":
            query.pop(key, None)
        else:
            query[key] = str(value)
    return request.url.path + (f"?{urlencode(query)}" if query else "")


_JOB_TRAILER = re.compile(r"^OpenSci-Job:[ \t]*\S*/jobs/(\d{1,10})[ \t]*$", re.MULTILINE)


def job_of(message: str) -> int | None:
    """The job that made a commit, from the `OpenSci-Job: <url>` trailer of its message (jobs' outputs)."""
    match = _JOB_TRAILER.search(message or "")
    return int(match.group(1)) if match else None


def static_url(name: str) -> str:
    return f"/static/{name}?v={__version__}"


# --- syntax highlighting -----------------------------------------------------------------------------

_CODE_FORMATTER = HtmlFormatter(
    linenos="table", lineanchors="L", anchorlinenos=True, cssclass="highlight", wrapcode=True
)
_INLINE_FORMATTER = HtmlFormatter(nowrap=True)


def lexer_for(filename: str, code: str) -> Any:
    try:
        return get_lexer_for_filename(filename, code, stripnl=False, ensurenl=False)
    except ClassNotFound:
        return TextLexer(stripnl=False, ensurenl=False)


def highlight_file(filename: str, code: str) -> Markup:
    """A whole file with line numbers (anchors `#L-12`). Pygments escapes the content."""
    return Markup(pygments_highlight(code, lexer_for(filename, code), _CODE_FORMATTER))


def highlight_diff(text: str) -> Markup:
    return Markup(
        '<pre class="highlight diff"><code>'
        + pygments_highlight(text, DiffLexer(stripnl=False, ensurenl=False), _INLINE_FORMATTER)
        + "</code></pre>"
    )


def _highlight_fence(code: str, lang: str, _attrs: str) -> str:
    try:
        lexer = get_lexer_by_name(lang.strip().split()[0], stripnl=False) if lang.strip() else None
    except ClassNotFound:
        lexer = None
    if lexer is None:
        return ""  # markdown-it escapes and wraps it itself
    body = pygments_highlight(code, lexer, _INLINE_FORMATTER)
    return f'<pre class="highlight"><code>{body}</code></pre>\n'


def pygments_css() -> str:
    return HtmlFormatter(style="default").get_style_defs(".highlight")


# --- Markdown --------------------------------------------------------------------------------------------

_MD = (
    MarkdownIt("commonmark", {"html": True, "highlight": _highlight_fence})
    .enable("table")
    .enable("strikethrough")
)
_TOKEN_CLASSES = {c for c in STANDARD_TYPES.values() if c}
_ALLOWED_TAGS = set(nh3.ALLOWED_TAGS) - {"area", "map"}
_ATTRIBUTES = {tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()}
_ATTRIBUTES.setdefault("a", set()).add("title")
_ATTRIBUTES.setdefault("img", set()).add("title")
_ATTRIBUTES["details"] = {"open"}


class _Links:
    """Rewrites relative links of a Markdown document stored in a repository (see `markdown`)."""

    def __init__(self, link_base: str | None, raw_base: str | None, folder: str) -> None:
        self.link_base, self.raw_base, self.folder = link_base, raw_base, folder

    def __call__(self, element: str, attribute: str, value: str) -> str | None:
        if (element, attribute) not in (("a", "href"), ("img", "src")):
            return value
        base = self.link_base if element == "a" else self.raw_base
        parts = urlsplit(value)
        if parts.scheme or parts.netloc or value.startswith("#") or base is None:
            return value
        if not parts.path:
            return value  # "?x" or "" stays as it is
        path = parts.path.lstrip("/") if parts.path.startswith("/") else f"{self.folder}/{parts.path}"
        path = posixpath.normpath("/" + path).lstrip("/")
        url = f"{base}/{path}" if path else base
        if parts.query:
            url += f"?{parts.query}"
        if parts.fragment:
            url += f"#{parts.fragment}"
        return url


def strip_front_matter(text: str) -> str:
    """Drop a leading YAML block (`---` … `---`), the metadata header of dataset and model cards."""
    if not text.startswith("---\n") and not text.startswith("---\r\n"):
        return text
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            return "".join(lines[i + 1 :]).lstrip("\r\n")
    return text


def markdown(
    text: str, *, link_base: str | None = None, raw_base: str | None = None, folder: str = ""
) -> Markup:
    """Markdown (CommonMark + tables) → sanitized HTML, without a YAML front matter block.

    Relative links point to pages under `link_base` (the blob view at a revision); relative images to
    `raw_base` (the raw endpoint at that revision); both resolved from `folder`, the document's folder.
    """
    html = _MD.render(strip_front_matter(text))
    cleaned = nh3.clean(
        html,
        tags=_ALLOWED_TAGS,
        clean_content_tags={"script", "style"},
        attributes=_ATTRIBUTES,
        attribute_filter=_Links(link_base, raw_base, folder.strip("/")),
        url_schemes={"http", "https", "mailto"},
        link_rel="nofollow noopener noreferrer",
        allowed_classes={"span": _TOKEN_CLASSES, "pre": {"highlight"}},
    )
    return Markup(cleaned)


def is_markdown(path: str) -> bool:
    return path.lower().endswith((".md", ".markdown"))


# --- templates -------------------------------------------------------------------------------------------

env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters.update(timeago=timeago, isodate=isodate, filesize=filesize, urlpath=urlpath)
env.globals.update(
    repo_href=repo_href,
    raw_href=raw_href,
    static_url=static_url,
    with_query=with_query,
    job_of=job_of,
    version=__version__,
    htmx_version="2.0.11",
)


def base_context(request: Request) -> dict[str, Any]:
    actor = getattr(request.state, "actor", None)
    settings = request.app.state.settings
    return {
        "request": request,
        "actor": actor,
        "me": actor.user if actor is not None else None,
        "settings": settings,
        "registration_open": settings.open_registration,
        "csrf_token": lambda: web_session.csrf_token(request),
        "csrf_field": web_session.CSRF_FIELD,
        "search_q": "",
    }


def render_html(request: Request, template: str, **context: Any) -> str:
    return env.get_template(template).render({**base_context(request), **context})


def render(
    request: Request,
    template: str,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """A full page (or an htmx fragment) with the security headers and any cookie the page needs."""
    body = render_html(request, template, **context)
    response = HTMLResponse(body, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})
    web_session.attach_cookies(request, response)
    return response
