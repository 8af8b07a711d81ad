"""Auth, errors, operations endpoints and base models over real HTTP (PostgreSQL + Redis + worker)."""

import httpx2 as httpx
import openai
import pytest

from tests.support.service import cli


def test_models_list_in_openai_shape(client_a):
    page = client_a.models.list()
    ids = [m.id for m in page.data]
    assert "smollm2-135m-instruct" in ids and "tiny-llama" in ids
    m = client_a.models.retrieve("smollm2-135m-instruct")
    assert m.object == "model" and m.owned_by == "chatforge"


def test_wrong_and_missing_key_are_401(service):
    bad = openai.OpenAI(base_url=service.v1, api_key="cf-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    r = httpx.get(service.v1 + "/models")
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"


def test_revoked_key_is_401(service):
    key = service.key("project-revoke")
    c = openai.OpenAI(base_url=service.v1, api_key=key, max_retries=0)
    c.models.list()
    listing = cli(service.env, "keys", "list").stdout
    key_id = next(line.split("\t")[0] for line in listing.splitlines() if "project-revoke" in line)
    cli(service.env, "keys", "revoke", key_id)
    with pytest.raises(openai.AuthenticationError):
        c.models.list()


def test_unknown_model_is_404_with_openai_error_body(client_a, service, key_a):
    with pytest.raises(openai.NotFoundError):
        client_a.models.retrieve("no-such-model")
    r = httpx.get(service.v1 + "/models/no-such-model", headers={"Authorization": f"Bearer {key_a}"})
    body = r.json()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["code"] == "model_not_found"


def test_base_models_cannot_be_deleted_through_the_api(client_a):
    with pytest.raises(openai.BadRequestError):
        client_a.models.delete("tiny-llama")


def test_health_ready_metrics(service):
    assert httpx.get(service.base_url + "/health").json() == {"status": "ok"}
    ready = httpx.get(service.base_url + "/ready").json()
    assert ready["checks"] == {"database": "ok", "broker": "ok"}
    text = httpx.get(service.base_url + "/metrics").text
    assert "chatforge_http_requests_total" in text and 'chatforge_jobs{status="running"}' in text
