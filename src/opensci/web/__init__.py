"""Server-rendered pages (Jinja2 + htmx): one views module per domain, templates/<domain>/, static/."""

from __future__ import annotations

from fastapi import FastAPI


def mount(app: FastAPI) -> None:
    """Mount the pages, their static files and the HTML error page on the app. Filled in by the web views."""
