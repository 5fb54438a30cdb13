"""The server's log: one stream (stdout), one JSON object per line, from every logger (the access log, errors,
the engine, uvicorn's own start-up and shutdown lines), each carrying the `request_id` of the request it is
about where there is one.

A line has `time` (UTC, ISO 8601), `level`, `logger` and `message`; an access-log line has the request's
fields instead of a message (`service.middleware`); an exception is one `traceback` field, never loose lines.
uvicorn applies `log_config(level)` in every process, workers included.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
"""The id of the request being served (set by the request observer), read by every log line made meanwhile,
worker threads included (asyncio.to_thread copies the context)."""


class Fields(dict):
    """A log call's message that is a set of fields (`log.info(Fields(status=200, ...))`): the JSON formatter
    makes them the line's own keys; any other formatter (a test's log capture) reads them as one JSON object.
    Either way they are encoded once, when the line is written."""

    def __str__(self) -> str:
        return json.dumps(self, default=str)


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON: `time`, `level`, `logger`, and its `message`, or a `Fields` message's
    fields as the line's own keys.

    Once it is configured (in every process: uvicorn applies the log config in each worker), records no longer
    collect the caller's file and line, the thread and the process (the logging HOWTO's "Optimization"): these
    lines carry none of them, and collecting them was a third of the cost of each request's access-log line.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        logging._srcfile = None  # type: ignore[attr-defined]  # no frame walk to find the caller
        logging.logThreads = False
        logging.logProcesses = False
        logging.logMultiprocessing = False

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if isinstance(record.msg, Fields):
            line.update(record.msg)
        else:
            line["message"] = record.getMessage()
        request_id = REQUEST_ID.get()
        if request_id is not None:
            line.setdefault("request_id", request_id)
        if record.exc_info:
            line["error"] = repr(record.exc_info[1])
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's `log_config`: every logger to stdout as JSON (uvicorn's own loggers propagate to the root)."""
    own = {"handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
        "root": {"handlers": ["stdout"], "level": level.upper()},
        "loggers": {name: dict(own) for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "service.access")},
    }
