"""Large uploads are validated on a worker: answered at once with status "uploaded", then "processed"
or "error" naming the line and field; jobs created meanwhile wait in validating_files, then start or
fail with the file's message. Real API server, PostgreSQL, Redis and Celery worker."""

import json
import random
import time

import pytest

from tests.api.test_jobs import TERMINAL, lora, wait_status

MB = 1024 * 1024


def write_big(path, mb, bad_last=False):
    """About `mb` MB of distinct chats; with bad_last the last line has a wrong role."""
    rnd = random.Random(1)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "mu", "pi"]
    n = 0
    with open(path, "w") as f:
        while f.tell() < mb * MB:
            row = {"messages": [{"role": "user", "content": f"Q{n}: " + " ".join(rnd.choices(words, k=40))},
                                {"role": "assistant", "content": " ".join(rnd.choices(words, k=60))}]}
            f.write(json.dumps(row) + "\n")
            n += 1
        if bad_last:
            f.write(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "bot", "content": "hello"}]}) + "\n")
            n += 1
    return n


def wait_file(client, file_id, timeout=600):
    end = time.monotonic() + timeout
    seen = set()
    while time.monotonic() < end:
        f = client.files.retrieve(file_id)
        seen.add((f.status, (f.model_extra or {}).get("progress")))
        if f.status in ("processed", "error"):
            return f, seen
        time.sleep(0.5)
    raise AssertionError(f"file {file_id} still {f.status}")


@pytest.fixture(scope="module")
def big_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("big") / "big.jsonl"
    return p, write_big(p, 40)


def test_large_upload_is_answered_uploaded_then_processed(client_a, big_path):
    path, n = big_path
    f = client_a.files.create(file=path.open("rb"), purpose="fine-tune")
    assert f.status == "uploaded" and f.bytes == path.stat().st_size and f.model_extra["n_examples"] is None
    f, seen = wait_file(client_a, f.id)
    assert f.status == "processed", f.status_details
    assert f.model_extra["n_examples"] == n and f.model_extra["format"] == "openai_chat"
    assert f.model_extra["report"]["token_stats"]["n"] == n
    assert any(s == "uploaded" for s, _ in seen)


def test_large_upload_with_a_bad_last_line_becomes_error_and_its_job_fails(client_a, tmp_path):
    path = tmp_path / "bad.jsonl"
    n = write_big(path, 40, bad_last=True)
    f = client_a.files.create(file=path.open("rb"), purpose="fine-tune")
    assert f.status == "uploaded"
    job = client_a.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, method=lora())
    assert job.status == "validating_files"  # 40 MB take the worker many seconds
    f, _ = wait_file(client_a, f.id)
    assert f.status == "error"
    assert f"line {n}" in f.status_details and "messages[1].role" in f.status_details
    job = wait_status(client_a, job.id, TERMINAL, timeout=120)
    assert job.status == "failed" and f"line {n}" in job.error.message and job.error.code == "invalid_file"
    # a job created after the file failed fails the same way
    job = client_a.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, method=lora())
    assert job.status == "failed" and f"line {n}" in job.error.message


def test_job_waits_for_its_file_which_a_worker_busy_training_still_validates(service, key_a, client_a, tmp_path):
    """An API server whose in-request limit is 1 KB sends even a small file to the worker; the only
    worker is busy with a long training job, and its janitor thread validates the file anyway."""
    import openai

    from tests.api.test_jobs import wait_step
    from tests.support.data import sft_rows, write_jsonl
    from tests.support.service import free_port, spawn, wait_http

    env = dict(service.env, CHATFORGE_SYNC_VALIDATION_MAX_BYTES="1000")
    port = free_port()
    api = spawn(env, ["serve", "--no-worker", "--skip-model", "--port", str(port)], tmp_path / "api.log")
    try:
        busy_file = client_a.files.create(file=write_jsonl(tmp_path / "b.jsonl", sft_rows(24)).open("rb"),
                                          purpose="fine-tune")
        busy = client_a.fine_tuning.jobs.create(model="tiny-llama", training_file=busy_file.id,
                                                method=lora(max_steps=400, checkpoint_interval=1000))
        wait_step(client_a, busy.id, 2)
        wait_http(f"http://127.0.0.1:{port}/health", api)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key_a, max_retries=0, timeout=600)
        f = c.files.create(file=write_jsonl(tmp_path / "t.jsonl", sft_rows(24)).open("rb"), purpose="fine-tune")
        assert f.status == "uploaded"
        job = c.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, method=lora(max_steps=2))
        assert job.status == "validating_files"
        f, _ = wait_file(c, f.id, timeout=120)
        assert f.status == "processed"
        assert client_a.fine_tuning.jobs.retrieve(busy.id).status == "running"  # validated beside the training
        client_a.fine_tuning.jobs.cancel(busy.id)
        assert wait_status(client_a, busy.id, TERMINAL).status == "cancelled"
        job = wait_status(c, job.id, TERMINAL)
        assert job.status == "succeeded", job.error
        events = [e.message for e in c.fine_tuning.jobs.list_events(job.id, limit=100).data]
        assert any("Files validated: 24 training examples" in m for m in events)
    finally:
        api.stop()


def _attempts(service, file_id):
    from sqlalchemy import create_engine, text

    engine = create_engine(service.env["CHATFORGE_DATABASE_URL"])
    try:
        with engine.connect() as c:
            return c.execute(text("SELECT attempts FROM files WHERE id = :f"), {"f": file_id}).scalar()
    finally:
        engine.dispose()


def test_validation_is_redone_when_its_worker_dies(service, client_a, big_path):
    path, n = big_path
    f = client_a.files.create(file=path.open("rb"), purpose="fine-tune")
    assert f.status == "uploaded"
    end = time.monotonic() + 300
    while _attempts(service, f.id) < 1:  # a worker has claimed it
        assert time.monotonic() < end, "no worker started validating the file"
        time.sleep(0.2)
    for w in [w for w in service.workers if w.popen.poll() is None]:
        w.kill9()
    assert client_a.files.retrieve(f.id).status == "uploaded"
    service.start_worker()
    f, _ = wait_file(client_a, f.id)
    assert f.status == "processed" and f.model_extra["n_examples"] == n
    assert _attempts(service, f.id) == 2
