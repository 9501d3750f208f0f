"""Validation shared by several domains: names that appear in URLs, and paths inside repositories."""

from __future__ import annotations

import re

from opensci.errors import InvalidInput

_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")

# First path segments the server itself uses; no owner may take them.
RESERVED_OWNER_NAMES = frozenset(
    {
        "api",
        "datasets",
        "models",
        "spaces",
        "static",
        "login",
        "logout",
        "register",
        "settings",
        "explore",
        "new",
        "metrics",
        "avatars",
        "orgs",
        "users",
        "user",
        "organizations",
        "search",
        "jobs",
        "docs",
        "redoc",
        "openapi.json",
        "health",
        "help",
        "about",
        "favicon.ico",
        "robots.txt",
        "assets",
        "git",
        "lfs",
    }
)


# ASCII control characters: no name holds one, git refuses them in ref names, pygit2 reads a string only
# up to a NUL, and PostgreSQL text cannot hold a NUL at all (psycopg refuses the whole query).
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def is_plain_text(value: str) -> bool:
    """Whether `value` is text without control characters that UTF-8 can encode (no unpaired surrogate,
    which a JSON body can spell). Nothing else can be a user, organization or repository name, nor a
    branch or tag: a lookup answers "not found" for it, as for any unknown name, without asking the
    database or git."""
    if CONTROL.search(value):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_owner_filter(value: str, what: str = "owner") -> str:
    """A user or organization name that filters a listing (`?owner=`, `?author=`): refused (422
    `invalid_name`) if no name could be it, like a name that does not follow the rules for names."""
    if not is_plain_text(value):
        raise InvalidInput(
            f"{what} {value!r} is not a name (names hold only letters, digits, '.', '_' and '-')",
            code="invalid_name",
        )
    return value


def check_search_text(value: str, what: str = "the search") -> str:
    """Free text that a query compares with stored text (`?q=`, `?search=`): refused (422 `invalid_input`)
    when it holds a NUL, which PostgreSQL text cannot hold, or an unpaired surrogate. Other control
    characters are only characters: they match what holds them."""
    if "\x00" in value:
        raise InvalidInput(f"{what} contains a NUL character", code="invalid_input")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidInput(
            f"{what} is not valid Unicode text (it holds an unpaired surrogate)", code="invalid_input"
        ) from None
    return value


def check_name(value: str, what: str = "name") -> str:
    """A URL-safe name: letters, digits, `.`, `_`, `-`; starts and ends with a letter or digit; ≤ 96."""
    if not isinstance(value, str) or not _NAME.match(value) or ".." in value:
        raise InvalidInput(
            f"invalid {what} {value!r}: use 1-96 letters, digits, '.', '_' or '-', starting and ending "
            "with a letter or digit, without '..'",
            code="invalid_name",
        )
    if value.lower().endswith(".git"):
        raise InvalidInput(f"invalid {what} {value!r}: it may not end in '.git'", code="invalid_name")
    return value


def check_owner_name(value: str) -> str:
    check_name(value, "owner name")
    if len(value) > 64:
        raise InvalidInput(f"invalid owner name {value!r}: at most 64 characters", code="invalid_name")
    if value.lower() in RESERVED_OWNER_NAMES:
        raise InvalidInput(f"the name {value!r} is reserved", code="invalid_name")
    return value


MAX_PATH_DEPTH = 256  # segments of a path; deeper trees are built and walked recursively


def check_repo_path(path: str) -> str:
    """A file path inside a repository: relative, `/`-separated, no `..`, `.git` or empty segments, no NUL."""
    if not isinstance(path, str) or not path:
        raise InvalidInput("empty path", code="invalid_path")
    if "\x00" in path:
        raise InvalidInput("a path may not contain NUL bytes", code="invalid_path")
    try:
        encoded = path.encode()
    except UnicodeEncodeError:
        raise InvalidInput(
            f"path {path!r} is not valid Unicode text (it holds an unpaired surrogate)", code="invalid_path"
        ) from None
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise InvalidInput(
            f"path {path!r} is absolute; give it relative to the repository root", code="invalid_path"
        )
    if "\\" in path:
        raise InvalidInput(f"path {path!r}: use '/' to separate folders", code="invalid_path")
    if len(encoded) > 4096:
        raise InvalidInput("path is longer than 4096 bytes", code="invalid_path")
    if path.count("/") >= MAX_PATH_DEPTH:
        raise InvalidInput(f"path is nested more than {MAX_PATH_DEPTH} folders deep", code="invalid_path")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise InvalidInput(f"path {path!r} has an empty, '.' or '..' segment", code="invalid_path")
        if part.lower() == ".git":
            raise InvalidInput(f"path {path!r} has a '.git' segment", code="invalid_path")
    return path


_ORCID = re.compile(r"^\d{4}-\d{4}-\d{4}-\d{3}[\dX]$")


def check_orcid(value: str) -> str:
    """An ORCID iD (0000-0002-1825-0097), with its ISO 7064 11-2 check digit verified. Empty is allowed."""
    # The forms people paste: the iD, or its URL (https, http, or without a scheme); x for X.
    value = re.sub(r"^(?:https?://)?(?:www\.)?orcid\.org/", "", value.strip(), flags=re.IGNORECASE).upper()
    if not value:
        return ""
    if not _ORCID.match(value):
        raise InvalidInput(f"invalid ORCID iD {value!r}: expected 0000-0000-0000-0000", code="invalid_orcid")
    digits = value.replace("-", "")
    total = 0
    for ch in digits[:-1]:
        total = (total + int(ch)) * 2
    check = (12 - total % 11) % 11
    if digits[-1] != ("X" if check == 10 else str(check)):
        raise InvalidInput(f"invalid ORCID iD {value!r}: wrong check digit", code="invalid_orcid")
    return value
