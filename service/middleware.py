"""Around every request: its observation (metrics, request id, one JSON log line), and the guard its route
applies (API key, body size and read timeout, per route)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import APIError, error_response
from service.limits import Limits
from service.logs import REQUEST_ID, Fields
from service.metrics import Metrics

ENDPOINTS = {
    "/", "/score", "/next-word", "/healthz", "/readyz", "/metrics", "/model",
    "/v1/completions", "/v1/models", "/tokenizer_info", "/tokenize", "/detokenize",
}  # fmt: skip
REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:/+=@-]{1,128}$")

access_log = logging.getLogger("service.access")
log = logging.getLogger("service")


def endpoint_of(scope: Scope) -> str:
    """The metric label of a request: its route, or `other` (unknown paths must not grow the label set)."""
    path = scope.get("path", "")
    return path if path in ENDPOINTS else "other"


class RequestObserverMiddleware:
    """Per request: counts and times it by endpoint and status, gives it an id (the client's `X-Request-ID` if
    it sent a sane one, else a new one) that is echoed back and that every log line made on its behalf carries,
    and logs one JSON line about it.

    An exception that no handler answered is logged here, once (its traceback one field of one line), and
    answered 500 `internal_error` without its text; it does not travel on to the server, which would log it a
    second time."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # unless a response starts (or the client hangs up first)
        given = dict(scope.get("headers", ())).get(REQUEST_ID_HEADER, b"")
        request_id = given.decode() if _VALID_REQUEST_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["arrived"] = time.monotonic()  # a request's deadline counts from here (service.http.Deadline)
        token = REQUEST_ID.set(request_id)
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                answer = error_response(500, "internal_error", "internal error; the details are in the server log")
                await answer(scope, receive, send_wrapper)
        finally:
            if state.get("client_closed") and status == 500:
                status = 499  # hung up before an answer: the client's doing, not a server error
            endpoint = endpoint_of(scope)
            duration = time.perf_counter() - start
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.request_duration.labels(endpoint).observe(duration)
            if access_log.isEnabledFor(logging.INFO):
                line = Fields(
                    request_id=request_id,
                    method=scope.get("method"),
                    route=scope.get("path"),
                    status=status,
                    duration_ms=round(1000 * duration, 3),
                    sequences=state.get("sequences"),
                    batch_size=state.get("batch_size"),
                    client=(scope.get("client") or ("", 0))[0],
                )
                access_log.info(line)
            REQUEST_ID.reset(token)


KEYED: dict = {"security": [{"bearerAuth": []}]}
"""A route's `openapi_extra` that puts it behind the API key (when the server has one): the guard enforces it,
and the OpenAPI schema shows it, so that Swagger's "Authorize" sends the key."""


def needs_key(route: object) -> bool:
    """Whether a route declared that it needs the API key."""
    return "security" in (getattr(route, "openapi_extra", None) or {})


class Guard:
    """What a request may cost before its route runs, decided by the route it is for (per-route data, so that a
    new route gets it by declaring it; `GuardedRoute` applies it):

    - a route that declared `KEYED` needs `Authorization: Bearer <key>` (constant-time compare), checked first:
      an unauthenticated caller gets 401 before one byte of its body is read;
    - only a route that takes a body (FastAPI's `body_field`) has it read, here: 413 past `max_body_bytes` (by
      Content-Length up front, or counted), 408 when the client sends nothing for `body_timeout_s`, and a
      client that hangs up mid-upload is noted as `client_closed` (499), not as an error;
    - any other route, and an unknown path, never has its body read (the server buffers at most uvicorn's
      64 KiB high-water mark of it).
    """

    def __init__(self, limits: Limits, metrics: Metrics, key: str | None, body_timeout_s: float) -> None:
        self.limits, self.metrics = limits, metrics
        self.key = key.encode() if key is not None else None
        self.body_timeout_s = body_timeout_s

    async def check(self, route: object, request: Request) -> None:
        """Raise the APIError that answers the request before its route runs, or read its body (cached on the
        request, where FastAPI finds it)."""
        scope = request.scope
        if self.key is not None and needs_key(route) and not self._authorised(scope):
            e = APIError(
                401,
                "unauthorized",
                "missing or wrong API key: send `Authorization: Bearer <key>`",
                headers={"WWW-Authenticate": 'Bearer realm="lmserve"'},
            )
            raise self._rejected(scope, e, "unauthorized")
        if getattr(route, "body_field", None) is not None:
            request._body = await self._read_body(request)

    def _authorised(self, scope: Scope) -> bool:
        header = dict(scope.get("headers", ())).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key or b"")

    async def _read_body(self, request: Request) -> bytes:
        scope = request.scope
        declared = dict(scope.get("headers", ())).get(b"content-length")
        max_bytes = self.limits.max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise self._rejected(scope, self.limits.body_too_large(int(declared)), "too_long")
        chunks: list[bytes] = []
        received = 0
        more = True
        while more:
            try:
                async with asyncio.timeout(self.body_timeout_s):  # no task per read, unlike wait_for
                    message = await request.receive()
            except TimeoutError:
                e = APIError(
                    408,
                    "body_timeout",
                    f"no part of the request body came for {self.body_timeout_s:g} s; send the whole body at once",
                    {"limit": "body_timeout_s", "received_bytes": received},
                    {"Connection": "close"},
                )
                raise self._rejected(scope, e, "body_timeout") from None
            if message["type"] != "http.request":  # the client hung up mid-upload: nobody to answer
                scope.setdefault("state", {})["client_closed"] = True
                raise self._rejected(
                    scope,
                    APIError(499, "client_closed", "the client closed the connection mid-upload"),
                    "client_closed",
                )
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > max_bytes:
                raise self._rejected(scope, self.limits.body_too_large(received), "too_long")
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    def _rejected(self, scope: Scope, e: APIError, reason: str) -> APIError:
        e.counted = True  # the error handler must not count it a second time
        self.metrics.rejected.labels(endpoint_of(scope), reason).inc()
        return e


class GuardedRoute(APIRoute):
    """A FastAPI route whose requests pass the app's `Guard` (`app.state.guard`) before FastAPI reads them."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            await request.app.state.guard.check(self, request)
            return await handler(request)

        return guarded
