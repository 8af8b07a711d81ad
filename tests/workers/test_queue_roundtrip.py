"""A task round trip through the real broker to a real Celery worker process and back."""

import uuid

import pytest

from chatforge.queue import PING, make_celery
from chatforge.settings import Settings
from tests.support.service import start_service


def _ping(settings: Settings) -> dict:
    app = make_celery(settings)
    nonce = uuid.uuid4().hex
    result = app.send_task(PING, args=[nonce])
    out = result.get(timeout=60)
    assert out["nonce"] == nonce and out["db"] == 1
    return out


def test_redis_roundtrip(service):
    s = Settings(data_dir=service.data_dir, database_url=service.env["CHATFORGE_DATABASE_URL"],
                 broker_url=service.env["CHATFORGE_BROKER_URL"])
    _ping(s)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    svc = start_service(tmp_path_factory.mktemp("embedded"), None, None, workers=1)
    yield svc
    svc.stop()


def test_embedded_roundtrip_without_broker_server(embedded):
    """SQLite + kombu's filesystem transport: no broker server at all."""
    s = Settings(data_dir=embedded.data_dir)
    assert s.embedded_broker and s.db_url.startswith("sqlite")
    _ping(s)
