"""Limits and quotas over real HTTP: a key's requests per minute and concurrent inference requests (429
rate_limit_exceeded with Retry-After), a project's queued jobs and storage (429 insufficient_quota), and a
noisy project at its limits while another project's chat still completes. The counters themselves are
checked for both backends: in-process (embedded default) and Redis (scale-out, shared by API replicas)."""

import threading
import uuid

import httpx2 as httpx
import openai
import pytest

from api.limits import LEASE_SECONDS, MemoryLimiter, RedisLimiter, make_limiter
from tests.api.test_keys import MSG, client, make_key, wait_for
from tests.support.data import sft_rows, write_jsonl
from tests.support.service import cli


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_memory_limiter_refills_evenly_over_a_minute():
    clock = Clock()
    lim = MemoryLimiter(clock)
    assert [lim.hit("k", 3) for _ in range(3)] == [None, None, None]
    assert lim.hit("k", 3) == 20  # one request comes back every 60/3 s
    assert lim.hit("other", 3) is None  # keys do not share a bucket
    clock.now += 20
    assert lim.hit("k", 3) is None and lim.hit("k", 3) == 20


def test_memory_limiter_slots_and_their_lease():
    clock = Clock()
    lim = MemoryLimiter(clock)
    a, b = lim.acquire("k", 2), lim.acquire("k", 2)
    assert a and b and lim.acquire("k", 2) is None
    lim.release("k", a)
    c = lim.acquire("k", 2)
    assert c and lim.acquire("k", 2) is None
    clock.now += LEASE_SECONDS + 1  # a holder that never released (a crashed request) lapses
    assert lim.acquire("k", 2)


def test_redis_limiter_counts_across_instances(redis_url):
    ns = f"test:{uuid.uuid4().hex}"
    one, two = RedisLimiter(redis_url, ns), RedisLimiter(redis_url, ns)  # as two API replicas
    assert [one.hit("k", 3), two.hit("k", 3), one.hit("k", 3)] == [None, None, None]
    wait = two.hit("k", 3)
    assert wait is not None and 1 <= wait <= 20
    a = one.acquire("k", 1)
    assert a and two.acquire("k", 1) is None
    one.release("k", a)
    assert two.acquire("k", 1)


def test_the_broker_picks_the_limiter(redis_url):
    assert isinstance(make_limiter("filesystem://"), MemoryLimiter)  # the embedded default: per API process
    assert isinstance(make_limiter(redis_url), RedisLimiter)


def test_redis_limiter_lets_requests_through_when_redis_is_down():
    lim = RedisLimiter("redis://127.0.0.1:1/0")
    assert lim.hit("k", 1) is None and lim.hit("k", 1) is None
    assert lim.acquire("k", 1)


def test_requests_per_minute_answer_429_with_retry_after(service):
    _, key = make_key(service, "rpm", "--rpm", "3")
    c = client(service, key)
    for _ in range(3):
        c.models.list()
    with pytest.raises(openai.RateLimitError) as e:
        c.models.list()
    assert e.value.code == "rate_limit_exceeded" and "3 requests per minute" in e.value.message
    assert 1 <= int(e.value.response.headers["retry-after"]) <= 20
    _, other = make_key(service, "rpm")  # the limit is the key's: the project's other key is not limited
    for _ in range(5):
        client(service, other).models.list()


def _chat_status(service, key: str, max_tokens: int = 2, model: str = "tiny-llama") -> int:
    r = httpx.post(service.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                   json={"model": model, "messages": MSG, "max_tokens": max_tokens})
    return r.status_code


def test_noisy_project_at_its_rate_limit_does_not_hold_up_another(service):
    """A project firing far past its requests per minute gets 429s at once; another project's chat
    completes during the storm."""
    _, noisy = make_key(service, "noisy", "--rpm", "5")
    _, quiet = make_key(service, "quiet")
    statuses: list[int] = []
    start = threading.Barrier(9)

    def storm() -> None:
        start.wait()
        for _ in range(5):
            statuses.append(_chat_status(service, noisy))

    threads = [threading.Thread(target=storm) for _ in range(8)]
    for t in threads:
        t.start()
    start.wait()
    r = client(service, quiet).chat.completions.create(model="tiny-llama", messages=MSG, max_tokens=4)
    for t in threads:
        t.join()
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4
    # a burst of 5, then one more every 12 s: most of the 40 are refused
    assert len(statuses) == 40 and statuses.count(200) >= 5 and statuses.count(429) >= 30
    assert set(statuses) <= {200, 429}


