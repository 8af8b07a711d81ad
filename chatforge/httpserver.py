"""How `chatforge serve` runs uvicorn: its limits against slow and hostile clients, in one place.

uvicorn bounds open connections (limit_concurrency) and idle keep-alive connections (timeout_keep_alive).
Its head size limit (h11_max_incomplete_event_size) only applies to a head still incomplete in h11's
buffer: a 100 KB head that arrives in one read is parsed whole. And nothing bounds how long a client may
take to send a head, so one that dribbles a byte now and then holds its connection for ever (slowloris).
HeadLimitsH11Protocol adds both bounds. It does not limit request bodies or responses.
"""

from __future__ import annotations

import asyncio
import re

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEAD_BYTES = 32 * 1024
MAX_CONNECTIONS = 1000

_HEAD_END = re.compile(rb"\n\r?\n")  # the blank line that ends a head (h11 also takes bare LFs)


def _close_response(status: bytes, text: bytes) -> bytes:
    return (b"HTTP/1.1 %s\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (status, len(text), text))


_TIMEOUT_RESPONSE = _close_response(b"408 Request Timeout", b"Request head not received in time.")
_TOO_LARGE_RESPONSE = _close_response(b"431 Request Header Fields Too Large", b"Request head too large.")


class HeadLimitsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with two bounds on each request head. Size: a head (request line and
    headers) longer than h11_max_incomplete_event_size bytes is answered 431 and the connection closed,
    however it arrives. Time: from the moment a connection opens (for its first request) or the first byte
    of a later request arrives, the whole head must be in within `head_timeout` seconds, however slowly
    it trickles; otherwise the connection is answered 408 (if anything of the head came) and closed.
    Idle keep-alive connections stay uvicorn's business."""

    head_timeout: float = 10.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_started = False  # bytes of the pending head have arrived
        self._head_bytes = 0  # ... how many
        self._head_tail = b""  # its last bytes, to find a blank line split across reads
        self._max_head_bytes = self.config.h11_max_incomplete_event_size or MAX_HEAD_BYTES

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_head():
            self._head_started = self._head_started or bool(data)
            self._arm_head_deadline()
            if self._head_too_large(data):
                self.logger.warning("%sRequest head over %d bytes; connection closed", self._prefix(),
                                    self._max_head_bytes)
                self.transport.write(_TOO_LARGE_RESPONSE)
                self.transport.close()
                return
        super().data_received(data)
        if not self._awaiting_head():
            self._cancel_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # a pipelined head already buffered starts its clock now; an idle connection is the keep-alive timer's
        if self._awaiting_head() and self.conn.trailing_data[0]:
            self._head_started = True
            self._arm_head_deadline()

    def _head_too_large(self, data: bytes) -> bool:
        """Count the bytes of `data` that belong to the pending head; True once they pass the limit."""
        seen = self._head_tail + data
        end = _HEAD_END.search(seen)
        self._head_bytes += (end.end() - len(self._head_tail)) if end else len(data)
        self._head_tail = seen[-2:]
        return self._head_bytes > self._max_head_bytes

    def _prefix(self) -> str:
        return f"{self.client[0]}:{self.client[1]} - " if self.client else ""

    def _awaiting_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is None and self.head_timeout > 0:
            self._head_deadline = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
        self._head_started, self._head_bytes, self._head_tail = False, 0, b""

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing() or not self._awaiting_head():
            return
        self.logger.warning("%sRequest head not complete after %gs; connection closed", self._prefix(),
                            self.head_timeout)
        if self._head_started:
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()


def protocol_class(head_timeout: float) -> type[HeadLimitsH11Protocol]:
    """HeadLimitsH11Protocol with this head deadline (seconds; 0 = none), to pass as uvicorn's `http`."""
    return type("HeadLimitsH11Protocol", (HeadLimitsH11Protocol,), {"head_timeout": float(head_timeout)})


def serve(host: str, port: int, head_timeout: float, keep_alive: int) -> None:
    """Run the API (api.main:create_app) until interrupted; idle keep-alive connections close after
    `keep_alive` seconds (settings.http_keep_alive_seconds: longer than clients pool them)."""
    import uvicorn

    uvicorn.run("api.main:create_app", factory=True, host=host, port=port, log_config=None,
                timeout_graceful_shutdown=5, http=protocol_class(head_timeout),
                h11_max_incomplete_event_size=MAX_HEAD_BYTES, limit_concurrency=MAX_CONNECTIONS,
                timeout_keep_alive=keep_alive)
