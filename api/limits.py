"""Per-key request rates and concurrent inference requests. With a Redis broker the counts live in Redis,
so every API replica shares them; otherwise (the embedded default) in this API process. Rates are a
token bucket of `rpm` requests refilled evenly over a minute (GCRA: one timestamp per key). A concurrent
slot is a lease that lapses after LEASE_SECONDS, so a replica that dies cannot hold a key's slots for ever.
Quota rows and the rules of who may call what live in chatforge.keys; this module only counts.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from typing import Protocol

log = logging.getLogger("chatforge.api")
WINDOW = 60.0
LEASE_SECONDS = 900


class Limiter(Protocol):
    def hit(self, key_id: str, rpm: int) -> int | None:
        """Count one request; None if allowed, else the seconds until one more would be."""

    def acquire(self, key_id: str, limit: int) -> str | None:
        """A slot token if fewer than `limit` are held, else None."""

    def release(self, key_id: str, token: str) -> None: ...


class MemoryLimiter:
    """Counts in this process (one API process: the embedded default)."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock, self._lock = clock, threading.Lock()
        self._tat: dict[str, float] = {}
        self._slots: dict[str, dict[str, float]] = {}

    def hit(self, key_id: str, rpm: int) -> int | None:
        with self._lock:
            now = self._clock()
            tat = max(self._tat.get(key_id, now), now) + WINDOW / rpm
            if tat - now > WINDOW:
                return max(1, math.ceil(tat - now - WINDOW))
            self._tat[key_id] = tat
            return None

    def acquire(self, key_id: str, limit: int) -> str | None:
        with self._lock:
            now = self._clock()
            held = {t: exp for t, exp in self._slots.get(key_id, {}).items() if exp > now}
            if len(held) >= limit:
                self._slots[key_id] = held
                return None
            token = uuid.uuid4().hex
            held[token] = now + LEASE_SECONDS
            self._slots[key_id] = held
            return token

    def release(self, key_id: str, token: str) -> None:
        with self._lock:
            self._slots.get(key_id, {}).pop(token, None)


# KEYS[1] = the key's timestamp; ARGV = emission interval, window. Server time, so replicas agree.
_HIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
tat = tat + tonumber(ARGV[1])
if tat - now > tonumber(ARGV[2]) then return tostring(tat - now - tonumber(ARGV[2])) end
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
return false
"""
# KEYS[1] = the key's slot set (token -> lease end); ARGV = limit, token, lease seconds
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""


class RedisLimiter:
    """Counts in Redis, shared by every API replica. If Redis cannot be reached, requests are let through
    (the broker's health is /ready's business) and a warning is logged."""

    def __init__(self, url: str, namespace: str = "chatforge:limits") -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._ns = namespace
        self._hit = self._redis.register_script(_HIT)
        self._acquire = self._redis.register_script(_ACQUIRE)

    def hit(self, key_id: str, rpm: int) -> int | None:
        try:
            wait = self._hit(keys=[f"{self._ns}:rate:{key_id}"], args=[WINDOW / rpm, WINDOW])
        except Exception as e:  # noqa: BLE001 - a limiter outage must not take the API down
            log.warning("rate limiter unavailable, request allowed: %s", type(e).__name__)
            return None
        return None if wait is None else max(1, math.ceil(float(wait)))

    def acquire(self, key_id: str, limit: int) -> str | None:
        token = uuid.uuid4().hex
        try:
            ok = self._acquire(keys=[f"{self._ns}:slots:{key_id}"], args=[limit, token, LEASE_SECONDS])
        except Exception as e:  # noqa: BLE001
            log.warning("concurrency limiter unavailable, request allowed: %s", type(e).__name__)
            return token
        return token if ok else None

    def release(self, key_id: str, token: str) -> None:
        try:
            self._redis.zrem(f"{self._ns}:slots:{key_id}", token)
        except Exception as e:  # noqa: BLE001
            log.warning("could not release a concurrency slot: %s", type(e).__name__)


def make_limiter(broker_url: str) -> Limiter:
    """Redis when the broker is Redis (API replicas share the counts), else this process's counters."""
    return RedisLimiter(broker_url) if broker_url.startswith(("redis://", "rediss://")) else MemoryLimiter()


_limiter: Limiter | None = None
_limiter_lock = threading.Lock()


def get_limiter(broker_url: str) -> Limiter:
    """This process's limiter (made once)."""
    global _limiter
    with _limiter_lock:
        if _limiter is None:
            _limiter = make_limiter(broker_url)
        return _limiter
