"""Blocking work on worker threads, its results on the event loop, and server-sent events.

A request's model work (a chat reply, an answer, an agent run) is a blocking iterator; it runs
on the server's thread pool inside a :func:`~hearthlm.llm.backend.cancel_scope`, and each item
it yields crosses to the event loop. The event loop never blocks on the model. When the client
goes away (its connection closes) or the stream's consumer stops, the cancel event is set: the
generation ends within a token or two and a batched engine frees its sequence at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from langchain_core.messages import AIMessageChunk

from hearthlm.errors import HearthError
from hearthlm.llm.backend import cancel_scope
from hearthlm.serve.errors import from_library
from hearthlm.serve.state import ServerState

_ITEM, _ERROR, _DONE = "item", "error", "done"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def add_up(chunks: list[Any]) -> Any:
    """The sum of a chain's or a chat model's chunks: its output (see
    :class:`hearthlm.llm.chain.Chain`). Message chunks are summed in one pass: adding them
    two at a time builds a message per token, which costs the event loop more than the token."""
    total = chunks[0]
    if isinstance(total, AIMessageChunk) and len(chunks) > 1:
        return total + list(chunks[1:])
    for chunk in chunks[1:]:
        total = total + chunk
    return total


class Work:
    """One request's blocking iterator, run on a worker thread; iterate it asynchronously.

    It takes a place in the server's admission limit (429 past it) until the thread is done,
    and watches the client's connection so that a client that disconnects stops the work.
    """

    def __init__(
        self, state: ServerState, produce: Callable[[], Iterable[Any]], request: Request | None
    ) -> None:
        state.admission.enter()
        self.state = state
        self.cancel = threading.Event()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._request = request
        self._watch: asyncio.Task[None] | None = None
        context = contextvars.copy_context()
        try:
            self._future = self._loop.run_in_executor(
                state.executor, context.run, self._run, produce
            )
        except BaseException:
            state.admission.leave()
            raise
        if request is not None:
            self._watch = asyncio.ensure_future(self._watch_disconnect(request))

    def _run(self, produce: Callable[[], Iterable[Any]]) -> None:
        try:
            with cancel_scope(self.cancel):
                for item in produce():
                    self._send(_ITEM, item)
                    if self.cancel.is_set():
                        break
        except BaseException as exc:  # handed to the event loop, which answers the client
            self._send(_ERROR, exc)
        finally:
            self.state.admission.leave()
            self._send(_DONE, None)

    def _send(self, kind: str, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, item))
        except RuntimeError:  # the loop is closed: the server is shutting down
            self.cancel.set()

    async def _watch_disconnect(self, request: Request) -> None:
        while not self.cancel.is_set():
            message = await request.receive()
            if message["type"] == "http.disconnect":
                self.cancel.set()
                return

    async def items(self, merge: Callable[[list[Any]], Any] | None = None) -> AsyncIterator[Any]:
        """The items as they come; raises what the work raised. With ``merge`` (:func:`add_up`
        for chunks that add up), the items that are already waiting come as one: a client that
        reads slower than the model writes gets fewer, larger events, not a growing backlog."""
        held: list[tuple[str, Any]] = []
        try:
            while True:
                kind, item = held.pop() if held else await self._queue.get()
                if kind == _DONE:
                    return
                if kind == _ERROR:
                    raise item
                waiting = [item]
                while merge is not None and not held and not self._queue.empty():
                    next_kind, next_item = self._queue.get_nowait()
                    if next_kind == _ITEM:
                        waiting.append(next_item)
                    else:
                        held.append((next_kind, next_item))
                yield merge(waiting) if merge is not None and len(waiting) > 1 else item
        finally:
            self.cancel.set()
            if self._watch is not None:
                self._watch.cancel()

    async def result(self) -> list[Any]:
        """Every item, once the work is done."""
        return [item async for item in self.items()]


async def collect(work: Work) -> list[Any]:
    """Every item of ``work``; a library error becomes its HTTP error."""
    try:
        return await work.result()
    except HearthError as exc:
        raise from_library(exc) from None


async def opened(
    work: Work, merge: Callable[[list[Any]], Any] | None = add_up
) -> AsyncIterator[Any]:
    """The items of ``work`` as a stream that has begun: an error before its first item is
    raised here, as its HTTP error, before any byte of the response is sent. Items waiting
    together are summed with ``merge`` (see :meth:`Work.items`)."""
    items = work.items(merge)
    done = object()
    try:
        first = await anext(items, done)
    except HearthError as exc:
        raise from_library(exc) from None

    async def replay() -> AsyncIterator[Any]:
        if first is not done:
            yield first
            async for item in items:
                yield item

    return replay()


def sse(data: Any, event: str | None = None) -> str:
    """One server-sent event; ``data`` is JSON-encoded unless it is a string."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n"


DONE = "data: [DONE]\n\n"


def event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    """A ``text/event-stream`` response. Starlette cancels ``events`` when the client
    disconnects, which sets the work's cancel event through :meth:`Work.items`."""
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
