"""Hostile inputs against a real server: each is a clear 4xx naming what and where, stores nothing (the
file list and the storage folder are unchanged) and leaves the service healthy."""

from __future__ import annotations

import gzip
import json
import socket
import time
import uuid

import httpx2 as httpx
import pytest

from chatforge.settings import Settings
from tests.conftest import IDLE_CLOSE_S
from tests.support.data import preference_rows, prompt_rows, sft_rows, write_jsonl

CHAT = [{"role": "user", "content": "hi"}]


def _auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def _stored(service) -> set[str]:
    root = service.data_dir / "storage" / "files"
    return {p.name for p in root.iterdir()} if root.exists() else set()


def _healthy(service) -> None:
    assert httpx.get(f"{service.base_url}/health", timeout=10).json() == {"status": "ok"}


def _error(r: httpx.Response, status: int = 400) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def _upload(service, key: str, content: bytes, filename: str = "data.jsonl", **form: str | bytes) -> httpx.Response:
    """POST /v1/files with a multipart body built by hand, so the file name and fields go out byte for
    byte (clients percent-encode what this test means to send raw)."""
    boundary = uuid.uuid4().hex.encode()
    parts = [b'Content-Disposition: form-data; name="%s"\r\n\r\n%s' % (k.encode(), v if isinstance(v, bytes)
                                                                         else v.encode())
             for k, v in {"purpose": "fine-tune", **form}.items()]
    parts.append(b'Content-Disposition: form-data; name="file"; filename="%s"\r\n'
                 b"Content-Type: application/octet-stream\r\n\r\n%s" % (filename.encode(), content))
    body = b"".join(b"--%s\r\n%s\r\n" % (boundary, p) for p in parts) + b"--%s--\r\n" % boundary
    return httpx.post(f"{service.v1}/files", content=body, timeout=120, headers={
        **_auth(key), "Content-Type": f"multipart/form-data; boundary={boundary.decode()}"})


def _refused(service, key: str, content: bytes, filename: str = "data.jsonl", status: int = 400, **form) -> dict:
    """Upload `content`, expect `status`, and check nothing was stored and the service is healthy."""
    files_before = [f["id"] for f in httpx.get(f"{service.v1}/files", headers=_auth(key)).json()["data"]]
    stored_before = _stored(service)
    err = _error(_upload(service, key, content, filename, **form), status)
    assert [f["id"] for f in httpx.get(f"{service.v1}/files", headers=_auth(key)).json()["data"]] == files_before
    assert _stored(service) == stored_before
    _healthy(service)
    return err


# -- uploads ---------------------------------------------------------------------------------------------


def test_gzip_bomb_is_refused_by_ratio(service, key_a):
    line = (json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
            + "\n").encode()
    bomb = gzip.compress(line * 2_000_000, 9)  # ~100 MB of text in ~200 KB
    err = _refused(service, key_a, bomb, "bomb.jsonl.gz")
    assert err["param"] == "file" and "bomb.jsonl.gz" in err["message"]
    assert "gzip data expands more than 100 times" in err["message"]


def test_gzip_bomb_over_the_sync_limit_is_refused_at_upload(service, key_a):
    """A bomb larger than what is validated in the request is still refused there (head check)."""
    member = gzip.compress(b" " * (64 << 20), 9)  # 64 MiB of spaces in ~64 KB
    bomb = gzip.compress(b"[", 9) + member * 300  # ~19 MB compressed, ~19 GiB of text
    assert len(bomb) > 16 * 1024 * 1024
    err = _refused(service, key_a, bomb, "big.json.gz")
    assert "decompression bomb" in err["message"]


def test_zip_bomb_is_refused(service, key_a, tmp_path):
    import zipfile

    p = tmp_path / "bomb.zip"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("data/state.json", "{}")
        z.writestr("data/data-00000-of-00001.arrow", b"\0" * (200 << 20))
    err = _refused(service, key_a, p.read_bytes(), "bomb.zip")
    assert "archive unpacks to" in err["message"]


