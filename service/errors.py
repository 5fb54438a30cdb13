"""One error type, one JSON envelope: `{"error": {"code", "message", "details", "type", "param"}}` for every non-2xx
answer."""

from __future__ import annotations

import difflib
import logging
import typing
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.engine import ClientGoneError, EngineError, EngineStoppedError, EngineTimeoutError, QueueFullError
from service.schemas import ErrorResponse

log = logging.getLogger("service")

# The answers other than 2xx a route can give, for the OpenAPI schema of the routes that do work.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "body not readable as JSON",
        401: "missing or wrong API key (when the server has one)",
        413: "body too large",
        422: "invalid request or a limit exceeded",
        429: "queue full: retry after Retry-After seconds",
        503: "not ready",
        500: "internal error (details in the server log)",
        504: "timed out",
    }.items()
}


class APIError(Exception):
    """An answer other than 2xx: status, a stable machine-readable code, a message for people, details."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = status, code, message, details, headers


def not_ready(message: str = "the model is not loaded yet") -> APIError:
    """503 `not_ready`, with Retry-After: starting up, shutting down or draining."""
    return APIError(503, "not_ready", message, headers={"Retry-After": "1"})


def from_engine(exc: EngineError, retry_after_s: int) -> APIError:
    """The HTTP answer to a call the engine refused or dropped."""
    if isinstance(exc, QueueFullError):
        return APIError(
            429, "queue_full", f"the server is busy ({exc}); retry later", None, {"Retry-After": str(retry_after_s)}
        )
    if isinstance(exc, EngineStoppedError):
        return not_ready("the server is shutting down")
    if isinstance(exc, EngineTimeoutError):
        return APIError(504, "timeout", str(exc))
    if isinstance(exc, ClientGoneError):
        return APIError(499, "client_closed", str(exc))
    return APIError(500, "internal_error", "internal error; the details are in the server log")


# OpenAI's error `type` for each status (the SDKs expose it as the exception's `type`).
ERROR_TYPES = {
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    """OpenAI's `type` of an error with this status: `invalid_request_error` for the other 4xx, `server_error`
    for 5xx."""
    return ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict | None = None,
    param: str | None = None,
) -> JSONResponse:
    """The envelope every non-2xx answer has: the service's `code`, `message` and `details`, and OpenAI's `type`
    and `param` (the request field at fault, where one is), so that OpenAI clients read it as their own."""
    body = {"error": {"code": code, "message": message, "details": details, "type": error_type(status), "param": param}}
    return JSONResponse(body, status_code=status, headers=headers)


def _jsonable_errors(errors: list[dict]) -> list[dict]:
    """FastAPI's validation errors, reduced to what a client can use (no echo of huge inputs, no objects)."""
    out = []
    for e in errors:
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        item = {"loc": [str(p) for p in e.get("loc", ())], "msg": msg, "type": e.get("type")}
        out.append(item)
    return out


def _body_fields(request: Request) -> dict[str, str]:
    """The fields of the route's request body: name -> "list" (of strings) or "string" or "other"."""
    body = getattr(request.scope.get("route"), "body_field", None)
    model = getattr(getattr(body, "field_info", None), "annotation", None)
    fields = getattr(model, "model_fields", None) or {}

    def kind(annotation: Any) -> str:
        args = {a for a in typing.get_args(annotation) if a is not type(None)} or {annotation}
        if any(typing.get_origin(a) is list for a in args):
            return "list"
        return "string" if str in args else "other"

    return {name: kind(f.annotation) for name, f in fields.items()}


def _hint(request: Request, error: dict, given: Any) -> str | None:
    """What to do about a validation error, where the error alone does not say it."""
    loc = [p for p in error["loc"] if p != "body"]
    fields = _body_fields(request)
    if error["type"] == "extra_forbidden" and len(loc) == 1:
        close = difflib.get_close_matches(loc[0], fields, n=1, cutoff=0.6)
        return f"did you mean `{close[0]}`?" if close else "the fields are " + ", ".join(f"`{f}`" for f in fields)
    if not loc and error["type"] in ("model_attributes_type", "dict_type", "model_type"):
        content_type = request.headers.get("content-type", "")
        if "json" not in content_type.split(";")[0]:
            return "send the body as JSON with the header `content-type: application/json`"
        return "the body must be a JSON object with the fields " + ", ".join(f"`{f}`" for f in fields)
    if len(loc) == 1 and loc[0] in fields:
        # One string where a list was expected, or the reverse: point at the field that takes it.
        wanted = {"string_type": "list", "list_type": "string"}.get(error["type"])
        if not isinstance(given, {"list": list, "string": str}.get(wanted, type(None))) or given is None:
            return None
        others = [f for f, k in fields.items() if k == wanted]
        if others:
            best = difflib.get_close_matches(loc[0], others, n=1, cutoff=0) or others
            what = "a list of strings" if wanted == "list" else "one string"
            return f"{what} goes in `{best[0]}`"
    return None


def install_error_handlers(
    app: FastAPI, on_reject: Callable[[Request, int, str], None] | None = None, retry_after_s: int = 1
) -> None:
    """Route every error through the envelope; `on_reject(request, status, code)` counts them."""

    def _count(request: Request, status: int, code: str) -> None:
        if on_reject is not None:
            on_reject(request, status, code)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        if not getattr(exc, "counted", False):
            _count(request, exc.status, exc.code)
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError):
        return await _api_error(request, from_engine(exc, retry_after_s))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = _jsonable_errors(exc.errors())
        raw = exc.errors()[0] if exc.errors() else {}
        first = errors[0] if errors else {"loc": [], "msg": "invalid request", "type": None}
        _count(request, 422, "invalid_request")
        if first["type"] == "json_invalid":
            where = first["loc"][-1] if first["loc"] else "?"
            return error_response(422, "invalid_json", f"the body is not valid JSON (error at character {where})")
        where = ".".join(p for p in first["loc"] if p != "body") or "body"
        param = where if where != "body" else None
        message = f"{where}: {first['msg']}"
        hint = _hint(request, first, raw.get("input"))
        return error_response(422, "invalid_request", f"{message}; {hint}" if hint else message, errors, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        _count(request, exc.status_code, code)
        return error_response(exc.status_code, code, str(exc.detail), None, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        _count(request, 500, "internal_error")
        return error_response(500, "internal_error", "internal error; the details are in the server log")
