"""Operators' view: request ids in logs and replies, Prometheus metrics, and the request size limit.

Pure ASGI middleware, so streamed bodies (git packs, file downloads) pass through untouched.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opensci.errors import PayloadTooLarge

log = logging.getLogger("opensci.access")
_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class Metrics:
    """Per-app registry, so several apps in one process (tests) do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "opensci_http_requests_total",
            "HTTP requests answered.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "opensci_http_errors_total",
            "HTTP requests answered with a 5xx status.",
            ["method", "route"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "opensci_http_request_duration_seconds",
            "Time to answer an HTTP request (until the response starts).",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _VALID_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status = 500
        latency: float | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status, latency
            if message["type"] == "http.response.start":
                status = message["status"]
                latency = time.perf_counter() - start
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(method, label, str(status)).inc()
            self.metrics.latency.labels(method, label).observe(
                latency if latency is not None else time.perf_counter() - start
            )
            if status >= 500:
                self.metrics.errors.labels(method, label).inc()
            log.info(
                "%s %s %s %.1fms request_id=%s",
                method,
                scope["path"],
                status,
                (time.perf_counter() - start) * 1000,
                request_id,
                extra={"request_id": request_id},
            )


class BodyLimitMiddleware:
    """Refuse request bodies larger than the configured limit, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_json(
                send,
                413,
                "payload_too_large",
                f"the request body is larger than the limit of {self.limit} bytes",
            )
            return
        seen = 0
        exceeded = replaced = False
        message_text = f"the request body is larger than the limit of {self.limit} bytes"

        async def limited() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    exceeded = True
                    raise PayloadTooLarge(message_text)
            return message

        async def guarded(message: Message) -> None:
            # Whatever the app made of the error raised while it read the body (FastAPI turns it into a
            # 400 "error parsing the body"), the client gets the 413.
            nonlocal replaced
            if message["type"] == "http.response.start" and exceeded:
                replaced = True
                await _send_json(send, 413, "payload_too_large", message_text)
                return
            if not replaced:
                await send(message)

        await self.app(scope, limited, guarded)


async def _send_json(send: Send, status: int, code: str, message: str) -> None:
    import json

    body = json.dumps({"error": code, "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def request_id_of(scope_or_request: Any) -> str:
    state = getattr(scope_or_request, "state", None)
    return getattr(state, "request_id", "") if state is not None else ""
