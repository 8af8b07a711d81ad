"""Crash safety with real processes: a worker killed with SIGKILL mid-training, and a broker that lost
its messages. The database is the truth; leases and the reconciler bring jobs back."""

import time
from pathlib import Path

import openai
import pytest
import redis

from tests.api.test_jobs import TERMINAL, wait_status, wait_step
from tests.conftest import FAST_JOBS
from tests.support.data import sft_rows, write_jsonl
from tests.support.service import postgres_database, redis_database, start_service


@pytest.fixture(scope="module")
def chaos(tmp_path_factory, tiny_model_path):
    with postgres_database() as pg, redis_database(offset=7) as rd:
        svc = start_service(tmp_path_factory.mktemp("chaos"), pg, rd, workers=1,
                            models={"tiny-llama": tiny_model_path}, **FAST_JOBS)
        try:
            yield svc
        finally:
            svc.stop()


@pytest.fixture(scope="module")
def client(chaos):
    return openai.OpenAI(base_url=chaos.v1, api_key=chaos.key("chaos"), max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def train_file(client, tmp_path_factory):
    p = write_jsonl(tmp_path_factory.mktemp("d") / "t.jsonl", sft_rows(24))
    return client.files.create(file=p.open("rb"), purpose="fine-tune")


def training_children(job_id: str, module: bytes = b"workers.runner", svc=None) -> list[int]:
    """Pids of live `python -m <module> ...` processes whose command line names the job, and (with `svc`)
    the job's training processes its workers logged: a warm runner's command line does not name the job."""
    pids = list(svc.training_pids(job_id)) if svc is not None and module == b"workers.runner" else []
    for d in Path("/proc").iterdir():
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if module in argv and any(job_id.encode() in a for a in argv) and int(d.name) not in pids:
            pids.append(int(d.name))
    return pids


def wait_until(cond, what: str, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def method(steps, every):
    return {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 4}, "max_steps": steps,
                                                 "checkpoint_interval": every, "max_seq_length": 96}}


def test_worker_killed_mid_job_resumes_from_last_checkpoint(chaos, client, train_file):
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id, method=method(30, 4))
    wait_step(client, job.id, 9)  # checkpoints at 4 and 8 exist
    assert training_children(job.id, svc=chaos)
    chaos.workers[0].kill9()  # the worker and (through PR_SET_PDEATHSIG) its training child die
    wait_until(lambda: not training_children(job.id, svc=chaos), what="the training child to die with its worker")
    before = client.fine_tuning.jobs.retrieve(job.id)
    assert before.status == "running"  # nobody has noticed yet: the lease is still valid
    chaos.start_worker()  # a fresh worker; its reconciler finds the lapsed lease
    job = wait_status(client, job.id, TERMINAL, timeout=300)
    assert job.status == "succeeded", job.error
    events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
    messages = [e.message for e in events]
    assert any("stopped responding" in m for m in messages)
    assert any("Resuming from the last checkpoint" in m for m in messages)
    timeline = list(reversed(events))  # oldest first
    resumed = next(i for i, e in enumerate(timeline) if "Resuming from the last checkpoint" in e.message)
    first = [e.data["step"] for e in timeline[:resumed] if e.type == "metrics"]
    second = [e.data["step"] for e in timeline[resumed:] if e.type == "metrics"]
    assert first[0] == 1 and first == sorted(first) and first[-1] >= 9, first
    # the second attempt continues right after a checkpoint (a multiple of 4), never from step 1; it may
    # replay the steps the first attempt ran after that checkpoint (the kill can also land just after one)
    assert second and (second[0] - 1) % 4 == 0 and 5 <= second[0] <= first[-1] + 1, (first, second)
    assert second == sorted(second) and second[-1] == 30, second
    assert job.model_extra["attempts"] == 2
    assert len([m for m in client.models.list().data if m.id == job.fine_tuned_model]) == 1


def test_broker_emptied_while_queued_reconciler_runs_it(chaos, client, train_file):
    for w in chaos.workers:
        w.stop()
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id, method=method(3, 10))
    r = redis.Redis.from_url(chaos.env["CHATFORGE_BROKER_URL"])
    assert r.llen("jobs") >= 1
    r.flushdb()  # Redis restarted empty: the wake-up is gone
    chaos.start_worker()
    job = wait_status(client, job.id, TERMINAL, timeout=300)
    assert job.status == "succeeded", job.error


def test_worker_killed_under_a_two_process_job_leaves_no_rank_and_resumes(chaos, client, train_file):
    m = method(40, 4)
    m["supervised"]["hyperparameters"]["n_epochs"] = 10
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id, method=m,
                                         extra_body={"num_processes": 2})
    wait_step(client, job.id, 5)
    launcher = training_children(job.id, b"torch.distributed.run")
    assert len(launcher) == 1 and len(set(training_children(job.id, b"ml.train.launch")) - set(launcher)) == 2
    chaos.workers[-1].kill9()  # worker -> runner (SIGKILL) -> torchrun (SIGTERM) -> ranks (SIGKILL)
    wait_until(lambda: not training_children(job.id, svc=chaos) and not training_children(job.id, b"ml.train.launch")
               and not training_children(job.id, b"torch.distributed.run"), what="no rank left behind")
    chaos.start_worker()
    job = wait_status(client, job.id, TERMINAL, timeout=600)
    assert job.status == "succeeded", job.error
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data]
    assert any("Resuming from the last checkpoint" in m for m in messages)
    assert sum("Launching 2 training processes" in m for m in messages) == 2
    assert job.model_extra["step"] == 40 and job.model_extra["attempts"] == 2