@pytest.mark.slow
def test_noisy_project_at_its_stream_limit_does_not_starve_another(service):
    """A key with one concurrent request streams a long SmolLM2 reply; its further requests are refused
    at once (429) while another project's chat on the same engine completes, and the stream is still
    running afterwards. When the stream closes, the key's slot is free again."""
    _, noisy = make_key(service, "noisy-streams", "--max-streams", "1")
    _, quiet = make_key(service, "quiet-streams")
    model = "smollm2-135m-instruct"
    body = {"model": model, "messages": MSG, "max_tokens": 1500, "stream": True, "temperature": 1.0,
            "stop": None}
    with httpx.stream("POST", service.v1 + "/chat/completions", headers={"Authorization": f"Bearer {noisy}"},
                      json=body, timeout=300) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        assert next(lines).startswith("data: ")
        with pytest.raises(openai.RateLimitError) as e:
            client(service, noisy).chat.completions.create(model=model, messages=MSG, max_tokens=2)
        assert e.value.code == "rate_limit_exceeded" and e.value.response.headers["retry-after"] == "1"
        assert _chat_status(service, noisy, model=model) == 429
        r = client(service, quiet).chat.completions.create(model=model, messages=MSG, max_tokens=4)
        assert r.choices[0].message.content is not None and r.usage.completion_tokens <= 4
        assert _chat_status(service, noisy, model=model) == 429  # the noisy stream is still running
        assert next(lines) != "data: [DONE]"
    wait_for(lambda: _chat_status(service, noisy, model=model) == 200, what="the slot to be released")


@pytest.mark.parametrize(("method", "path", "jobs", "storage"), [
    ("POST", "/v1/fine_tuning/jobs", True, False),
    ("POST", "/v1/fine_tuning/pipelines", True, False),
    ("POST", "/v1/fine_tuning/jobs/ftjob-1/resume", True, False),
    ("POST", "/v1/fine_tuning/jobs/ftjob-1/cancel", False, False),
    ("GET", "/v1/fine_tuning/jobs", False, False),
    ("POST", "/v1/files", False, True),
    ("POST", "/v1/files/import", False, True),
    ("POST", "/v1/uploads", False, True),
    ("POST", "/v1/uploads/upload_1/parts", False, True),
    ("POST", "/v1/uploads/upload_1/complete", False, False),
])
def test_which_requests_count_against_project_quotas(method, path, jobs, storage):
    from api.deps import _adds_bytes, _adds_jobs

    assert (_adds_jobs(method, path), _adds_bytes(method, path)) == (jobs, storage)


def test_queued_jobs_quota(service, tmp_path):
    _, key = make_key(service, "jobquota")
    c = client(service, key)
    f = c.files.create(file=write_jsonl(tmp_path / "t.jsonl", sft_rows(12)).open("rb"), purpose="fine-tune")
    cli(service.env, "quotas", "set", "jobquota", "--max-queued-jobs", "0")
    job = {"model": "tiny-llama", "training_file": f.id, "method": {"type": "supervised", "supervised": {
        "hyperparameters": {"batch_size": 4}, "max_steps": 2}}}
    with pytest.raises(openai.RateLimitError) as e:
        c.fine_tuning.jobs.create(**job)
    assert e.value.code == "insufficient_quota" and "max_queued_jobs 0" in e.value.message
    assert e.value.response.headers["retry-after"] == "30"
    assert "jobquota\t0\t0\t" in cli(service.env, "quotas", "list").stdout
    cli(service.env, "quotas", "set", "jobquota", "--max-queued-jobs", "none")
    created = c.fine_tuning.jobs.create(**job)
    c.fine_tuning.jobs.cancel(created.id)


