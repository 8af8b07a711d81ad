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

# Exit status of a training child that could not reach the database for PATIENCE_S (EX_TEMPFAIL): its
# supervisor requeues the job.
EXIT_DB_UNREACHABLE = 75


# PostgreSQL SQLSTATEs that mean the server went away, not that the statement failed: class 08
# (connection exception) and 57P01-57P03 (admin shutdown, crash shutdown, cannot connect now).
_PG_CONNECTION_LOST = ("57P01", "57P02", "57P03")


def db_unreachable(e: BaseException) -> bool:
    """A failure to reach the database (not a failure of what was asked of it): the connection was lost or
    could not be made, the server is shutting down or starting, or SQLite's file is locked by another
    writer. An error in the statement (a missing table, a cancelled query, a full disk) is not one."""
    if isinstance(e, DBAPIError) and e.connection_invalidated:
        return True
    if not isinstance(e, (OperationalError, InterfaceError)):
        return False
    orig = getattr(e, "orig", None) or e
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate:  # a server answered with an error code
        return sqlstate.startswith("08") or sqlstate in _PG_CONNECTION_LOST
    if type(orig).__module__.startswith("sqlite3"):
        return "database is locked" in str(orig).lower()
    # psycopg raises OperationalError/InterfaceError without a SQLSTATE when it cannot connect or the
    # connection broke (refused, reset, closed): no server answered
    return type(orig).__module__.startswith("psycopg")


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
