"""Avatars drawn from initials: an SVG with a colour derived from the name."""

from __future__ import annotations

import hashlib
from html import escape


def initials(display_name: str, name: str) -> str:
    """Two letters or digits: of the first two words of the display name (of the name without one).
    Punctuation is no initial: "Ada (Lab)" → "AL", "<Ada>" → "AD"."""
    cleaned = "".join(c if c.isalnum() else " " for c in display_name or name)
    words = cleaned.split() or name.replace("-", " ").replace("_", " ").replace(".", " ").split()
    if len(words) >= 2:
        return (words[0][0] + words[1][0]).upper()
    return (words[0][:2] if words else name[:2]).upper()


def avatar_svg(display_name: str, name: str, size: int = 96) -> str:
    hue = int(hashlib.sha256(name.lower().encode()).hexdigest()[:4], 16) % 360
    text = escape(initials(display_name, name))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" viewBox="0 0 96 96">'
        f'<rect width="96" height="96" rx="14" fill="hsl({hue},45%,45%)"/>'
        f'<text x="48" y="50" dy=".35em" text-anchor="middle" font-family="system-ui,sans-serif" '
        f'font-size="40" font-weight="600" fill="#fff">{text}</text></svg>'
    )
