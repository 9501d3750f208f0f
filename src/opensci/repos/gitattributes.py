"""`.gitattributes` for Git LFS: which paths are tracked (`filter=lfs`), and tracking new ones.

A file committed as a pointer must be covered by a `filter=lfs` pattern, or `git clone` shows the
pointer's text instead of the content. Commits of such files add a line for each path no pattern covers,
as `git lfs track` does, so git, git-lfs and the Hub clients agree on what is large.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable

import pathspec

ATTRIBUTES = ".gitattributes"
_LFS_ATTRS = "filter=lfs diff=lfs merge=lfs -text"
_SPECIAL = re.compile(r"([\\*?\[!#])")


def lfs_patterns(text: str) -> list[str]:
    """The patterns of the lines that set `filter=lfs` (macros and quoted patterns are not followed)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            out.append(parts[0].replace("[[:space:]]", "[ ]"))
    return out


def _spec(patterns: list[str]) -> pathspec.PathSpec:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return pathspec.GitIgnoreSpec.from_lines(patterns)


def tracked(text: str, path: str) -> bool:
    return _spec(lfs_patterns(text)).match_file(path)


def pattern_for(path: str) -> str:
    """A pattern matching exactly this path (anchored at the root, specials escaped)."""
    escaped = _SPECIAL.sub(r"\\\1", path).replace(" ", "[[:space:]]").replace("\t", "[[:space:]]")
    return "/" + escaped


def track(text: str, paths: Iterable[str]) -> str | None:
    """`text` with a line added for every path no `filter=lfs` pattern covers; None if all are covered."""
    spec = _spec(lfs_patterns(text))
    new = sorted({p for p in paths if not spec.match_file(p)})
    if not new:
        return None
    base = text if not text or text.endswith("\n") else text + "\n"
    return base + "".join(f"{pattern_for(p)} {_LFS_ATTRS}\n" for p in new)
