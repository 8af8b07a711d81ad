"""The HTTP server's limits against hostile clients, over raw sockets against `chatforge serve`: a huge
request head is refused, a client that trickles its head is cut off at CHATFORGE_HTTP_HEADER_TIMEOUT_SECONDS
while other clients are served, and a slow head on a kept-alive connection is bounded the same way.
The API runs on its own (no worker, no model) with a short deadline so the tests stay quick."""

from __future__ import annotations

import socket
import threading
import time

import httpx2 as httpx
import pytest

from tests.support.service import start_service

HEAD_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def api(tmp_path_factory, pg_url):
    svc = start_service(tmp_path_factory.mktemp("limits-http"), pg_url, None, workers=0,
                        CHATFORGE_HTTP_HEADER_TIMEOUT_SECONDS=str(HEAD_TIMEOUT))
    try:
        yield svc
    finally:
        svc.stop()


def _addr(svc) -> tuple[str, int]:
    host, port = svc.base_url.removeprefix("http://").split(":")
    return host, int(port)


def _read_until_closed(sock: socket.socket, limit: float) -> bytes:
    """Everything the server sends until it closes the connection; fails if it is still open after `limit`."""
    sock.settimeout(limit)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {limit}s (got {got[:200]!r})")
    return got


def _healthy(svc) -> None:
    assert httpx.get(f"{svc.base_url}/health", timeout=10).json() == {"status": "ok"}


def test_100_kb_of_headers_is_refused(api):
    """A head still incomplete past 32 KiB is a 400 (or the connection is closed) and nothing else breaks."""
    with socket.create_connection(_addr(api), timeout=30) as sock:
        head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000)
                                                                for i in range(100))
        try:
            sock.sendall(head + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server already refused and closed while we were still sending
        got = _read_until_closed(sock, 30)
    assert got == b"" or got.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), got[:200]
    _healthy(api)


def test_a_40_kb_head_sent_at_once_is_refused(api):
    """A head past the limit that the server reads whole (h11's own limit only sees incomplete heads)."""
    with socket.create_connection(_addr(api), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 40_000 + b"\r\n\r\n")
        got = _read_until_closed(sock, 30)
    assert got.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400")), got[:200]  # never answered
    _healthy(api)


def test_a_head_trickled_a_byte_a_second_is_cut_off_while_others_are_served(api):
    """The slowloris client sends one byte of its head every second; the server answers 408 and closes
    the connection once the head deadline has passed since the connection opened, and meanwhile normal
    requests are answered."""
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    sock = socket.create_connection(_addr(api), timeout=30)
    closed = threading.Event()
    sent = [0]

    def dribble() -> None:
        try:
            for b in head:
                if closed.is_set():
                    return
                sock.sendall(bytes([b]))
                sent[0] += 1
                time.sleep(1)
        except OSError:
            pass  # the server closed the connection

    opened = time.monotonic()
    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    try:
        served = 0
        while not closed.is_set() and time.monotonic() - opened < HEAD_TIMEOUT:
            _healthy(api)  # other clients are answered while the slow head trickles in
            served += 1
            time.sleep(0.2)
        got = _read_until_closed(sock, HEAD_TIMEOUT + 15)
        elapsed = time.monotonic() - opened
    finally:
        closed.set()
        sock.close()
        t.join(5)
    assert served >= 3
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert elapsed >= HEAD_TIMEOUT - 0.5  # cut off by the deadline, not at once
    assert sent[0] < len(head)  # ... before the trickle could ever finish its head
    _healthy(api)


def test_a_slow_head_on_a_kept_alive_connection_is_cut_off_too(api):
    """After one answered request, the next head on the same connection gets the same deadline from its
    first byte (uvicorn's keep-alive timer stops counting once a byte arrives)."""
    with socket.create_connection(_addr(api), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b'{"status":"ok"}' not in first:
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        started, got, reset = time.monotonic(), b"", False
        for b in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 60:
            try:
                sock.sendall(bytes([b]))
                sock.settimeout(1)
                if got := sock.recv(65536):
                    break
            except TimeoutError:
                pass
            except OSError:  # the 408 and the close can race our next byte: a reset is the same cut-off
                reset = True
                break
        elapsed = time.monotonic() - started
    assert got.startswith(b"HTTP/1.1 408") or (reset and not got), got[:200]
    assert HEAD_TIMEOUT - 0.5 <= elapsed <= HEAD_TIMEOUT + 5  # cut off at the deadline, long before the head ends
    _healthy(api)


def test_a_connection_that_sends_nothing_is_closed(api):
    with socket.create_connection(_addr(api), timeout=30) as sock:
        opened = time.monotonic()
        assert _read_until_closed(sock, HEAD_TIMEOUT + 15) == b""
        assert time.monotonic() - opened >= HEAD_TIMEOUT - 0.5