@pytest.mark.parametrize("suffix", ["json", "jsonl"])
def test_json_nested_fifty_thousand_levels(service, key_a, suffix):
    deep = "[" * 50_000 + "]" * 50_000
    body = f"[{deep}]" if suffix == "json" else json.dumps(sft_rows(1)[0]) + "\n" + '{"messages": ' + deep + "}\n"
    err = _refused(service, key_a, body.encode(), f"deep.{suffix}")
    assert "nested too deeply" in err["message"]
    assert ("record 1 (line 1)" if suffix == "json" else "line 2") in err["message"]


@pytest.mark.parametrize("container", ["jsonl", "json", "csv"])
def test_single_50_mb_line_is_refused_quickly(service, key_a, container):
    text = "x" * (50 << 20)
    body = {"jsonl": json.dumps({"messages": [{"role": "user", "content": text}]}),
            "json": "[" + json.dumps({"messages": [{"role": "user", "content": text}]}) + "]",
            "csv": "prompt,completion\nhi," + text}[container]
    start = time.monotonic()
    err = _refused(service, key_a, body.encode(), f"long.{container}")
    assert time.monotonic() - start < 60  # loose: tokenizing it took minutes
    assert "larger than 4 MiB" in err["message"]
    assert {"jsonl": "line 1", "json": "record 1 (line 1)", "csv": "line 2"}[container] in err["message"]


def test_long_line_after_good_lines_fails_in_the_worker(service, key_a, client_a):
    """Past the head check, a long line is found by the worker: the file ends "error" naming the line."""
    row = {"messages": [{"role": "user", "content": "tell me " * 120}, {"role": "assistant", "content": "ok"}]}
    n_good = 17 * 1024 * 1024 // len(json.dumps(row))  # just over the size validated in the request
    good = (json.dumps(row) + "\n").encode() * n_good
    good += json.dumps({"messages": [{"role": "user", "content": "y" * (5 << 20)}]}).encode() + b"\n"
    r = _upload(service, key_a, good, "late.jsonl")
    assert r.status_code == 200, r.text
    fid = r.json()["id"]
    end = time.monotonic() + 120
    while (f := client_a.files.retrieve(fid)).status == "uploaded" and time.monotonic() < end:
        time.sleep(0.5)
    assert f.status == "error", f
    assert f"line {n_good + 1}" in f.status_details and "larger than 4 MiB" in f.status_details
    client_a.files.delete(fid)
    _healthy(service)


def test_bad_utf8_and_nul_bytes_in_file_content(service, key_a):
    rows = [json.dumps(r).encode() for r in sft_rows(12)]
    bad = rows.copy()
    bad[2] = bad[2].replace(b"What", b"Wh\xffat")
    assert "line 3" in (m := _refused(service, key_a, b"\n".join(bad))["message"]) and "UTF-8" in m
    nul = rows.copy()
    nul[4] = nul[4].replace(b"What", b"Wh\x00at")
    assert "line 5" in (m := _refused(service, key_a, b"\n".join(nul))["message"]) and "NUL" in m
    escaped = rows.copy()  # a JSON \u0000 escape is text, not binary: it must not break the database
    escaped[1] = escaped[1].replace(b'"messages"', b'"mess\\u0000ages"')
    assert "line 2" in _refused(service, key_a, b"\n".join(escaped))["message"]


def test_bad_text_in_upload_form_fields(service, key_a):
    good = b"".join(json.dumps(r).encode() + b"\n" for r in sft_rows(12))
    assert _refused(service, key_a, good, purpose="fine-tune\x00")["param"] == "purpose"
    assert _refused(service, key_a, good, format="openai_chat\x00")["param"] == "format"
    assert _refused(service, key_a, good, purpose=b"fine-\xfftune")["param"] == "purpose"


