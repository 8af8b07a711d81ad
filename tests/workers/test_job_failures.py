"""A failed job names its real cause, and a paused job resumes on a worker of another capability.

Bad data and bad settings are triggered by real inputs that pass the API's checks but not training's;
out-of-memory and a library bug by CHATFORGE_FAULT_INJECTION (workers.runner.FAULT_ENV), which makes
the first training step fail with a real torch error (an impossible allocation, a shape mismatch).
"""

from __future__ import annotations

import openai
import pytest

from tests.api.test_jobs import TERMINAL, wait_status, wait_step
from tests.conftest import FAST_JOBS
from tests.support.data import sft_rows, write_jsonl
from tests.support.service import postgres_database, redis_database, start_service


@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_model_path):
    with postgres_database() as pg, redis_database(offset=13) as rd:
        s = start_service(tmp_path_factory.mktemp("failures"), pg, rd, workers=0,
                          models={"tiny-llama": tiny_model_path}, **FAST_JOBS)
        try:
            yield s
        finally:
            s.stop()


@pytest.fixture(scope="module")
def client(svc):
    return openai.OpenAI(base_url=svc.v1, api_key=svc.key("failures"), max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def train_file(client, tmp_path_factory):
    p = write_jsonl(tmp_path_factory.mktemp("d") / "t.jsonl", sft_rows(16))
    return client.files.create(file=p.open("rb"), purpose="fine-tune")


@pytest.fixture
def worker(svc):
    """Start one worker with the given environment; stopped after the test."""
    started = []

    def start(**env):
        started.append(svc.start_worker(**env))

    yield start
    for w in started:
        w.stop()


def sft(**settings):
    return {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 4}, "max_seq_length": 64,
                                                 "max_steps": 3, **settings}}


def failed(client, train_file, method):
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id, method=method)
    job = wait_status(client, job.id, TERMINAL, timeout=300)
    assert job.status == "failed"
    assert job.model_extra["attempts"] == 1  # never retried
    return job.error


def test_bad_data_is_the_users_data(client, train_file, worker):
    worker()
    # 16 tokens cannot hold the prompt: every reply is cut away, nothing is left to learn
    error = failed(client, train_file, sft(max_seq_length=16))
    assert error.code == "invalid_training_data", error
    assert "nothing to learn" in error.message or "anything to learn" in error.message


def test_bad_setting_is_an_invalid_hyperparameter(client, train_file, worker):
    worker()
    # accepted at creation ("auto" batch size), impossible once the file's size fixes the batch
    error = failed(client, train_file, sft(hyperparameters={"batch_size": "auto"}, micro_batch_size=3))
    assert error.code == "invalid_hyperparameter", error
    assert error.param == "method.supervised.micro_batch_size" and error.message.startswith(error.param)


def test_out_of_memory_is_out_of_memory(client, train_file, worker):
    worker(CHATFORGE_FAULT_INJECTION="oom")
    error = failed(client, train_file, sft())
    assert error.code == "out_of_memory", error
    assert "RuntimeError" in error.message and "batch_size" in error.message


def test_library_bug_is_an_internal_error(client, train_file, worker):
    worker(CHATFORGE_FAULT_INJECTION="bug")
    error = failed(client, train_file, sft())
    assert error.code == "internal_error", error
    assert error.message.startswith("RuntimeError:")


def test_a_library_valueerror_is_not_blamed_on_the_data(client, train_file, worker):
    """A ValueError raised inside torch while training is a library error, not invalid_training_data:
    only ChatForge's own data checks (DataError) name the user's file."""
    worker(CHATFORGE_FAULT_INJECTION="library_valueerror")
    error = failed(client, train_file, sft())
    assert error.code == "internal_error", error
    assert error.message.startswith("ValueError:") and error.param is None


def test_paused_job_resumes_on_a_worker_without_bf16(svc, client, train_file, worker):
    """bf16 "auto" resolves per host; a resume on another kind of worker keeps the first start's choice."""
    worker(CHATFORGE_BF16_SUPPORTED="1")
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id,
                                         method=sft(max_steps=40, checkpoint_interval=2))
    wait_step(client, job.id, 2)
    client.fine_tuning.jobs.pause(job.id)
    job = wait_status(client, job.id, ("paused", *TERMINAL))
    assert job.status == "paused", job.error
    paused_at = job.model_extra["step"]
    assert paused_at < 40
    svc.workers[-1].stop()
    worker(CHATFORGE_BF16_SUPPORTED="0")  # the only worker left cannot do bf16
    client.fine_tuning.jobs.resume(job.id)
    job = wait_status(client, job.id, TERMINAL)
    assert job.status == "succeeded", job.error
    events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
    ready = [e.data["config"]["bf16"] for e in reversed(events) if e.message.startswith("Model ready")]
    assert ready == [True, True]  # both attempts trained in the precision the job started with
    steps = [e.data["step"] for e in reversed(events) if e.type == "metrics"]
    assert steps[-1] == 40 and steps.count(1) == 1
