"""Every supervised variant through the job API on the tiny model: QLoRA 8-bit and 4-bit, full
fine-tuning, and DeepSpeed ZeRO-3 with CPU offload; each result loads in the server and generates."""

import pytest

from tests.api.test_jobs import TERMINAL, wait_status
from tests.support.data import sft_rows, write_jsonl


@pytest.fixture(scope="module")
def train_file(client_a, tmp_path_factory):
    p = write_jsonl(tmp_path_factory.mktemp("variants") / "t.jsonl", sft_rows(16))
    return client_a.files.create(file=p.open("rb"), purpose="fine-tune")


VARIANTS = {
    "qlora-8bit": {"adapter": "qlora", "bits": 8},
    "qlora-4bit": {"adapter": "qlora", "bits": 4},
    "full": {"adapter": "full"},
    "deepspeed-zero3-offload": {"adapter": "full", "deepspeed": {"stage": 3, "offload": True}},
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_trains_and_serves(client_a, train_file, name):
    settings = {"hyperparameters": {"batch_size": 4}, "max_steps": 2, "max_seq_length": 64, **VARIANTS[name]}
    job = client_a.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id, suffix=name,
                                           method={"type": "supervised", "supervised": settings})
    job = wait_status(client_a, job.id, TERMINAL, timeout=600)
    assert job.status == "succeeded", job.error
    assert job.model_extra["step"] == 2
    model = client_a.models.retrieve(job.fine_tuned_model)
    assert model.root == "tiny-llama" and model.parent == "tiny-llama"
    r = client_a.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "1+1?"}],
                                         max_tokens=4, temperature=0)
    assert r.choices[0].message.content is not None and r.usage.completion_tokens >= 1


def test_cuda_job_without_cuda_worker_is_refused(client_a, train_file):
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        client_a.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id, extra_body={"device": "cuda"})
    assert e.value.body["code"] == "no_capable_worker"
