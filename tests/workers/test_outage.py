"""Unit tests (no services, no training) for riding out outages: which database errors are retried, a full
disk that raises no errno, and a training child that finds its job no longer its own after an outage
longer than the lease (it stops and records nothing). The end-to-end scenarios are in
tests/e2e/test_chaos_scaleout.py."""

from __future__ import annotations

import sqlite3
from collections import namedtuple

import psycopg
import psycopg.errors
import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from chatforge.db.models import Base, FineTuningJob, JobEvent, Project
from chatforge.db.session import get_engine, session_scope
from chatforge.settings import get_settings, reset_settings
from workers import runner
from workers.dbretry import db_unreachable, retry_db
from workers.outcome import fail, record_stopped
from workers.sink import DBSink

# -- which errors mean "the database is unreachable" ---------------------------------------------------------


def _wrapped(orig: BaseException, cls=OperationalError, invalidated: bool = False) -> DBAPIError:
    return cls("SELECT 1", {}, orig, connection_invalidated=invalidated)


@pytest.mark.parametrize("orig", [
    psycopg.OperationalError("connection failed: Connection refused"),  # no server answered: no SQLSTATE
    psycopg.errors.AdminShutdown("terminating connection due to administrator command"),  # 57P01
    psycopg.errors.CrashShutdown("crash"),  # 57P02
    psycopg.errors.CannotConnectNow("the database system is starting up"),  # 57P03
    psycopg.errors.ConnectionFailure("connection failure"),  # class 08
    sqlite3.OperationalError("database is locked"),
])
def test_connection_loss_is_unreachable(orig):
    assert db_unreachable(_wrapped(orig))


@pytest.mark.parametrize("orig", [
    psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),  # 57014
    psycopg.errors.DiskFull("could not extend file"),  # 53100
    sqlite3.OperationalError("no such table: fine_tuning_jobs"),
])
def test_a_failed_statement_is_not_unreachable(orig):
    assert not db_unreachable(_wrapped(orig))


def test_an_invalidated_connection_is_unreachable_whatever_the_error():
    assert db_unreachable(_wrapped(RuntimeError("cut"), DBAPIError, invalidated=True))
    assert not db_unreachable(_wrapped(RuntimeError("bad"), ProgrammingError))
    assert not db_unreachable(ValueError("not a database error"))


def test_retry_db_raises_a_failed_statement_at_once():
    calls = []

    def fn():
        calls.append(1)
        raise _wrapped(psycopg.errors.QueryCanceled("canceled"))

    with pytest.raises(OperationalError):
        retry_db(fn, "testing", patience=30)
    assert len(calls) == 1


# -- a full disk that raises no errno (torch.save's zip writer) ----------------------------------------------

TORCH_SAVE_FULL = RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 1536 vs 1430")
Usage = namedtuple("Usage", "total used free")


def test_errno_less_write_failure_on_a_full_disk_is_disk_full(tmp_path, monkeypatch):
    monkeypatch.setattr(runner.shutil, "disk_usage", lambda p: Usage(1 << 30, (1 << 30) - 4096, 4096))
    assert runner.disk_full(TORCH_SAVE_FULL, tmp_path / "jobs" / "ftjob-x")  # a folder not made yet: its disk
    assert not runner.disk_full(TORCH_SAVE_FULL)  # without a folder to check, it is not recognised
    # an out-of-memory error stays one, however full the disk
    assert not runner.disk_full(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), tmp_path)


def test_errno_less_failure_with_space_left_is_not_disk_full(tmp_path):
    assert not runner.disk_full(TORCH_SAVE_FULL, tmp_path)
    assert not list(tmp_path.iterdir())  # the probe write left nothing behind


def test_a_quota_that_refuses_the_probe_write_is_disk_full(tmp_path, monkeypatch):
    real_open = open

    def refusing_open(path, mode="r", *a, **kw):
        if ".space-probe-" in str(path):
            raise OSError(122, "Disk quota exceeded")  # EDQUOT
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr("builtins.open", refusing_open)
    assert runner.no_space_left(tmp_path)


# -- a training child whose job is no longer its own -------------------------------------------------------


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATFORGE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CHATFORGE_DATABASE_URL", raising=False)
    reset_settings()
    Base.metadata.create_all(get_engine(get_settings().db_url))
    with session_scope() as s:
        s.add(Project(id="proj_t", name="t"))
        s.flush()
        s.add(FineTuningJob(id="ftjob-t", project_id="proj_t", model="m", status="running", lease_owner="w1"))
    yield
    get_engine(get_settings().db_url).dispose()
    reset_settings()


def _set(**values) -> None:
    with session_scope() as s:
        job = s.get(FineTuningJob, "ftjob-t")
        for k, v in values.items():
            setattr(job, k, v)


def _job() -> tuple[str, str | None, list[str]]:
    with session_scope() as s:
        job = s.get(FineTuningJob, "ftjob-t")
        events = [e.message for e in s.scalars(select(JobEvent).where(JobEvent.job_id == "ftjob-t")
                                               .order_by(JobEvent.seq))]
        return job.status, job.finished_at, events


def _sink(owner="w1") -> DBSink:
    return DBSink("ftjob-t", storage=None, model_name="ft:m::ftjob-t", root="m", parent="m", project_id="proj_t",
                  owner=owner)


def test_owner_hears_cancel_and_pause_requests(db):
    sink = _sink()
    assert sink.control() is None
    _set(requested="pause")
    sink._last_control_check = 0
    assert sink.control() == "pause" and not sink.abandoned
    _set(requested="cancel")
    sink._last_control_check = 0
    assert sink.control() == "cancel" and not sink.abandoned
    record_stopped("ftjob-t", "cancelled", 3, "w1")
    assert _job()[0] == "cancelled"


@pytest.mark.parametrize("takeover", [
    {"status": "queued", "lease_owner": None},  # the reconciler requeued it after the lease lapsed
    {"status": "running", "lease_owner": "w2"},  # and another worker runs it now
])
def test_a_job_requeued_or_taken_over_is_abandoned_not_cancelled(db, takeover):
    sink = _sink()
    sink.metrics(1, {"train_loss": 1.0}, 10)
    _set(**takeover)
    sink._last_control_check = 0
    assert sink.control() == "cancel" and sink.abandoned  # the trainer stops...
    sink.metrics(2, {"train_loss": 0.9}, 10)  # ...and nothing this child still reports is written
    sink.log("Cancel requested: stopping at step 2.")
    record_stopped("ftjob-t", "cancelled", 2, "w1")
    fail("ftjob-t", "boom", "internal_error", owner="w1")
    runner._pause_for_disk("ftjob-t", OSError(28, "No space left on device"), "w1")
    status, finished_at, events = _job()
    assert (status, finished_at) == (takeover["status"], None)
    assert events == ["Step 1/10: train_loss=1"], events


def test_metrics_found_written_are_not_written_again(db, monkeypatch):
    """A retried write whose first commit got through (its acknowledgement lost) writes nothing more."""
    import workers.sink as sink_mod

    real = sink_mod.retry_db

    def commit_then_lose_the_ack(fn, what, patience=60):
        fn()  # committed; the client saw an error instead
        return real(fn, what, patience)

    monkeypatch.setattr(sink_mod, "retry_db", commit_then_lose_the_ack)
    sink = _sink()
    sink.metrics(1, {"train_loss": 1.0}, 10)
    sink.metrics(2, {"train_loss": 0.9}, 10)
    sink.log("hello")
    assert _job()[2] == ["Step 1/10: train_loss=1", "Step 2/10: train_loss=0.9", "hello"]