def test_storage_quota(service, tmp_path):
    _, key = make_key(service, "storequota")
    path = write_jsonl(tmp_path / "s.jsonl", sft_rows(12))
    size = path.stat().st_size
    quota = 2 * size + size // 2  # room for two uploads (with their multipart framing), not three
    cli(service.env, "quotas", "set", "storequota", "--storage-bytes", str(quota))
    c = openai.OpenAI(base_url=service.v1, api_key=key, timeout=120)  # default retries: told not to retry
    files = [c.files.create(file=path.open("rb"), purpose="fine-tune") for _ in range(2)]
    with pytest.raises(openai.RateLimitError) as e:
        c.files.create(file=path.open("rb"), purpose="fine-tune")
    assert e.value.code == "insufficient_quota" and f"max_storage_bytes {quota}" in e.value.message
    assert e.value.response.headers["x-should-retry"] == "false"
    assert f"storequota\t0\tunlimited\t{2 * size}\t{quota}" in cli(service.env, "quotas", "list").stdout
    c.files.delete(files[0].id)
    c.files.create(file=path.open("rb"), purpose="fine-tune")


def test_embedded_default_limits_in_the_api_process(tmp_path):
    """SQLite and the folder broker (no Redis): the API process counts a key's requests itself. The key
in CHATFORGE_API_KEY (default project, made on its first use) has full scope and no limits."""
    from tests.support.service import start_service

    env_key = "cf-" + uuid.uuid4().hex
    svc = start_service(tmp_path / "embedded", None, None, workers=0, CHATFORGE_API_KEY=env_key)
    try:
        for _ in range(5):
            assert client(svc, env_key).models.list().data == []
        _, key = make_key(svc, "embedded", "--rpm", "2")
        c = client(svc, key)
        c.models.list(), c.models.list()
        with pytest.raises(openai.RateLimitError) as e:
            c.models.list()
        assert e.value.code == "rate_limit_exceeded" and int(e.value.response.headers["retry-after"]) >= 1
    finally:
        svc.stop()


def _quota_row(service, project: str) -> list[str]:
    return next(r for r in cli(service.env, "quotas", "list").stdout.splitlines()
                if r.startswith(project + "\t")).split("\t")


def test_storage_quota_counts_the_models_a_project_trained(service, tmp_path):
    """The trained model and checkpoints of a project's job count in its storage: with room for a few more
    uploads beforehand, the next upload after the job is refused (429 insufficient_quota), and deleting the
    model (with its checkpoints) makes room again."""
    from tests.api.test_jobs import TERMINAL, wait_status

    _, key = make_key(service, "weightquota")
    c = openai.OpenAI(base_url=service.v1, api_key=key, timeout=120)
    path = write_jsonl(tmp_path / "w.jsonl", sft_rows(12))
    size = path.stat().st_size
    train = c.files.create(file=path.open("rb"), purpose="fine-tune")
    quota = 5 * size  # room for three more uploads besides the training file, if nothing else counted
    cli(service.env, "quotas", "set", "weightquota", "--storage-bytes", str(quota))
    job = c.fine_tuning.jobs.create(model="tiny-llama", training_file=train.id, method={
        "type": "supervised", "supervised": {"hyperparameters": {"batch_size": 4}, "max_steps": 2,
                                             "checkpoint_interval": 1, "max_seq_length": 64}})
    job = wait_status(c, job.id, TERMINAL)
    assert job.status == "succeeded", job.error
    checkpoints = c.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints

    files_bytes = sum(f.bytes for f in c.files.list().data)  # the training file and the metrics CSV
    used = int(_quota_row(service, "weightquota")[3])
    assert used > quota > files_bytes + 2 * size  # the weights pushed the project over its quota
    with pytest.raises(openai.RateLimitError) as e:
        c.files.create(file=path.open("rb"), purpose="fine-tune")
    assert e.value.code == "insufficient_quota" and f"stores {used} bytes" in e.value.message
    assert e.value.response.headers["x-should-retry"] == "false"

    c.models.delete(job.fine_tuned_model)  # the model and its checkpoints: their bytes no longer count
    assert int(_quota_row(service, "weightquota")[3]) == files_bytes
    c.files.create(file=path.open("rb"), purpose="fine-tune")