@pytest.mark.parametrize("name, shown", [
    ("../../etc/passwd", "passwd"), ("..\\..\\win.ini", "win.ini"), ("a\x00b\x1b[31m\x7f\t.jsonl", "ab[31m.jsonl"),
    ("evil\u202egpj.jsonl", "evilgpj.jsonl"), ("...", "upload"), ("données\u200b.jsonl", "données.jsonl"),
])
def test_file_names_with_path_tricks_and_control_characters(service, key_a, name, shown):
    good = b"".join(json.dumps(r).encode() + b"\n" for r in sft_rows(12))
    r = _upload(service, key_a, good, name)
    assert r.status_code == 200, r.text
    f = r.json()
    assert f["filename"] == shown
    got = httpx.get(f"{service.v1}/files/{f['id']}/content", headers=_auth(key_a))
    assert got.status_code == 200 and got.content == good
    disposition = got.headers["content-disposition"]
    assert "\r" not in disposition and "\n" not in disposition and disposition.count('"') == 2
    assert (service.data_dir / "storage" / "files" / f["id"] / "raw").exists()
    httpx.delete(f"{service.v1}/files/{f['id']}", headers=_auth(key_a))


def test_download_header_survives_any_stored_name():
    from api.routes.files import content_disposition

    header = content_disposition('données "x"\\y.jsonl')
    assert header.encode("latin-1").isascii() and header.count('"') == 2
    assert header.endswith("filename*=UTF-8''donn%C3%A9es%20%22x%22%5Cy.jsonl")


def test_bad_text_in_upload_api_fields(service, key_a):
    body = b'{"bytes": 10, "filename": "../x\\u0000.jsonl", "mime_type": "text/plain\\u0000\\ud800"}'
    r = httpx.post(f"{service.v1}/uploads", headers={**_auth(key_a), "Content-Type": "application/json"},
                   content=body)
    assert r.status_code == 200, r.text
    assert r.json()["filename"] == "x.jsonl"
    r = httpx.post(f"{service.v1}/uploads", headers={**_auth(key_a), "Content-Type": "application/json"},
                   content=b'{"bytes": 10, "filename": "\xff\xfe.jsonl", "purpose": "fine-tune"}')
    assert _error(r)["message"]
    _healthy(service)


# -- the HTTP server -------------------------------------------------------------------------------------


def test_huge_headers_are_refused(service):
    """A request head past 32 KiB is answered 431 and the connection closed."""
    host, port = service.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (40 << 10))
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    assert got.startswith(b"HTTP/1.1 431"), got[:200]
    _healthy(service)


HTTPX_POOL_EXPIRY_S = httpx.Limits().keepalive_expiry


def test_the_default_keep_alive_outlasts_client_connection_pools():
    assert Settings().http_keep_alive_seconds > max(HTTPX_POOL_EXPIRY_S, 15, 60)  # httpx, aiohttp, nginx


def test_slow_client_does_not_block_others_and_idle_connections_close(service):
    host, port = service.base_url.removeprefix("http://").split(":")
    slow = socket.create_connection((host, int(port)))
    idle = socket.create_connection((host, int(port)))
    try:
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # ... and never finishes the head
        for _ in range(3):
            _healthy(service)
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        idle.settimeout(30)
        first = b""
        while b"}" not in first:  # the head and the JSON body, maybe in two reads
            first += idle.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        # idle for longer than httpx and the openai SDK keep a pooled connection (5 s), still open: a client
        # never reuses a connection the server is closing at that very moment
        time.sleep(HTTPX_POOL_EXPIRY_S + 1)
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        start = time.monotonic()
        while chunk := idle.recv(65536):  # the response, then the keep-alive timeout closes it
            got += chunk
        assert got.startswith(b"HTTP/1.1 200")
        assert time.monotonic() - start >= IDLE_CLOSE_S - 1
    finally:
        slow.close()
        idle.close()
    _healthy(service)


# -- chat ------------------------------------------------------------------------------------------------


