"""The fast lane: the routes that carry the traffic (`/score`, `/next-word`, `/v1/completions`) served without
FastAPI's per-request machinery, with the same answers.

FastAPI spends about as much of the event loop on one `/score` request as the route itself does: routing over
every route, parsing the content type with `email.message`, its telemetry hooks, solving the dependencies,
building the endpoint's error context. For a POST of JSON to one of these paths the lane does only what those
routes need, in the order FastAPI does it: the route's guard (API key, body limits), `json.loads` of the body,
validation of the route's body model in the same mode (python, `from_attributes`), the readiness check, the
endpoint, and the app's own exception handlers for whatever it raises. Any other request (another method or
content type, a trailing slash, a root path) goes on to FastAPI, which stays the one place the routes are
declared and documented (OpenAPI).

The two paths answer alike: tests send the same requests, well-formed and not, through the lane and through
FastAPI and compare status, headers and body.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from service.http import ready

PARAMETERS = ["body", "request", "state"]  # the one endpoint shape the lane calls


@dataclass(frozen=True)
class Lane:
    """One route in the lane: the FastAPI route it stands for, its body's validator and its endpoint."""

    route: APIRoute
    body: TypeAdapter
    endpoint: Callable[..., Any]


def lanes_for(routes: Iterable[BaseRoute], paths: tuple[str, ...]) -> dict[str, Lane]:
    """The lane of each POST route at `paths` among `routes` (the adapters' routers'): `async def
    endpoint(body: Model, request: Request, state: Ready)` returning a Response (a route of another shape is
    refused here, at start-up, not at its first request)."""
    found: dict[str, Lane] = {}
    for route in routes:
        if isinstance(route, APIRoute) and route.path in paths and "POST" in route.methods:
            if list(inspect.signature(route.endpoint).parameters) != PARAMETERS or route.body_field is None:
                raise TypeError(f"{route.path}: the fast lane calls endpoints of the shape (body, request, state)")
            model = route.body_field.field_info.annotation
            found[route.path] = Lane(route, TypeAdapter(model), route.endpoint)
    missing = set(paths) - set(found)
    if missing:
        raise LookupError(f"no POST route for the fast lane at {sorted(missing)}")
    return found


def is_json(scope: Scope) -> bool:
    """Whether the request's first content-type header is plainly JSON (`application/json` or
    `application/...+json`, with or without parameters), as FastAPI would read it; anything less plain is left
    to FastAPI."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))
    return False


class FastLane:
    """ASGI middleware: the lane's routes answered here, everything else passed on to `app` (FastAPI's router
    and exception middleware). Sits inside the request observer (metrics, request id, access log)."""

    def __init__(self, app: ASGIApp, lanes: dict[str, Lane], handlers: dict[Any, Callable]) -> None:
        self.app, self.lanes, self.handlers = app, lanes, handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.lanes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if lane is None or scope["method"] != "POST" or scope.get("root_path") or not is_json(scope):
            await self.app(scope, receive, send)
            return
        scope["route"], scope["endpoint"] = lane.route, lane.endpoint  # as the router sets them on a match
        request = Request(scope, receive)
        try:
            response = await self._answer(lane, request)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise  # the observer logs it and answers 500, as for any route
            response = await handler(request, exc)
        await response(scope, receive, send)

    async def _answer(self, lane: Lane, request: Request) -> Any:
        await request.app.state.guard.check(lane.route, request)  # 401 / 413 / 408 / 499, or the body read
        body = await request.body()
        if not body:
            raise RequestValidationError(
                [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
            )
        try:
            data = json.loads(body)
        except json.JSONDecodeError as e:
            error = {"type": "json_invalid", "loc": ("body", e.pos), "msg": "JSON decode error", "input": {}}
            raise RequestValidationError([{**error, "ctx": {"error": e.msg}}], body=e.doc) from e
        except Exception as e:  # not text at all (FastAPI's answer too)
            raise HTTPException(400, "There was an error parsing the body") from e
        try:
            value = lane.body.validate_python(data, from_attributes=True)
        except ValidationError as e:
            errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
            raise RequestValidationError(errors, body=data) from e
        return await lane.endpoint(value, request, await ready(request))

    def _handler(self, exc: Exception) -> Callable | None:
        """The app's handler for `exc`: the nearest class in its MRO that has one (Starlette's lookup)."""
        for cls in type(exc).__mro__:
            if cls in self.handlers:
                return self.handlers[cls]
        return None
