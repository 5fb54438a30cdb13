"""ASGI middleware: request observation (metrics, request id, one JSON log line) and the body-size limit."""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response
from service.limits import Limits
from service.metrics import Metrics

ENDPOINTS = {"/", "/score", "/next-word", "/healthz", "/readyz", "/metrics", "/model"}
REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:/+=@-]{1,128}$")

access_log = logging.getLogger("service.access")


def endpoint_of(scope: Scope) -> str:
    """The metric label of a request: its route, or `other` (unknown paths must not grow the label set)."""
    path = scope.get("path", "")
    return path if path in ENDPOINTS else "other"


class RequestObserverMiddleware:
    """Per request: counts and times it by endpoint and status, gives it an id (the client's `X-Request-ID` if
    it sent a sane one, else a new one) that is echoed back, and logs one JSON line about it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        given = dict(scope.get("headers", ())).get(REQUEST_ID_HEADER, b"")
        request_id = given.decode() if _VALID_REQUEST_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["arrived"] = time.monotonic()  # a request's deadline counts from here (service.http.Deadline)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            endpoint = endpoint_of(scope)
            duration = time.perf_counter() - start
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.request_duration.labels(endpoint).observe(duration)
            if access_log.isEnabledFor(logging.INFO):
                line = {
                    "request_id": request_id,
                    "method": scope.get("method"),
                    "route": scope.get("path"),
                    "status": status,
                    "duration_ms": round(1000 * duration, 3),
                    "sequences": state.get("sequences"),
                    "batch_size": state.get("batch_size"),
                    "client": (scope.get("client") or ("", 0))[0],
                }
                access_log.info(json.dumps(line))


class BodyLimitMiddleware:
    """413 for a body over `max_bytes`, by Content-Length up front or by counting a streamed body."""

    def __init__(self, app: ASGIApp, limits: Limits, metrics: Metrics) -> None:
        self.app, self.limits, self.max_bytes, self.metrics = app, limits, limits.max_body_bytes, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send, int(declared))
            return
        # A body without Content-Length (chunked) is read and counted here, then replayed to the app: an error
        # raised while FastAPI reads the body would become its generic 400, not the 413 a client should get.
        chunks: list[bytes] = []
        received = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nobody to answer
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await self._reject(scope, receive, send, received)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, size: int) -> None:
        self.metrics.rejected.labels(endpoint_of(scope), "too_long").inc()
        e = self.limits.body_too_large(size)
        await error_response(e.status, e.code, e.message, e.details)(scope, receive, send)


class AuthMiddleware:
    """The API key for `protected` paths: `Authorization: Bearer <key>`, compared in constant time, checked
    before anything else about the request (an unauthenticated caller learns nothing from its body)."""

    def __init__(self, app: ASGIApp, key: str, protected: set[str], metrics: Metrics) -> None:
        self.app, self.key, self.protected, self.metrics = app, key.encode(), protected, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in self.protected:
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers", ())).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            await self.app(scope, receive, send)
            return
        self.metrics.rejected.labels(endpoint_of(scope), "unauthorized").inc()
        response = error_response(
            401,
            "unauthorized",
            "missing or wrong API key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": 'Bearer realm="lmserve"'},
        )
        await response(scope, receive, send)
