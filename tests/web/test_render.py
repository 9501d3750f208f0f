"""The rendering helpers: Markdown cards, relative times, sizes, URL paths."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from opensci.web.render import filesize, markdown, timeago, urlpath
from opensci.web.session import safe_next


def test_front_matter_of_cards_is_not_rendered() -> None:
    out = markdown("---\nlicense: mit\ntags: [a]\n---\n# Model card\n")
    assert "<h1>Model card</h1>" in out and "license" not in out and "<hr" not in out
    assert "<hr" in markdown("Text\n\n---\n\nMore\n")  # a rule elsewhere stays a rule
    assert "<hr" in markdown("---\nno closing line, so no front matter\n")


def test_timeago_and_filesize() -> None:
    now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    assert timeago(now - timedelta(seconds=5), now) == "just now"
    assert timeago(now - timedelta(minutes=1), now) == "1 minute ago"
    assert timeago(now - timedelta(hours=5), now) == "5 hours ago"
    assert timeago(now - timedelta(days=40), now) == "1 month ago"
    assert timeago(now - timedelta(days=800), now) == "2 years ago"
    assert timeago(None) == "never"
    assert filesize(0) == "0 B" and filesize(1023) == "1023 B"
    assert filesize(1536) == "1.5 KiB" and filesize(5 * 1024**3) == "5.0 GiB"
    assert filesize(None) == ""


def test_url_paths_keep_slashes_and_quote_the_rest() -> None:
    assert urlpath("feature/x") == "feature/x"
    assert urlpath("a b#c?.txt") == "a%20b%23c%3F.txt"


def test_safe_next_accepts_only_local_paths() -> None:
    assert safe_next("/alice/repo?x=1") == "/alice/repo?x=1"
    for bad in ("", "alice", "//evil.example", "/\\evil.example", "https://evil.example", "/a\nb", "/a b"):
        assert safe_next(bad) == "/", bad
