"""Fine-tuning jobs end to end on the tiny model: real API server, PostgreSQL, Redis, Celery worker."""

import csv
import io
import time

import openai
import pytest

from tests.support.data import preference_rows, sft_rows, write_jsonl

TERMINAL = ("succeeded", "failed", "cancelled")


def wait_status(client, job_id, statuses, timeout=300):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.5)
    events = client.fine_tuning.jobs.list_events(job_id, limit=30)
    raise AssertionError(f"job {job_id} stuck in {job.status}: " + " | ".join(e.message for e in events.data))


def wait_step(client, job_id, min_step, timeout=300):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if (job.model_extra or {}).get("step", 0) >= min_step or job.status in TERMINAL:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} never reached step {min_step}")


@pytest.fixture(scope="module")
def sft_file(client_a, tmp_path_factory):
    p = write_jsonl(tmp_path_factory.mktemp("d") / "train.jsonl", sft_rows(24))
    return client_a.files.create(file=p.open("rb"), purpose="fine-tune")


@pytest.fixture(scope="module")
def pref_file(client_a, tmp_path_factory):
    p = write_jsonl(tmp_path_factory.mktemp("d") / "pref.jsonl", preference_rows(16))
    return client_a.files.create(file=p.open("rb"), purpose="fine-tune")


def lora(**extra):
    return {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4,
                                                                     "learning_rate_multiplier": 5},
                                                 "checkpoint_interval": 3, "max_seq_length": 128, **extra}}


def test_lora_job_succeeds_with_events_checkpoints_and_model(client_a, sft_file, service, key_a):
    job = client_a.fine_tuning.jobs.create(model="tiny-llama", training_file=sft_file.id, method=lora(),
                                           suffix="adder", seed=7, metadata={"team": "qa"})
    assert job.status == "queued" and job.method.type == "supervised"
    job = wait_status(client_a, job.id, TERMINAL)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:tiny-llama:adder:{job.id}"
    assert job.trained_tokens and job.trained_tokens > 0
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 4

    events = client_a.fine_tuning.jobs.list_events(job.id, limit=200).data
    metrics = [e for e in events if e.type == "metrics"]
    assert len(metrics) == 12  # 24 examples / batch 4 * 2 epochs
    steps = sorted(metrics, key=lambda e: e.data["step"])
    assert steps[-1].data["train_loss"] < steps[0].data["train_loss"]
    assert {"train_loss", "learning_rate", "tokens_per_second"} <= set(steps[0].data)
    messages = " ".join(e.message for e in events)
    assert "Files validated" in messages and "Checkpoint saved" in messages and "successfully completed" in messages

    ckpts = client_a.fine_tuning.jobs.checkpoints.list(job.id).data
    assert ckpts and {c.step_number for c in ckpts} <= {3, 6, 9, 12}
    assert max(c.step_number for c in ckpts) == 12
    model_ids = [m.id for m in client_a.models.list().data]
    assert job.fine_tuned_model in model_ids and ckpts[0].fine_tuned_model_checkpoint in model_ids

    # the fine-tuned model and a checkpoint both answer
    for mid in (job.fine_tuned_model, ckpts[-1].fine_tuned_model_checkpoint):
        r = client_a.chat.completions.create(model=mid, messages=[{"role": "user", "content": "What is 3 plus 3?"}],
                                             max_tokens=8, temperature=0)
        assert r.choices[0].message.content is not None

    # metrics CSV result file
    assert len(job.result_files) == 1
    content = client_a.files.content(job.result_files[0]).text
    rows = list(csv.DictReader(io.StringIO(content)))
    assert len(rows) == 12 and "train_loss" in rows[0]

    # listing, pagination and metadata filter
    listed = client_a.fine_tuning.jobs.list(limit=1, extra_query={"metadata[team]": "qa"})
    assert listed.data[0].id == job.id