def test_prompt_longer_than_the_context(service, key_a):
    huge = [{"role": "user", "content": "hello " * 200_000}]
    r = httpx.post(f"{service.v1}/chat/completions", headers=_auth(key_a), timeout=120,
                   json={"model": "tiny-llama", "messages": huge, "max_tokens": 4})
    err = _error(r)
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages"
    _healthy(service)


@pytest.mark.parametrize("patch, param", [
    ({"n": 9}, "n"), ({"n": 0}, "n"), ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": 10**12}, "max_tokens"),
    ({"max_completion_tokens": 2**63}, "max_completion_tokens"), ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"top_logprobs": -1, "logprobs": True}, "top_logprobs"), ({"messages": [{"role": "user", "content": "a\u0000"}] * 0},
                                                               "messages"),
])
def test_chat_parameters_past_their_limits(service, key_a, patch, param):
    r = httpx.post(f"{service.v1}/chat/completions", headers=_auth(key_a), timeout=120,
                   json={"model": "tiny-llama", "messages": CHAT, **patch})
    err = _error(r)
    assert err["param"] == param, err
    _healthy(service)


def test_chat_parameters_at_their_limits(service, key_a):
    r = httpx.post(f"{service.v1}/chat/completions", headers=_auth(key_a), timeout=300, json={
        "model": "tiny-llama", "messages": [{"role": "user", "content": "a\u0000b"}], "n": 8, "max_tokens": 2,
        "logprobs": True, "top_logprobs": 20, "temperature": 2})
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert len(choices) == 8 and all(len(c["logprobs"]["content"][0]["top_logprobs"]) == 20 for c in choices)


def test_json_body_nested_deeply(service, key_a):
    body = '{"model": "tiny-llama", "messages": ' + "[" * 50_000 + "]" * 50_000 + "}"
    r = httpx.post(f"{service.v1}/chat/completions", timeout=60,
                   headers={**_auth(key_a), "Content-Type": "application/json"}, content=body)
    assert 400 <= r.status_code < 500, r.text
    _healthy(service)


# -- another project's ids -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def a_ids(service, client_a, tmp_path_factory) -> dict:
    """Project A's files (fine-tune and evals) and a fine-tuned model row, as project B must never see them."""
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from chatforge.db.models import Model, Project

    d = tmp_path_factory.mktemp("hostile")
    train = client_a.files.create(file=write_jsonl(d / "a.jsonl", sft_rows(12)).open("rb"), purpose="fine-tune")
    items = write_jsonl(d / "items.jsonl", [{"item": {"question": f"q{i}"}} for i in range(3)])
    evals = client_a.files.create(file=items.open("rb"), purpose="evals")
    model_id = f"ft:tiny-llama:hostile:{uuid.uuid4().hex[:8]}"
    db = create_engine(service.env["CHATFORGE_DATABASE_URL"])
    with Session(db) as s:
        project = s.scalar(select(Project).where(Project.name == "project-a"))
        for mid, kind in ((model_id, "fine_tuned"), (model_id + ":rm", "reward_model")):
            s.add(Model(id=mid, project_id=project.id, kind=kind, parent="tiny-llama", root="tiny-llama",
                        storage_key=f"test/{mid}", settings={}))
        s.commit()
    db.dispose()
    return {"file": train.id, "evals_file": evals.id, "model": model_id, "reward_model": model_id + ":rm"}


