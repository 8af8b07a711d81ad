"""Tenant isolation: every resource of project A is a 404 for project B, and B's lists omit them."""

import openai
import pytest

from tests.api.test_jobs import TERMINAL, wait_status
from tests.support.data import sft_rows, write_jsonl


@pytest.fixture(scope="module")
def a_resources(client_a, tmp_path_factory):
    p = write_jsonl(tmp_path_factory.mktemp("iso") / "a.jsonl", sft_rows(12))
    f = client_a.files.create(file=p.open("rb"), purpose="fine-tune")
    job = client_a.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4},
                                             "checkpoint_interval": 1, "max_seq_length": 64}})
    job = wait_status(client_a, job.id, TERMINAL)
    assert job.status == "succeeded", job.error
    ckpt = client_a.fine_tuning.jobs.checkpoints.list(job.id).data[0]
    return f, job, ckpt


def test_project_b_sees_none_of_project_a(client_b, a_resources):
    f, job, ckpt = a_resources
    calls = [
        lambda: client_b.files.retrieve(f.id),
        lambda: client_b.files.content(f.id),
        lambda: client_b.files.delete(f.id),
        lambda: client_b.fine_tuning.jobs.retrieve(job.id),
        lambda: client_b.fine_tuning.jobs.cancel(job.id),
        lambda: client_b.fine_tuning.jobs.list_events(job.id),
        lambda: client_b.fine_tuning.jobs.checkpoints.list(job.id),
        lambda: client_b.models.retrieve(job.fine_tuned_model),
        lambda: client_b.models.retrieve(ckpt.fine_tuned_model_checkpoint),
        lambda: client_b.models.delete(job.fine_tuned_model),
        lambda: client_b.chat.completions.create(model=job.fine_tuned_model,
                                                 messages=[{"role": "user", "content": "hi"}]),
        lambda: client_b.fine_tuning.jobs.create(model=job.fine_tuned_model, training_file=f.id),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError):
            call()
    assert f.id not in [x.id for x in client_b.files.list().data]
    assert job.id not in [x.id for x in client_b.fine_tuning.jobs.list().data]
    b_models = [m.id for m in client_b.models.list().data]
    assert job.fine_tuned_model not in b_models and "tiny-llama" in b_models


def test_file_in_use_cannot_be_deleted_and_deleting_a_model_works(client_a, tmp_path_factory):
    p = write_jsonl(tmp_path_factory.mktemp("iso") / "busy.jsonl", sft_rows(12))
    f = client_a.files.create(file=p.open("rb"), purpose="fine-tune")
    job = client_a.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, method={
        "type": "supervised", "supervised": {"max_steps": 200, "checkpoint_interval": 1000, "max_seq_length": 64}})
    with pytest.raises(openai.ConflictError):
        client_a.files.delete(f.id)
    client_a.fine_tuning.jobs.cancel(job.id)
    wait_status(client_a, job.id, TERMINAL)
    assert client_a.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        client_a.files.retrieve(f.id)


def test_delete_fine_tuned_model(client_a, a_resources):
    _, job, ckpt = a_resources
    r = client_a.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}],
                                         max_tokens=2)
    assert r.choices
    assert client_a.models.delete(job.fine_tuned_model).deleted
    for mid in (job.fine_tuned_model, ckpt.fine_tuned_model_checkpoint):
        with pytest.raises(openai.NotFoundError):
            client_a.models.retrieve(mid)
    with pytest.raises(openai.NotFoundError):
        client_a.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
