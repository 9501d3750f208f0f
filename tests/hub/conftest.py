"""Fixtures for the Hub API tests: a live server whose limits make small files exercise every path,
and a runner for client scripts (huggingface_hub reads its environment at import: a subprocess each)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from opensci.settings import Settings
from tests.conftest import Account, LiveServer

CLIENTS = Path(__file__).parent / "clients"
REGULAR_MAX = 1_000_000  # files above 1 MB go through Git LFS in these tests (50 MB by default)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.hub_regular_upload_max_bytes = REGULAR_MAX
    settings.lfs_threshold_bytes = 600_000
    return settings


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_client(live_server: LiveServer, tmp_path: Path) -> Run:
    """Run `clients/<script>` with HF_ENDPOINT pointing at the live server; fail with its output."""

    def run(script: str, token: str | None, *, xet: bool = True, check: bool = True, **env: str) -> Any:
        home = tmp_path / f"hf-home-{script}-{len(os.listdir(tmp_path))}"
        full = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        full.update(
            HF_ENDPOINT=live_server.url,
            HF_HOME=str(home),
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_DATASETS_CACHE=str(home / "datasets"),
            HF_HUB_DISABLE_IMPLICIT_TOKEN="1" if token is None else "0",
            **env,
        )
        if token is not None:
            full["HF_TOKEN"] = token
        if not xet:
            full["HF_HUB_DISABLE_XET"] = "1"
        proc = subprocess.run(
            [sys.executable, str(CLIENTS / script)],
            env=full,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        if check and (proc.returncode != 0 or "ALL OK" not in proc.stdout):
            pytest.fail(f"{script} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
        return proc

    return run


__all__ = ["Account", "Run"]