def test_another_projects_ids_are_404_in_every_field(service, key_b, a_ids):
    f, ef, m, rm = a_ids["file"], a_ids["evals_file"], a_ids["model"], a_ids["reward_model"]
    own = "tiny-llama"
    sup = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}}
    eval_body = {"name": "e", "data_source_config": {"type": "custom", "item_schema": {
        "type": "object", "properties": {"question": {"type": "string"}}}}, "testing_criteria": [
        {"type": "string_check", "name": "s", "operation": "eq", "input": "{{item.question}}", "reference": "x"}]}
    r = httpx.post(f"{service.v1}/evals", headers=_auth(key_b), json=eval_body)
    assert r.status_code == 200, r.text
    eval_id = r.json()["id"]
    template = [{"role": "user", "content": "{{item.question}}"}]
    b_file = httpx.post(f"{service.v1}/files", headers=_auth(key_b), data={"purpose": "fine-tune"}, files={
        "file": ("b.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in sft_rows(12)))}).json()["id"]
    b_prompts = httpx.post(f"{service.v1}/files", headers=_auth(key_b), data={"purpose": "fine-tune"}, files={
        "file": ("p.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in prompt_rows(12)))}).json()["id"]
    cases = [
        ("fine_tuning/jobs", {"model": m, "training_file": b_file, "method": sup}, "model"),
        ("fine_tuning/jobs", {"model": own, "training_file": f, "method": sup}, "training_file"),
        ("fine_tuning/jobs", {"model": own, "training_file": b_file, "validation_file": f, "method": sup},
         "validation_file"),
        ("chat/completions", {"model": m, "messages": CHAT}, "model"),
        ("completions", {"model": m, "prompt": "hi"}, "model"),
        ("rewards", {"model": rm, "items": [{"messages": CHAT}]}, "model"),
        ("fine_tuning/pipelines", {"model": m, "sft_file": b_file, "preference_file": b_file,
                                   "prompts_file": b_file}, "model"),
        (f"evals/{eval_id}/runs", {"data_source": {"type": "completions", "model": m, "input_messages": {
            "type": "template", "template": template}, "source": {"type": "file_content", "content": [
            {"item": {"question": "q"}}]}}}, "data_source.model"),
        (f"evals/{eval_id}/runs", {"data_source": {"type": "jsonl", "source": {"type": "file_id", "id": ef}}},
         "data_source.source.id"),
        ("evals", {**eval_body, "testing_criteria": [{"type": "reward_model", "name": "r", "model": rm}]},
         "testing_criteria[0].model"),
        ("responses", {"model": m, "input": "hi"}, "model"),
        *((("fine_tuning/jobs", {"model": own, "training_file": b_prompts, "method": {
            "type": rl, rl: {"reward_model": rm}}}, f"method.{rl}.reward_model")) for rl in ("ppo", "rloo", "grpo")),
    ]
    jobs_before = httpx.get(f"{service.v1}/fine_tuning/jobs", headers=_auth(key_b)).json()["data"]
    for path, body, param in cases:
        r = httpx.post(f"{service.v1}/{path}", headers=_auth(key_b), json=body, timeout=60)
        err = _error(r, 404)
        assert err["param"] == param, (path, param, err)
        assert m not in err["message"] or "does not exist" in err["message"]
    assert httpx.get(f"{service.v1}/fine_tuning/jobs", headers=_auth(key_b)).json()["data"] == jobs_before
    _healthy(service)


def test_another_projects_file_in_a_pipeline_names_the_pipeline_field(service, key_b, a_ids):
    def upload(rows):
        return httpx.post(f"{service.v1}/files", headers=_auth(key_b), data={"purpose": "fine-tune"}, files={
            "file": ("b.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in rows))}).json()["id"]

    own = {"sft_file": upload(sft_rows(12)), "preference_file": upload(preference_rows(12)),
           "prompts_file": upload(prompt_rows(12))}
    for field in own:
        body = {"model": "tiny-llama", **own, field: a_ids["file"]}
        err = _error(httpx.post(f"{service.v1}/fine_tuning/pipelines", headers=_auth(key_b), json=body), 404)
        assert err["param"] == field, err


def test_problem_text_quoting_user_keys_holds_no_nul(tmp_path):
    """status_details (a text column) quotes record keys: a JSON \\u0000 in one must not reach the database."""
    from ml.data import inspect_file

    p = write_jsonl(tmp_path / "k.jsonl", [{"a\u0000b": i} for i in range(12)])
    summary = inspect_file(p).summary()
    assert "a\\x00b" in summary and "\x00" not in summary
