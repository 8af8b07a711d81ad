"""Schemathesis fuzzing of every route in ChatForge's OpenAPI document against a real running service
(uvicorn + PostgreSQL + Redis + a Celery worker, over HTTP), authenticated as a real project: no case may
get a 5xx, and every response must match the documented schema and status codes (OpenAI's error shape).

Bounded work: `POST /v1/files/import` reads a dataset that names a server path (a folder such as "."
is scanned until the route's 60 s timeout), so a generated `dataset` naming an existing path is swapped for
a hub id, which fails at once offline. Generation routes run on the tiny random Llama, and a case that names it has its token
budget clamped (max_tokens <= 4, n <= 2) so no case runs long. Nothing is excluded; fine-tuning jobs and
pipelines the fuzzer manages to create are cancelled at the end. Generation is derandomized (the same
cases every run) with no example database, so CI is reproducible.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import httpx2 as httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.support.data import sft_rows
from tests.support.service import ROOT

MIN_CASES = 2000
CASES: Counter[str] = Counter()  # cases run per operation
GENERATION = {"POST /v1/chat/completions": ("max_tokens", "max_completion_tokens"),
              "POST /v1/completions": ("max_tokens",), "POST /v1/responses": ("max_output_tokens",)}
FUZZ_MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def fuzz_key(service) -> str:
    return service.key("fuzz")


@pytest.fixture(scope="module")
def real_ids(service, fuzz_key) -> dict[str, list[str]]:
    """Objects the fuzzed project owns, so path parameters reach past the 404 sometimes."""
    auth = {"Authorization": f"Bearer {fuzz_key}"}
    data = "".join(json.dumps(r) + "\n" for r in sft_rows(12)).encode()
    f = httpx.post(f"{service.v1}/files", headers=auth, data={"purpose": "fine-tune"},
                   files={"file": ("train.jsonl", io.BytesIO(data))}, timeout=120)
    u = httpx.post(f"{service.v1}/uploads", headers=auth, timeout=60,
                   json={"bytes": 10, "filename": "big.jsonl", "purpose": "fine-tune"})
    assert f.status_code == u.status_code == 200, (f.text, u.text)
    return {"file_id": [f.json()["id"]], "upload_id": [u.json()["id"]], "model_id": [FUZZ_MODEL]}


@pytest.fixture(scope="module")
def fuzz_schema(service, fuzz_key, real_ids):
    schema = schemathesis.openapi.from_url(f"{service.base_url}/openapi.json")

    @schema.hook
    def flatmap_path_parameters(ctx, path_parameters):
        """Now and then a real id of this project in place of a generated one."""
        real = {k: v for k, v in (path_parameters or {}).items() if k in real_ids}
        if not real:
            return st.just(path_parameters)
        return st.one_of(st.just(path_parameters),
                         st.fixed_dictionaries({k: st.sampled_from(real_ids[k]) for k in real})
                         .map(lambda r: {**path_parameters, **r}))

    @schema.hook
    def flatmap_body(ctx, body):
        """Generation cases sometimes name the served tiny model (test_fuzz_every_route bounds their work)."""
        if f"{ctx.operation.method.upper()} {ctx.operation.path}" not in GENERATION or not isinstance(body, dict):
            return st.just(body)
        return st.sampled_from([body, dict(body, model=FUZZ_MODEL)])

    yield schema
    auth = {"Authorization": f"Bearer {fuzz_key}"}
    for kind in ("jobs", "pipelines"):
        listing = httpx.get(f"{service.v1}/fine_tuning/{kind}?limit=100", headers=auth, timeout=60).json()
        for obj in listing.get("data", []):
            if obj.get("status") not in ("succeeded", "failed", "cancelled"):
                httpx.post(f"{service.v1}/fine_tuning/{kind}/{obj['id']}/cancel", headers=auth, timeout=60)


schema = schemathesis.pytest.from_fixture("fuzz_schema")


def _bound(op: str, case) -> None:
    """Keep every case's work small (see the module docstring); applied to cases of every phase."""
    body = case.body
    if not isinstance(body, dict):
        return
    dataset = body.get("dataset")
    if op == "POST /v1/files/import" and isinstance(dataset, str) and (ROOT / Path(dataset).expanduser()).exists():
        body["dataset"] = "nobody/no-such-dataset"
    if op in GENERATION and body.get("model") == FUZZ_MODEL:
        for k in GENERATION[op]:
            body[k] = min(body[k], 4) if isinstance(body.get(k), int) and body[k] > 0 else 4
        if isinstance(body.get("n"), int):
            body["n"] = max(1, min(body["n"], 2))


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request):
    """schemathesis 4.32 renames the running test through `node._nodeid`, which pytest 9.2 no longer has."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_fuzz_every_route(case, fuzz_key):
    """No 5xx, and the status code and body are the documented ones."""
    op = f"{case.operation.method.upper()} {case.operation.path}"
    CASES[op] += 1
    _bound(op, case)
    case.call_and_validate(headers={"Authorization": f"Bearer {fuzz_key}"}, timeout=120,
                           checks=[not_a_server_error, response_schema_conformance, status_code_conformance])


def test_fuzz_ran_enough_cases(fuzz_schema):
    """Every documented operation was fuzzed, {MIN_CASES} cases at least."""
    if not CASES:
        pytest.skip("the fuzz test did not run in this session")
    operations = {f"{r.ok().method.upper()} {r.ok().path}" for r in fuzz_schema.get_all_operations()}
    assert operations <= set(CASES), sorted(operations - set(CASES))
    assert sum(CASES.values()) >= MIN_CASES, dict(CASES)


@pytest.mark.parametrize("text", ["tiny\x00llama", "tiny\udaebllama"], ids=["nul", "lone-surrogate"])
def test_unstorable_text_is_a_400_not_a_500(service, fuzz_key, text):
    """Valid JSON the database cannot take (a NUL, an unpaired surrogate), found by the fuzzer."""
    body = json.dumps({"model": text, "training_file": "file-x"}).encode()  # ensure_ascii: \\u escapes
    r = httpx.post(f"{service.v1}/fine_tuning/jobs", content=body, timeout=60,
                   headers={"Authorization": f"Bearer {fuzz_key}", "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["code"] == "invalid_value"


def test_error_types_follow_the_status():
    """A 5xx is a server error (never invalid_request_error); named error classes keep their type."""
    from api.errors import APIError, NotFound, RateLimited, Unavailable

    assert APIError("boom", status=500).body()["error"]["type"] == "server_error"
    assert APIError("busy", status=429).body()["error"]["type"] == "rate_limit_error"
    assert APIError("bad").body()["error"]["type"] == "invalid_request_error"
    assert NotFound("gone").body()["error"]["type"] == "not_found_error"
    assert RateLimited("slow").body()["error"]["type"] == "rate_limit_error"
    assert Unavailable("down").body()["error"]["type"] == "service_unavailable"
