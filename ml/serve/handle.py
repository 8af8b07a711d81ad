"""The caller's end of one request: a stream of GenerationEvents, readable from threads or asyncio.

Owns the hand-off between the engine's scheduler thread (which pushes events) and consumers (sync
iteration, `async for`, result()). It does not generate anything; cancel() only raises a flag that the
scheduler honours at its next step.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator

from ml.serve.request import Completion, GenerationEvent


class RequestHandle:
    """Iterate it (`for ev in h` or `async for ev in h`) to stream events; the last one has
    finish_reason set. Events can be consumed once; result()/aresult() fold the rest together.
    Abandoning an iteration before the final event (break, task cancelled because the client
    disconnected) cancels the request."""

    def __init__(self, request_id: str, prompt_tokens: int) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.submitted_at = time.monotonic()
        self._events: queue.SimpleQueue[GenerationEvent] = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self._done = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._consumed_final = False

    # ---- engine side -------------------------------------------------------------------------
    def _push(self, ev: GenerationEvent, wake: bool = True) -> None:
        """Queue an event. wake=False leaves waking an asyncio consumer to wake_all(), which the
        engine calls once per step for every handle it pushed to."""
        self._events.put(ev)
        if ev.finish_reason is not None:
            self._done.set()
        if wake:
            wake_all([self])

    def _set_wakeup(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    # ---- caller side -------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop generating (client went away). The slot is freed at the next decode step and a
        final event with finish_reason "cancelled" is pushed (unless it had already finished)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        """True once the final event has been produced (not necessarily consumed)."""
        return self._done.is_set()

    def get(self, timeout: float | None = None) -> GenerationEvent:
        """Next event, blocking; raises queue.Empty after timeout."""
        ev = self._events.get(timeout=timeout)
        if ev.finish_reason is not None:
            self._consumed_final = True
        return ev

    def __iter__(self) -> Iterator[GenerationEvent]:
        try:
            while not self._consumed_final:
                yield self.get()
        finally:  # abandoned before the end (consumer broke out or died): stop generating
            if not self._consumed_final:
                self.cancel()

    def result(self, timeout: float | None = None) -> Completion:
        """Block until finished and return everything not yet consumed, folded together."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out = Completion()
        while not self._consumed_final:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            out.add(self.get(timeout=left))
        return out

    async def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
            self._loop = asyncio.get_running_loop()
        try:
            while not self._consumed_final:
                try:
                    ev = self._events.get_nowait()
                except queue.Empty:
                    # clear() and set() both run on the loop thread, so a push that lands after this
                    # clear schedules a set() that runs after we start waiting: no lost wake-up.
                    self._wakeup.clear()
                    if self._events.empty():
                        await self._wakeup.wait()
                    continue
                if ev.finish_reason is not None:
                    self._consumed_final = True
                yield ev
        finally:  # the consumer stopped early (e.g. its task was cancelled: client disconnected)
            if not self._consumed_final:
                self.cancel()

    async def aresult(self) -> Completion:
        out = Completion()
        async for ev in self:
            out.add(ev)
        return out


def _wake(handles: list[RequestHandle]) -> None:
    for h in handles:
        h._set_wakeup()


def wake_all(handles: list[RequestHandle]) -> None:
    """Wake the asyncio consumers of these handles: one call into each event loop, however many of
    its handles got events (a decode step pushes to every running request at once; a wake-up per
    token would cost a self-pipe write and a loop iteration each, with the GIL contended)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[RequestHandle]] = {}
    for h in handles:
        if h._loop is not None:
            by_loop.setdefault(h._loop, []).append(h)
    for loop, hs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_wake, hs)
        except RuntimeError:  # loop closed: the consumers are gone
            pass
