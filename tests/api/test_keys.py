"""Scoped, expiring keys over real HTTP: what each scope may call, expiry as a clear 401, `keys list` with
scope, expiry and last use (written at most once a minute), and no key material in any service log."""

import time
from datetime import timedelta

import httpx2 as httpx
import openai
import pytest
from sqlalchemy import create_engine, text

from chatforge.keys import allows, parse_duration, parse_size
from tests.support.data import sft_rows, write_jsonl
from tests.support.service import cli

MSG = [{"role": "user", "content": "Say hello to the world."}]


def make_key(service, project: str, *options: str) -> tuple[str, str]:
    """(key id, plaintext) of a new key."""
    out = cli(service.env, "keys", "create", "--project", project, *options).stdout.strip().splitlines()
    return out[0].split(" key ", 1)[1].split()[0], out[-1].strip()


def client(service, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=service.v1, api_key=key, max_retries=0, timeout=120)


def listed(service, key_id: str) -> list[str]:
    row = next(x for x in cli(service.env, "keys", "list").stdout.splitlines() if x.startswith(key_id + "\t"))
    return row.split("\t")


def wait_for(condition, timeout: float = 60, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize(("scope", "method", "path", "allowed"), [
    ("full", "POST", "/v1/files", True),
    ("read-only", "GET", "/v1/files/file-1/content", True),
    ("read-only", "POST", "/v1/chat/completions", False),
    ("read-only", "DELETE", "/v1/files/file-1", False),
    ("inference-only", "POST", "/v1/chat/completions", True),
    ("inference-only", "POST", "/v1/completions", True),
    ("inference-only", "POST", "/v1/responses", True),
    ("inference-only", "GET", "/v1/responses/resp_1/input_items", True),
    ("inference-only", "POST", "/v1/rewards", True),
    ("inference-only", "GET", "/v1/models/ft:tiny:x", True),
    ("inference-only", "DELETE", "/v1/models/ft:tiny:x", False),
    ("inference-only", "GET", "/v1/files", False),
    ("inference-only", "POST", "/v1/fine_tuning/jobs", False),
    ("inference-only", "POST", "/v1/chat/completionsX", False),
    ("unknown", "GET", "/v1/models", False),
])
def test_scope_rules(scope, method, path, allowed):
    assert allows(scope, method, path) is allowed


def test_durations_and_sizes():
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("1d12h") == timedelta(hours=36)
    assert parse_duration("3600") == timedelta(hours=1)
    assert parse_size("10G") == 10 * 1024**3 and parse_size("2048") == 2048 and parse_size("1KiB") == 1024
    for bad in ("", "1y", "d", "0s", "-5m"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError):
        parse_size("ten")


def test_read_only_key_reads_but_writes_nothing(service, tmp_path):
    _, key = make_key(service, "ro", "--scope", "read-only")
    c = client(service, key)
    assert c.models.list().data and c.files.list().data == []
    with pytest.raises(openai.PermissionDeniedError) as e:
        c.files.create(file=write_jsonl(tmp_path / "x.jsonl", sft_rows(12)).open("rb"), purpose="fine-tune")
    assert e.value.code == "insufficient_scope" and "read-only" in e.value.message
    with pytest.raises(openai.PermissionDeniedError):
        c.chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=2)


def test_inference_only_key_chats_but_sees_no_files_or_jobs(service):
    _, key = make_key(service, "inf", "--scope", "inference-only")
    c = client(service, key)
    assert "tiny-llama" in [m.id for m in c.models.list().data]
    r = c.chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=2)
    assert r.choices[0].finish_reason == "length"
    for call in (c.files.list, c.fine_tuning.jobs.list):
        with pytest.raises(openai.PermissionDeniedError):
            call()
    with pytest.raises(openai.PermissionDeniedError):
        c.models.delete("tiny-llama")


def test_expired_key_is_401_saying_it_expired(service):
    key_id, key = make_key(service, "expiring", "--expires-in", "3s")
    assert listed(service, key_id)[6] != "never"

    def refused():
        r = httpx.get(service.v1 + "/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        return r if r.status_code == 401 else None

    r = wait_for(refused, what="the key to expire")
    err = r.json()["error"]
    assert err["code"] == "expired_api_key" and "expired at" in err["message"] and key_id in err["message"]
    assert listed(service, key_id)[3] == "expired"
    with pytest.raises(openai.AuthenticationError):
        client(service, key).models.list()


def test_keys_list_shows_scope_expiry_limits_and_last_use(service, pg_url):
    key_id, key = make_key(service, "listed", "--scope", "inference-only", "--expires-in", "30d",
                           "--rpm", "100", "--max-streams", "3")
    row = listed(service, key_id)
    assert row[2:4] == ["listed", "active"] and row[5] == "inference-only"
    assert row[6].startswith("20") and row[7] == "-" and row[8:10] == ["100", "3"]
    client(service, key).models.list()
    assert listed(service, key_id)[7].startswith("20")

    engine = create_engine(pg_url)
    try:
        def last_used():
            with engine.connect() as conn:
                return conn.execute(text("SELECT last_used_at FROM api_keys WHERE id = :id"), {"id": key_id}).scalar()

        first = last_used()
        for _ in range(3):  # within the minute: no further writes
            client(service, key).models.list()
        assert last_used() == first
        with engine.begin() as conn:  # as if the last use were two minutes ago
            conn.execute(text("UPDATE api_keys SET last_used_at = last_used_at - interval '2 minutes' "
                              "WHERE id = :id"), {"id": key_id})
        client(service, key).models.list()
        assert last_used() > first - timedelta(minutes=2)
    finally:
        engine.dispose()


def test_key_material_never_reaches_the_logs(service, tmp_path):
    key_id, key = make_key(service, "secrets")
    expiring_id, expiring = make_key(service, "secrets", "--expires-in", "1s")
    c = client(service, key)
    c.models.list()
    c.chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=2)
    f = c.files.create(file=write_jsonl(tmp_path / "s.jsonl", sft_rows(12)).open("rb"), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("no-such-model")
    wait_for(lambda: httpx.get(service.v1 + "/models", headers={"Authorization": f"Bearer {expiring}"},
                               timeout=30).status_code == 401, what="the second key to expire")
    for bad in (key + "x", key[:-1], "Bearer " + key):
        assert httpx.get(service.v1 + "/models", headers={"Authorization": f"Bearer {bad}"}).status_code == 401
    cli(service.env, "keys", "revoke", key_id)
    with pytest.raises(openai.AuthenticationError):
        c.files.retrieve(f.id)

    logs = {p: p.read_text(errors="replace") for p in service.data_dir.rglob("*.log")}
    assert any("GET /v1/models" in t for t in logs.values()), "the API log was not found"
    for secret in (key, expiring):
        body = secret.removeprefix("cf-")
        for needle in (secret, body[:16], body[-16:]):
            assert not [p.name for p, t in logs.items() if needle in t], f"key material in {needle!r}"
    assert expiring_id  # its id (not material) may be logged; nothing else of it
