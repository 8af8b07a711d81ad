"""Riding out a database restart: a write the worker or its training child must not lose is retried while
the database is unreachable, up to a patience, instead of killing a training run over a few seconds of
downtime. Only connection failures are retried (the server restarting, a connection cut); an error in
the statement itself is raised at once."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

log = logging.getLogger("chatforge.worker")
T = TypeVar("T")

PATIENCE_S = 60.0


def db_unreachable(e: BaseException) -> bool:
    """A failure to reach the database (not a failure of what was asked of it)."""
    return isinstance(e, (OperationalError, InterfaceError)) or (
        isinstance(e, DBAPIError) and e.connection_invalidated)


def retry_db(fn: Callable[[], T], what: str, patience: float = PATIENCE_S) -> T:
    """Run `fn` (one whole transaction: it opens and commits its own session) until it gets through or
    the database has been unreachable for `patience` seconds, then raise the last error."""
    deadline = time.monotonic() + patience
    delay = 0.2
    while True:
        try:
            return fn()
        except Exception as e:
            if not db_unreachable(e) or time.monotonic() + delay > deadline:
                raise
            log.warning("database unreachable while %s (%s); retrying", what, type(e).__name__)
            time.sleep(delay)
            delay = min(2.0, delay * 2)
