"""The Celery app as the worker sees it: the shared app from chatforge.queue plus our tasks, and the
background reconciler thread that every worker runs."""

from __future__ import annotations

import logging
import threading

from celery import signals

from chatforge.queue import get_celery
from chatforge.settings import get_settings

app = get_celery()

import workers.files
import workers.tasks  # noqa: F401  (registers the tasks on `app`)

log = logging.getLogger("chatforge.worker")
_stop = threading.Event()


@signals.worker_ready.connect
def _start_background(sender=None, **_):
    from workers.reconcile import reconcile_forever
    from workers.supervisor import keep_spare

    settings = get_settings()
    t = threading.Thread(target=reconcile_forever, args=(settings, _stop), name="reconciler", daemon=True)
    t.start()
    keep_spare(settings)  # the first job's training process, started ahead


@signals.worker_shutdown.connect
def _stop_background(**_):
    from workers.supervisor import drop_spare

    _stop.set()
    drop_spare()
