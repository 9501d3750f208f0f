"""The OpenSci app plus one plain static-file route, for benchmarks that compare serving the same bytes
both ways from one server process: `uvicorn --factory benchmarks._bench_app:make_app`.

The static route is Starlette's FileResponse over `OPENSCI_BENCH_STATIC_DIR` (what a plain file server in
the same process does); it exists only in this benchmark app, never in the product."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse

from opensci.app import create_app


def make_app() -> FastAPI:
    app = create_app()
    root = Path(os.environ["OPENSCI_BENCH_STATIC_DIR"])

    @app.get("/bench-static/{name}")
    def static(name: str) -> FileResponse:
        return FileResponse(root / Path(name).name, media_type="application/octet-stream")

    app.router.routes.insert(0, app.router.routes.pop())  # before the web pages' catch-alls
    return app
