"""Eval runs as leased jobs, in embedded mode (SQLite + the filesystem broker): the claim is exclusive,
the reconciler requeues a run whose worker died (or fails it after too many attempts) and re-sends a
queued run whose wake-up was lost, and a run cancelled while queued never starts."""

from datetime import timedelta

import pytest

from chatforge.db.models import Eval, EvalRun, Project, utcnow
from chatforge.db.session import session_scope


@pytest.fixture
def embedded(tmp_path, monkeypatch):
    from chatforge.migrate import upgrade
    from chatforge.queue import get_celery
    from chatforge.settings import get_settings, reset_settings

    for k in ("CHATFORGE_DATABASE_URL", "CHATFORGE_BROKER_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("CHATFORGE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CHATFORGE_MAX_JOB_ATTEMPTS", "2")
    reset_settings()
    get_celery.cache_clear()
    settings = get_settings()
    upgrade(settings.db_url)
    get_celery()  # creates the broker folders
    with session_scope() as s:
        s.add(Project(id="proj_t", name="t"))
        s.flush()
        s.add(Eval(id="eval_t", project_id="proj_t", name="e", data_source_config={}, testing_criteria=[]))
    yield settings
    reset_settings()
    get_celery.cache_clear()


def add_run(run_id: str, **fields) -> None:
    with session_scope() as s:
        s.add(EvalRun(id=run_id, eval_id="eval_t", project_id="proj_t", data_source={}, **fields))


def queued_messages(settings) -> int:
    return sum(1 for p in (settings.broker_dir / "queue").iterdir() if p.is_file())


def test_claim_is_exclusive_and_only_for_runnable_runs(embedded):
    from workers import lease

    add_run("evalrun_a", status="queued")
    add_run("evalrun_b", status="canceled")
    with session_scope() as s:
        assert lease.claim(s, "evalrun_a", "w1", 30, table=EvalRun)
        assert not lease.claim(s, "evalrun_a", "w2", 30, table=EvalRun)
        assert not lease.claim(s, "evalrun_b", "w1", 30, table=EvalRun)
        assert lease.renew(s, "evalrun_a", "w1", 30, table=EvalRun)
        assert not lease.renew(s, "evalrun_a", "w2", 30, table=EvalRun)
    with session_scope() as s:
        assert s.get(EvalRun, "evalrun_a").attempts == 1


def test_reconciler_requeues_lapsed_fails_exhausted_and_resends_lost(embedded):
    from workers.reconcile import reconcile_once

    past = utcnow() - timedelta(minutes=5)
    add_run("evalrun_lapsed", status="in_progress", attempts=1, lease_owner="dead", lease_expires_at=past)
    add_run("evalrun_tired", status="in_progress", attempts=2, lease_owner="dead", lease_expires_at=past)
    add_run("evalrun_lost", status="queued", enqueued_at=past)
    add_run("evalrun_fresh", status="queued", enqueued_at=utcnow())
    before = queued_messages(embedded)
    out = reconcile_once(embedded)
    assert {"evalrun_lapsed", "evalrun_lost"} <= set(out["requeued"])
    assert "evalrun_fresh" not in out["requeued"] and out["failed"] == 1
    assert queued_messages(embedded) - before == 2  # two wake-ups on the broker
    with session_scope() as s:
        lapsed, tired = s.get(EvalRun, "evalrun_lapsed"), s.get(EvalRun, "evalrun_tired")
        assert (lapsed.status, lapsed.lease_owner) == ("queued", None)
        assert tired.status == "failed" and tired.error["code"] == "worker_lost"


def test_run_cancelled_while_queued_never_starts(embedded):
    from workers.evals import run_eval_run

    add_run("evalrun_c", status="queued", requested="cancel")
    assert run_eval_run("evalrun_c", embedded) == "canceled"
    with session_scope() as s:
        run = s.get(EvalRun, "evalrun_c")
        assert run.status == "canceled" and run.lease_owner is None and run.finished_at is not None
