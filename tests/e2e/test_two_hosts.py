"""Hosts that share nothing but PostgreSQL, Redis and an S3-compatible store (moto's standalone server).

The API and each worker get their own data directory. A file uploaded to the API trains on the worker;
the fine-tuned adapter serves from the API (fetched from the store); a worker killed mid-run is replaced
by a fresh one with an empty data directory that resumes from the newest checkpoint in the store; and a
second API replica answers for the same jobs (retrieve, SSE events, chat)."""

import json
import threading
from pathlib import Path

import boto3
import httpx2 as httpx
import openai
import pytest

from tests.api.test_jobs import TERMINAL, wait_status, wait_step
from tests.conftest import FAST_JOBS
from tests.support.data import sft_rows, write_jsonl
from tests.support.service import (
    free_port,
    postgres_database,
    redis_database,
    s3_server,
    spawn,
    start_service,
    wait_http,
)
from tests.workers.test_chaos import method, training_children, wait_until

BUCKET_PREFIX = "artifacts"


@pytest.fixture(scope="module")
def hosts(tmp_path_factory, tiny_model_path):
    root = tmp_path_factory.mktemp("hosts")
    with postgres_database() as pg, redis_database(offset=11) as rd, s3_server(root) as s3env:
        # the base model is copied into the store (not linked): the worker host fetches it from there
        svc = start_service(root / "api-host", pg, rd, workers=0, models={"tiny-llama": tiny_model_path},
                            link_models=False, **FAST_JOBS, **s3env)
        replica = None
        try:
            svc.start_worker(data_dir=root / "worker-host-1")
            port = free_port()
            replica_env = dict(svc.env, CHATFORGE_DATA_DIR=str(root / "replica-host"))
            (root / "replica-host").mkdir()
            replica = spawn(replica_env, ["serve", "--no-worker", "--skip-model", "--port", str(port)],
                            root / "replica-host" / "api.log")
            wait_http(f"http://127.0.0.1:{port}/health", replica)
            yield svc, f"http://127.0.0.1:{port}", root, s3env
        finally:
            if replica is not None:
                replica.stop()
            svc.stop()


@pytest.fixture(scope="module")
def key(hosts):
    return hosts[0].key("twohosts")


@pytest.fixture(scope="module")
def client(hosts, key):
    return openai.OpenAI(base_url=hosts[0].v1, api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def replica_client(hosts, key):
    return openai.OpenAI(base_url=hosts[1] + "/v1", api_key=key, max_retries=0, timeout=120)


def _store_keys(s3env: dict, prefix: str) -> set[str]:
    s3 = boto3.client("s3", endpoint_url=s3env["AWS_ENDPOINT_URL"], aws_access_key_id=s3env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=s3env["AWS_SECRET_ACCESS_KEY"], region_name=s3env["AWS_DEFAULT_REGION"])
    bucket = s3env["CHATFORGE_STORAGE_URL"].split("/")[2]
    out = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{BUCKET_PREFIX}/{prefix}"):
        out.update(o["Key"][len(BUCKET_PREFIX) + 1:] for o in page.get("Contents", []))
    return out


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def _chat(c: openai.OpenAI, model: str) -> str:
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}],
                                  max_tokens=5, temperature=0)
    assert r.model == model
    return r.choices[0].message.content


def test_upload_on_api_trains_on_worker_and_serves_from_api(hosts, client, replica_client, tmp_path):
    _, _, root, s3env = hosts
    f = client.files.create(file=write_jsonl(tmp_path / "t.jsonl", sft_rows(16)).open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, method=method(6, 3))
    job = wait_status(client, job.id, TERMINAL, timeout=400)
    assert job.status == "succeeded", job.error

    # every artifact is in the store: the upload, its canonical form, the base model, checkpoints, the
    # adapter, the metrics file; no host has a storage folder of its own
    keys = _store_keys(s3env, "")
    assert f"files/{f.id}/raw" in keys
    assert "models/base/tiny-llama/.chatforge-manifest.json" in keys
    assert f"jobs/{job.id}/model/.chatforge-manifest.json" in keys
    assert f"jobs/{job.id}/checkpoints/checkpoint-6/.chatforge-manifest.json" in keys
    assert f"files/{job.result_files[0]}/raw" in keys
    for host in ("api-host", "worker-host-1"):
        assert not _files_under(root / host / "storage"), host
    # the worker trained in its scratch folder and emptied it once all was published; the API never trained
    assert (root / "worker-host-1" / "scratch" / "jobs").is_dir()
    assert not (root / "worker-host-1" / "scratch" / "jobs" / job.id).exists()
    assert not (root / "api-host" / "scratch" / "jobs").exists()

    answer = _chat(client, job.fine_tuned_model)  # the API fetches the adapter from the store
    cached = [json.loads(p.read_text())["key"] for p in (root / "api-host" / "cache").glob("*/meta.json")]
    assert f"jobs/{job.id}/model" in cached and "models/base/tiny-llama" in cached

    # the replica (a third data directory) answers for the same job and model
    again = replica_client.fine_tuning.jobs.retrieve(job.id)
    assert (again.status, again.fine_tuned_model) == ("succeeded", job.fine_tuned_model)
    assert _chat(replica_client, job.fine_tuned_model) == answer  # same adapter, greedy: same reply
    content = replica_client.files.content(job.result_files[0]).read().decode()
    assert content.startswith("step,train_loss")


