"""`service.http.ready_message` / `ClientWatch`: whether a request's client has gone, asked without waiting.
It must answer what Starlette's `Request.is_disconnected` answers on every kind of receive channel, consume
nothing it does not return, and leave no waiter behind where the channel would have waited."""

from __future__ import annotations

import asyncio
import warnings

import anyio
from starlette.requests import Request

from service.http import ClientWatch, ready_message

DISCONNECT = {"type": "http.disconnect"}


class Cycle:
    """uvicorn's receive channel after the body was read: waits on an event, set when the connection is lost."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.disconnected = False
        self.calls = 0

    async def receive(self) -> dict:
        self.calls += 1
        if not self.disconnected:
            await self.event.wait()
            self.event.clear()
        return DISCONNECT if self.disconnected else {"type": "http.request", "body": b"", "more_body": False}

    def lose(self) -> None:
        self.disconnected = True
        self.event.set()


def wrapped(receive):
    """A middleware's receive around another (the awaitable is nested coroutines)."""

    async def outer() -> dict:
        return await receive()

    return outer


def stubborn(receive):
    """A receive that takes the cancellation and answers anyway."""

    async def answer() -> dict:
        try:
            return await receive()
        except asyncio.CancelledError:
            return DISCONNECT

    return answer


async def starlette_answer(receive) -> bool:
    return await Request({"type": "http", "method": "POST", "headers": []}, receive).is_disconnected()


async def both(receive) -> tuple[bool, bool]:
    """(Starlette's answer, ClientWatch's answer) for the same state of a channel."""
    theirs = await starlette_answer(receive)
    await asyncio.sleep(0)  # anyio's cancellation callbacks settle
    return theirs, ClientWatch(receive)()


def test_a_connected_client_is_there_and_the_wait_leaves_no_waiter() -> None:
    async def body() -> None:
        cycle = Cycle()
        for receive in (cycle.receive, wrapped(cycle.receive)):
            assert await both(receive) == (False, False)
            assert cycle.event._waiters is None or not cycle.event._waiters  # no waiter left behind
        cycle.lose()
        for receive in (cycle.receive, wrapped(cycle.receive)):
            assert await both(receive) == (True, True)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" would be a failure
        asyncio.run(body())


def test_a_queue_channel_loses_no_message_to_the_question() -> None:
    async def body() -> None:
        queue: asyncio.Queue[dict] = asyncio.Queue()
        assert ready_message(queue.get) is None
        assert not queue._getters  # the cancelled get left the queue
        queue.put_nowait({"type": "http.request", "body": b"x", "more_body": False})
        assert ready_message(queue.get) == {"type": "http.request", "body": b"x", "more_body": False}
        assert ready_message(queue.get) is None
        queue.put_nowait(DISCONNECT)
        assert await both(queue.get) == (True, False)  # Starlette took the message; the channel is empty again
        queue.put_nowait(DISCONNECT)
        assert ClientWatch(queue.get)() is True

    asyncio.run(body())


def test_a_receive_that_answers_its_cancellation_is_heard() -> None:
    async def body() -> None:
        cycle = Cycle()
        assert await both(stubborn(cycle.receive)) == (True, True)

    asyncio.run(body())


def test_anyio_streams_answer_as_starlette_does() -> None:
    async def body() -> None:
        send, receive = anyio.create_memory_object_stream[dict](1)
        assert await both(receive.receive) == (False, False)
        assert not receive._state.waiting_receivers
        await send.send(DISCONNECT)  # anyio checks for a cancellation before it looks: neither sees it
        assert await both(receive.receive) == (False, False)

    asyncio.run(body())


def test_the_watch_remembers_a_client_that_went() -> None:
    async def body() -> None:
        cycle = Cycle()
        watch = ClientWatch(cycle.receive)
        assert watch() is False and watch() is False
        cycle.lose()
        assert watch() is True
        calls = cycle.calls
        assert watch() is True and cycle.calls == calls  # not asked again

    asyncio.run(body())
