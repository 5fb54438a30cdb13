"""One answer, one write: `CoalescedWrites` holds a write until the next one joins it or the event loop turns,
so uvicorn's separate head and body writes reach the socket as one; nothing is lost, reordered or held past
the turn, and closing sends what is held first."""

from __future__ import annotations

import asyncio
import signal

import httpx
from service_helpers import start_server

from service.connection import CoalescedWrites


class Transport:
    """What CoalescedWrites needs of an asyncio transport, recording each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_writes_in_one_turn_go_out_as_one_and_a_lone_write_at_the_next_turn() -> None:
    async def scenario() -> None:
        transport = Transport()
        writes = CoalescedWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        writes.write(b"HTTP/1.1 200 OK\r\n\r\n")
        writes.write(memoryview(b'{"ok": true}'))
        assert transport.writes == [b'HTTP/1.1 200 OK\r\n\r\n{"ok": true}']  # joined, sent at once

        writes.write(b"head")  # alone: held until the loop turns
        assert transport.writes[1:] == []
        await asyncio.sleep(0)
        assert transport.writes[1:] == [b"head"]

        writes.write(b"a")
        writes.write(b"b")
        writes.write(b"c")  # held again after a joined pair, sent in order
        await asyncio.sleep(0)
        assert b"".join(transport.writes[2:]) == b"abc" and len(transport.writes) == 4
        await asyncio.sleep(0)
        assert len(transport.writes) == 4  # nothing sent twice

        assert writes.get_extra_info("peername") == "info:peername"  # the rest is the transport's
        writes.write(b"last")
        writes.close()
        assert transport.writes[-1] == b"last" and transport.closed  # sent before the close
        await asyncio.sleep(0)
        assert transport.writes[-1] == b"last" and len(transport.writes) == 5

    asyncio.run(scenario())


def test_an_abort_drops_what_is_held_and_a_closed_transport_is_not_written() -> None:
    async def scenario() -> None:
        transport = Transport()
        writes = CoalescedWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        writes.write(b"held")
        writes.abort()
        await asyncio.sleep(0)
        assert transport.writes == [] and transport.aborted

        transport = Transport()
        writes = CoalescedWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        writes.write(b"held")
        transport.closed = True  # the connection went away meanwhile
        await asyncio.sleep(0)
        assert transport.writes == []

    asyncio.run(scenario())


def test_a_real_server_answers_whole_over_keep_alive(service_ckpt) -> None:
    """Through `python -m service` (whose protocol coalesces): small and large answers, the page (a file sent in
    chunks), errors, one keep-alive connection."""
    proc, base = start_server(service_ckpt.path)
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            small = client.post("/score", json={"text": "the stock market rose"})
            many = client.post("/score", json={"sentences": ["the market rose"] * 150, "per_token": True})
            page = client.get("/")
            bad = client.post("/score", content=b"{", headers={"content-type": "application/json"})
            again = client.post("/score", json={"text": "the stock market rose"})
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert small.status_code == 200 and small.json()["results"][0]["num_tokens"] == 5
    assert many.status_code == 200 and len(many.json()["results"]) == 150 and len(many.content) > 32 * 1024
    assert page.status_code == 200 and page.text.rstrip().endswith("</html>")
    assert bad.status_code == 422 and bad.json()["error"]["code"]
    assert again.json() == small.json()
