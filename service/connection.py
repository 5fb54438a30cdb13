"""What one TCP connection may cost before a request on it reaches the app: the HTTP protocol uvicorn runs
(`python -m service` passes `GuardedHttpToolsProtocol` as uvicorn's `http`).

uvicorn's httptools protocol holds a request head (request line and headers) in memory however long it is, and
waits for it however slowly it comes: a 40 MB unfinished header costs 40 MB, and a client that opens a
connection and sends nothing, or one byte of header every few seconds, holds it forever. This subclass adds,
per connection:

- at most `MAX_HEAD_BYTES` of request line and headers, `MAX_HEADERS` header fields: beyond, 431 and closed;
- the whole head within `head_timeout_s` of its first byte (or of the connection, when nothing came): beyond,
  408 and closed (a slow-loris client holds a connection that long, no longer);
- idle keep-alive connections are closed by uvicorn's own `timeout_keep_alive`.

And one answer goes out in one write: uvicorn writes a response's head and its body separately, two sends on
the socket (two segments on the wire), and a client waiting for the answer is woken twice. `CoalescedWrites`
holds the head until the body joins it, or until the loop's next turn (a file's head while its first chunk is
read, a chunk with nothing after it yet).

Everything else is uvicorn's (bodies, pipelining, the graceful shutdown): the protocol stays httptools, whose
shutdown closes idle connections at once, so a SIGTERM drains promptly.
"""

from __future__ import annotations

import asyncio
import logging
from functools import lru_cache

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import error_response
from service.logs import Fields

MAX_HEAD_BYTES = 64 * 1024  # request line and headers; Node's default is 16 KiB, nginx's 4 x 8 KiB
MAX_HEADERS = 100  # header fields per request
KEEP_ALIVE_S = 5.0  # an idle keep-alive connection is closed after this (uvicorn's `timeout_keep_alive`)

log = logging.getLogger("service.connection")


@lru_cache(maxsize=1)
def head_timeout_s() -> float:
    """How long a request head may take to arrive: `LMSERVE_BODY_TIMEOUT_S`, the bound a body has too (read once
    per process, from the worker's environment)."""
    from service.settings import Settings

    return Settings().body_timeout_s


def refusal(status: int, reason: str, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 answer with the service's JSON error envelope, that closes the connection."""
    body = error_response(status, code, message).body
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + bytes(body)


class CoalescedWrites:
    """A transport whose writes in one turn of the event loop go out as one: the first is held, and sent with
    the next (at once) or at the loop's next turn, whichever comes first. Everything else is the transport's;
    closing it sends what is held first."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._held: bytes | None = None
        self._flush: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is None:
            self._held = bytes(data)
            self._flush = self._loop.call_soon(self.flush)
            return
        held, self._held = self._held, None
        self._cancel_flush()
        self._transport.write(held + data)

    def flush(self) -> None:
        """Send what is held, if anything."""
        self._cancel_flush()
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._cancel_flush()
        self._transport.abort()

    def _cancel_flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded, timed request head and one write per answer (see the
    module's docstring)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = CoalescedWrites(transport, self.loop)  # type: ignore[assignment]
        self._head_bytes = 0
        self._headers = 0
        self._in_head = True  # reading a request head (not a body, not between requests)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():  # refused: what else comes is not read
            return
        if self._in_head and self._head_timer is None:
            self._arm_head_timer()
        was_in_head = self._in_head
        super().data_received(data)
        # Counted after the parser ran: bytes of a body that came in the same read as the end of the head do
        # not count; what is held is at most the cap plus one read.
        if was_in_head and self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(
                    431,
                    "Request Header Fields Too Large",
                    "header_too_large",
                    f"the request line and headers exceed {MAX_HEAD_BYTES} bytes",
                )

    def on_body(self, body: bytes) -> None:
        if self.cycle is not None:  # none after a refused head: the parser's remaining callbacks are ignored
            super().on_body(body)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes, self._headers = True, 0, 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers += 1
        if self._headers > MAX_HEADERS:
            self._refuse(
                431, "Request Header Fields Too Large", "header_too_large", f"more than {MAX_HEADERS} header fields"
            )
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        if self.transport.is_closing():
            return
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self.cycle is not None:
            super().on_message_complete()
        self._in_head, self._head_bytes, self._headers = True, 0, 0  # the next request's head, if any

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(head_timeout_s(), self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self._head_bytes == 0 and self.cycle is None:  # never sent a byte: nobody to answer
            self.transport.close()
            return
        self._refuse(
            408,
            "Request Timeout",
            "header_timeout",
            f"the request line and headers did not all come within {head_timeout_s():g} s",
        )

    def _refuse(self, status: int, reason: str, code: str, message: str) -> None:
        self._in_head = False
        self._cancel_head_timer()
        if self.transport.is_closing():
            return
        client = self.client[0] if self.client else None
        log.warning(Fields(event="connection_refused", status=status, code=code, client=client))
        self.transport.write(refusal(status, reason, code, message))
        self.transport.close()