def test_cancel_running_job(client_a, sft_file):
    job = client_a.fine_tuning.jobs.create(model="tiny-llama", training_file=sft_file.id,
                                           method=lora(max_steps=400, checkpoint_interval=1000))
    wait_step(client_a, job.id, 2)
    client_a.fine_tuning.jobs.cancel(job.id)
    job = wait_status(client_a, job.id, TERMINAL, timeout=60)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    assert job.model_extra["step"] < 400


def test_pause_and_resume_continues_from_checkpoint(client_a, sft_file, service, key_a):
    job = client_a.fine_tuning.jobs.create(model="tiny-llama", training_file=sft_file.id,
                                           method=lora(max_steps=24, checkpoint_interval=100))
    wait_step(client_a, job.id, 3)
    service_post(service, key_a, f"/fine_tuning/jobs/{job.id}/pause")
    job = wait_status(client_a, job.id, ("paused",) + TERMINAL, timeout=120)
    assert job.status == "paused"
    paused_at = job.model_extra["step"]
    assert 3 <= paused_at < 24
    service_post(service, key_a, f"/fine_tuning/jobs/{job.id}/resume")
    job = wait_status(client_a, job.id, TERMINAL)
    assert job.status == "succeeded"
    metrics = [e for e in client_a.fine_tuning.jobs.list_events(job.id, limit=500).data if e.type == "metrics"]
    steps = sorted(e.data["step"] for e in metrics)
    assert steps == list(range(1, 25)), "resume must continue at the paused step, not restart"


def service_post(service, key, path):
    import httpx2 as httpx

    r = httpx.post(service.v1 + path, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return r.json()


def test_bad_requests(client_a, sft_file, pref_file):
    with pytest.raises(openai.NotFoundError):
        client_a.fine_tuning.jobs.create(model="no-such-model", training_file=sft_file.id)
    with pytest.raises(openai.NotFoundError):
        client_a.fine_tuning.jobs.create(model="tiny-llama", training_file="file-nope")
    with pytest.raises(openai.BadRequestError) as e:
        client_a.fine_tuning.jobs.create(model="tiny-llama", training_file=pref_file.id)
    assert "preference" in str(e.value) and e.value.body["param"] == "training_file"
    with pytest.raises(openai.BadRequestError) as e:
        client_a.fine_tuning.jobs.create(model="tiny-llama", training_file=sft_file.id,
                                         method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": -1}}})
    assert e.value.body["param"] == "method.supervised.n_epochs"
    with pytest.raises(openai.BadRequestError) as e:
        client_a.fine_tuning.jobs.create(model="tiny-llama", training_file=sft_file.id,
                                         method={"type": "supervised", "supervised": {"lora": {"r": 0}}})
    assert e.value.body["param"] == "method.supervised.lora.r"
    with pytest.raises(openai.BadRequestError) as e:
        client_a.fine_tuning.jobs.create(model="tiny-llama", training_file=sft_file.id,
                                         method={"type": "supervised", "supervised": {"adapter": "qlora", "bits": 3}})
    assert e.value.body["param"] == "method.supervised.quant.bits"
    with pytest.raises(openai.BadRequestError) as e:
        client_a.fine_tuning.jobs.create(model="tiny-llama", training_file=sft_file.id, method={"type": "magic"})
    assert e.value.body["param"] == "method.type"
    with pytest.raises(openai.BadRequestError):
        client_a.fine_tuning.jobs.create(model="tiny-llama", training_file=sft_file.id,
                                         method={"type": "supervised", "supervised": {"warp_speed": 9}})


def test_alpaca_recipe_is_expressible(client_a, sft_file):
    method = {"type": "supervised", "supervised": {
        "hyperparameters": {"n_epochs": 3, "batch_size": 128}, "learning_rate": 2e-5, "max_seq_length": 512,
        "weight_decay": 0.0, "warmup_ratio": 0.03, "lr_scheduler": "cosine", "adapter": "full",
        "micro_batch_size": 4}}
    job = client_a.fine_tuning.jobs.create(model="tiny-llama", training_file=sft_file.id, method=method)
    assert job.method.supervised.hyperparameters.batch_size == 128
    client_a.fine_tuning.jobs.cancel(job.id)