def _stream_events(base_url: str, key: str, job_id: str, out: list[dict], done: threading.Event) -> None:
    try:
        with httpx.stream("GET", f"{base_url}/v1/fine_tuning/jobs/{job_id}/events",
                          params={"stream": "true"}, headers={"Authorization": f"Bearer {key}"},
                          timeout=httpx.Timeout(30, read=600)) as r:
            event = None
            for line in r.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    out.append({"event": event, "data": json.loads(line.split(":", 1)[1])})
                    if event == "done":
                        return
    finally:
        done.set()


def test_killed_worker_resumes_on_a_fresh_host_from_the_store(hosts, client, replica_client, key, tmp_path):
    svc, replica_url, root, s3env = hosts
    f = client.files.create(file=write_jsonl(tmp_path / "t.jsonl", sft_rows(24)).open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, method=method(24, 4))
    streamed: list[dict] = []
    stream_done = threading.Event()
    threading.Thread(target=_stream_events, args=(replica_url, key, job.id, streamed, stream_done),
                     daemon=True).start()  # the events stream from the other replica

    wait_step(client, job.id, 9)  # checkpoints at 4 and 8 are published
    wait_until(lambda: f"jobs/{job.id}/checkpoints/checkpoint-8/.chatforge-manifest.json"
               in _store_keys(s3env, f"jobs/{job.id}/"), what="checkpoint-8 in the store", timeout=60)
    assert training_children(job.id, svc=svc)
    svc.workers[0].kill9()
    wait_until(lambda: not training_children(job.id, svc=svc), what="the training child to die with its worker")
    fresh = root / "worker-host-2"
    svc.start_worker(data_dir=fresh)  # an empty data directory: all it has is the store

    job = wait_status(client, job.id, TERMINAL, timeout=400)
    assert job.status == "succeeded", job.error
    events = list(reversed(client.fine_tuning.jobs.list_events(job.id, limit=1000).data))  # oldest first
    messages = [e.message for e in events]
    assert any("Resuming from the last checkpoint" in m for m in messages)
    resumed = next(i for i, e in enumerate(events) if "Resuming from the last checkpoint" in e.message)
    after = [e.data["step"] for e in events[resumed:] if e.type == "metrics"]
    # the fresh worker continued right after a checkpoint it pulled from the store (8 or a later one, if the kill
    # landed after the next was published), not from step 1, and went on step by step to the end
    assert after and after[0] > 8 and (after[0] - 1) % 4 == 0, after
    assert after == list(range(after[0], 25)), after
    before = {e.data["step"] for e in events[:resumed] if e.type == "metrics"}
    assert set(range(1, after[0])) <= before, sorted(before)
    store = _store_keys(s3env, f"jobs/{job.id}/")
    assert f"jobs/{job.id}/model/.chatforge-manifest.json" in store
    published = {k.split("/")[3] for k in store if "/checkpoints/" in k}
    # six checkpoints were written; the store keeps the newest three (keep_checkpoints), as a local disk would
    assert published == {"checkpoint-16", "checkpoint-20", "checkpoint-24"}
    assert not (fresh / "scratch" / "jobs" / job.id).exists()  # scratch emptied after publishing

    assert stream_done.wait(60)
    kinds = [e["event"] for e in streamed]
    assert kinds[-1] == "done" and streamed[-1]["data"]["status"] == "succeeded"
    streamed_messages = [e["data"]["message"] for e in streamed if e["event"] == "event"]
    assert any("Resuming from the last checkpoint" in m for m in streamed_messages)
    assert sum(1 for m in streamed_messages if m.startswith("Step ")) >= 24

    # created on one replica, retrieved and chatted with on the other
    assert replica_client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model == job.fine_tuned_model
    ckpts = replica_client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert ckpts
    assert isinstance(_chat(replica_client, job.fine_tuned_model), str)
    assert isinstance(_chat(replica_client, ckpts[0].fine_tuned_model_checkpoint), str)  # from the store
