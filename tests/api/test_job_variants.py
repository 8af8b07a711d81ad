"""Every supervised variant through the job API on the tiny model: QLoRA 8-bit and 4-bit, full
fine-tuning, and DeepSpeed ZeRO-3 with CPU offload. Each job must really have used what it asked for
(bitsandbytes' quantised layers, DeepSpeed's engine, as recorded in the job's result), and each
checkpoint and final model must serve the greedy reply of its raw weights loaded with transformers + peft.
"""

import openai
import pytest

from tests.api.test_jobs import TERMINAL, wait_status
from tests.conftest import FAST_JOBS
from tests.support.data import sft_rows, write_jsonl
from tests.support.parity import check_chat_parity
from tests.support.service import postgres_database, redis_database, start_service

# the tiny Llama has 2 layers of 7 linear projections each
LINEARS = 14
VARIANTS = {
    "qlora-8bit": ({"adapter": "qlora", "bits": 8}, {"engine": "torch", "quantized_layers": {"Linear8bitLt": LINEARS}}),
    "qlora-4bit": ({"adapter": "qlora", "bits": 4}, {"engine": "torch", "quantized_layers": {"Linear4bit": LINEARS}}),
    "full": ({"adapter": "full"}, {"engine": "torch", "quantized_layers": {}}),
    "deepspeed-zero3-offload": ({"adapter": "full", "deepspeed": {"stage": 3, "offload": True}},
                                {"engine": "deepspeed", "zero_stage": 3, "zero_offload_optimizer": True,
                                 "quantized_layers": {}}),
}


@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_model_path):
    with postgres_database() as pg, redis_database(offset=12) as rd:
        s = start_service(tmp_path_factory.mktemp("variants"), pg, rd, workers=1,
                          models={"tiny-llama": tiny_model_path}, CHATFORGE_SERVE_DTYPE="float32", **FAST_JOBS)
        try:
            yield s
        finally:
            s.stop()


@pytest.fixture(scope="module")
def client(svc):
    return openai.OpenAI(base_url=svc.v1, api_key=svc.key("variants"), max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def train_file(client, tmp_path_factory):
    p = write_jsonl(tmp_path_factory.mktemp("variants") / "t.jsonl", sft_rows(16))
    return client.files.create(file=p.open("rb"), purpose="fine-tune")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_trains_really_and_serves_its_checkpoints(svc, client, train_file, tiny_model_path, name):
    variant, runtime = VARIANTS[name]
    settings = {"hyperparameters": {"batch_size": 4, "learning_rate_multiplier": 20}, "max_steps": 2,
                "checkpoint_interval": 1, "max_seq_length": 64, **variant}
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id, suffix=name,
                                         method={"type": "supervised", "supervised": settings})
    # DeepSpeed JIT-compiles its CPU ops on first use (minutes on a loaded machine; cached afterwards)
    job = wait_status(client, job.id, TERMINAL, timeout=1500)
    assert job.status == "succeeded", job.error
    assert job.model_extra["step"] == 2
    result = job.model_extra["result"]
    assert {k: result.get(k) for k in runtime} == runtime, result
    model = client.models.retrieve(job.fine_tuned_model)
    assert model.root == "tiny-llama" and model.parent == "tiny-llama"
    check_chat_parity(svc, client, job, tiny_model_path, None)


def test_cuda_job_without_cuda_worker_is_refused(client, train_file):
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id, extra_body={"device": "cuda"})
    assert e.value.body["code"] == "no_capable_worker"
