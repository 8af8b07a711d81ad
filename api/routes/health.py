"""Liveness, readiness (database and broker reachable) and Prometheus metrics; no auth."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select, text

from api import metrics
from api.deps import SessionDep
from chatforge.db.models import FineTuningJob
from chatforge.queue import broker_ready

router = APIRouter(tags=["operations"])


@router.get("/health")
def health() -> dict:
    return {"status": "ok"}


@router.get("/ready")
def ready(session: SessionDep) -> JSONResponse:
    checks = {}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as e:  # noqa: BLE001 - report, don't raise
        checks["database"] = f"error: {e.__class__.__name__}"
    checks["broker"] = "ok" if broker_ready() else "unreachable"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics")
def prometheus(request: Request, session: SessionDep) -> Response:
    counts = dict(session.execute(select(FineTuningJob.status, func.count()).group_by(FineTuningJob.status)).all())
    for status in ("validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"):
        metrics.JOBS.labels(status).set(counts.get(status, 0))
    hub = getattr(request.app.state, "engines", None)
    if hub is not None:
        for base, st in hub.stats().items():
            metrics.ENGINE_RUNNING.labels(base).set(st.running)
            metrics.ENGINE_WAITING.labels(base).set(st.waiting)
            metrics.PREFIX_REUSED.labels(base).set(st.prefix_tokens_reused_total)
            metrics.KV_CACHE_BYTES.labels(base).set(st.kv_cache_bytes)
            metrics.PREFIX_CACHE_BYTES.labels(base).set(st.prefix_cache_bytes)
            for reason, count in st.finished_by_reason.items():
                metrics.ENGINE_FINISHED.labels(base, reason).set(count)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
