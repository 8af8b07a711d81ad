"""The one Celery app, its queues, and enqueue-after-commit.

The broker only carries wake-ups ("job X may need running", "eval run Y may need running"); the
database holds the truth. Scale-out
uses Redis; the embedded default uses kombu's filesystem transport in the data directory, so no broker
server is needed. The API sends tasks by name and never imports `workers`.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from celery import Celery
from sqlalchemy import event
from sqlalchemy.orm import Session

from chatforge.settings import Settings, get_settings

log = logging.getLogger(__name__)

RUN_JOB = "chatforge.run_job"
RUN_EVAL = "chatforge.run_eval"
PING = "chatforge.ping"
RECONCILE = "chatforge.reconcile"
VALIDATE_FILE = "chatforge.validate_file"  # workers.files: background validation of large uploads

QUEUE_ANY = "jobs"  # any worker may take it
QUEUE_CUDA = "jobs.cuda"  # needs a CUDA worker


def queue_for(requires: str) -> str:
    return QUEUE_CUDA if requires == "cuda" else QUEUE_ANY


def make_celery(settings: Settings) -> Celery:
    app = Celery("chatforge")
    conf: dict = {
        "broker_url": settings.celery_broker_url,
        "task_acks_late": True,  # a task killed mid-run is redelivered (where the transport can)
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": QUEUE_ANY,
        "task_ignore_result": True,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "broker_connection_timeout": 3,
    }
    if settings.embedded_broker:
        folder = settings.broker_dir
        (folder / "queue").mkdir(parents=True, exist_ok=True)
        (folder / "results").mkdir(parents=True, exist_ok=True)
        (folder / "control").mkdir(parents=True, exist_ok=True)
        conf["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
        conf["result_backend"] = f"file://{folder / 'results'}"
    else:
        conf["result_backend"] = settings.celery_broker_url
        conf["broker_transport_options"] = {"visibility_timeout": 3600}
        conf["redis_socket_connect_timeout"] = 3
    app.conf.update(conf)
    return app


@lru_cache
def get_celery() -> Celery:
    return make_celery(get_settings())


def enqueue_job(job_id: str, requires: str = "any", task: str = RUN_JOB) -> None:
    """Wake-up for a fine-tuning job (RUN_JOB) or an eval run (RUN_EVAL)."""
    get_celery().send_task(task, args=[job_id], queue=queue_for(requires))


def enqueue_after_commit(session: Session, job_id: str, requires: str = "any", task: str = RUN_JOB) -> None:
    """Send the wake-up only once the job row is committed, so a worker never finds no row.

    If sending fails, the job stays queued in the database and the reconciler sends it later.
    """

    def _send(_session: Session) -> None:
        try:
            enqueue_job(job_id, requires, task)
        except Exception:  # broker down: the reconciler picks the job up later
            log.warning("could not enqueue %s; the reconciler will retry", job_id, exc_info=True)

    event.listen(session, "after_commit", _send, once=True)


def broker_ready(timeout: float = 2.0) -> bool:
    settings = get_settings()
    if settings.embedded_broker:
        folder = settings.broker_dir / "queue"
        return folder.is_dir()
    try:
        with get_celery().connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - any failure means the broker is not reachable
        return False
