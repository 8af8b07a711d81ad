"""Every checkpoint and every final model serves the weights it was trained to: for SFT LoRA, the reward
model (LoRA and full) and DPO / PPO / RLOO / GRPO started from the base and from an SFT model, the API's
greedy reply (or reward) equals that of the raw trainer checkpoint loaded directly with transformers +
peft. An RL checkpoint started from an SFT model holds a LoRA over the MERGED SFT model; serving it over
the plain base would drop the SFT change, which these tests would see.

All jobs run on the tiny random Llama with two steps and a checkpoint at each, on one worker.
"""

from __future__ import annotations

import httpx2 as httpx
import openai
import pytest

from ml.models import load_tokenizer
from tests.api.test_jobs import TERMINAL, wait_status
from tests.conftest import FAST_JOBS
from tests.support.data import preference_rows, prompt_rows, sft_rows, write_jsonl
from tests.support.parity import (
    REWARD_ITEMS,
    check_chat_parity,
    differ,
    greedy_reply,
    job_dir,
    raw_checkpoints,
    reference_lm,
    reference_reward_model,
    reference_scores,
    served_checkpoints,
    served_reply,
)
from tests.support.service import postgres_database, redis_database, start_service

STEPS = {"max_steps": 2, "checkpoint_interval": 1}
SFT = {"hyperparameters": {"batch_size": 4, "learning_rate_multiplier": 50}, "max_seq_length": 64, **STEPS}
REWARD = {"hyperparameters": {"batch_size": 4}, "micro_batch_size": 4, "max_length": 64, "learning_rate": 1e-2,
          **STEPS}
DPO = {"hyperparameters": {"batch_size": 4}, "micro_batch_size": 4, "max_length": 64, "learning_rate": 1e-2,
       **STEPS}
PPO = {"steps": 2, "checkpoint_interval": 1, "rollouts_per_step": 4, "minibatch_size": 2, "ppo_epochs": 1,
       "sampling": {"max_new_tokens": 8}, "max_prompt_length": 48, "learning_rate": 1e-2}
GROUP = {"hyperparameters": {"batch_size": 4}, "micro_batch_size": 4, "num_generations": 2,
         "sampling": {"max_new_tokens": 8}, "max_prompt_length": 48, "learning_rate": 1e-2, **STEPS}


@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_model_path):
    with postgres_database() as pg, redis_database(offset=11) as rd:
        s = start_service(tmp_path_factory.mktemp("ckpt-serve"), pg, rd, workers=1,
                          models={"tiny-llama": tiny_model_path}, CHATFORGE_SERVE_DTYPE="float32", **FAST_JOBS)
        try:
            yield s
        finally:
            s.stop()


@pytest.fixture(scope="module")
def key(svc):
    return svc.key("parity")


@pytest.fixture(scope="module")
def client(svc, key):
    return openai.OpenAI(base_url=svc.v1, api_key=key, max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def files(client, tmp_path_factory):
    d = tmp_path_factory.mktemp("data")

    def up(name, rows):
        return client.files.create(file=write_jsonl(d / name, rows).open("rb"), purpose="fine-tune").id

    return {"sft": up("sft.jsonl", sft_rows(16)), "preference": up("pref.jsonl", preference_rows(16)),
            "prompts": up("prompts.jsonl", prompt_rows(12))}


def run_job(client, model: str, mtype: str, training_file: str, settings: dict):
    job = client.fine_tuning.jobs.create(model=model, training_file=training_file,
                                         method={"type": mtype, mtype: settings})
    job = wait_status(client, job.id, TERMINAL, timeout=600)
    assert job.status == "succeeded", job.error
    return job


@pytest.fixture(scope="module")
def sft_job(client, files):
    return run_job(client, "tiny-llama", "supervised", files["sft"], SFT)


@pytest.fixture(scope="module")
def sft_adapter(svc, sft_job):
    return job_dir(svc, sft_job.id) / "model"


@pytest.fixture(scope="module")
def reward_job(client, files):
    return run_job(client, "tiny-llama", "reward_model", files["preference"], REWARD)


def test_sft_lora_checkpoints_serve_their_weights(svc, client, sft_job, tiny_model_path):
    replies = check_chat_parity(svc, client, sft_job, tiny_model_path, None)
    # the SFT change is visible in the replies, so dropping it (the bug this file guards) would show
    base = greedy_reply(reference_lm(tiny_model_path, None, tiny_model_path), load_tokenizer(tiny_model_path))
    assert differ(base, replies[-1])


def _rewards(svc, key, model_id):
    r = httpx.post(svc.v1 + "/rewards", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                   json={"model": model_id, "items": [{"messages": m} for m in REWARD_ITEMS]})
    assert r.status_code == 200, r.text
    return [d["score"] for d in r.json()["data"]]


def check_reward_parity(svc, key, client, job, base, sft_adapter) -> None:
    raw = raw_checkpoints(svc, job.id)
    served = served_checkpoints(client, job)
    assert sorted(served) == sorted(raw) == [1, 2], (served, raw)
    tokenizer = load_tokenizer(sft_adapter or base)
    for model_id, folder in [*((m, raw[s]) for s, m in served.items()), (job.fine_tuned_model, raw[2])]:
        want = reference_scores(reference_reward_model(base, sft_adapter, folder), tokenizer)
        assert _rewards(svc, key, model_id) == pytest.approx(want, abs=1e-4), model_id
        # a reward checkpoint scores; it does not chat
        if model_id != job.fine_tuned_model:
            with pytest.raises(openai.BadRequestError):
                served_reply(client, model_id)


def test_reward_model_lora_from_base(svc, key, client, reward_job, tiny_model_path):
    check_reward_parity(svc, key, client, reward_job, tiny_model_path, None)


def test_reward_model_lora_from_sft(svc, key, client, files, sft_job, sft_adapter, tiny_model_path):
    job = run_job(client, sft_job.fine_tuned_model, "reward_model", files["preference"], REWARD)
    check_reward_parity(svc, key, client, job, tiny_model_path, sft_adapter)


def test_reward_model_full_from_base(svc, key, client, files, tiny_model_path):
    job = run_job(client, "tiny-llama", "reward_model", files["preference"], {**REWARD, "adapter": "full",
                                                                               "learning_rate": 1e-3})
    check_reward_parity(svc, key, client, job, tiny_model_path, None)


RL = {"dpo": ("preference", DPO), "ppo": ("prompts", PPO), "rloo": ("prompts", GROUP), "grpo": ("prompts", GROUP)}


@pytest.mark.parametrize("start", ["base", "sft"])
@pytest.mark.parametrize("method", list(RL))
def test_rl_checkpoints_serve_their_weights(svc, client, files, sft_job, sft_adapter, reward_job,
                                            tiny_model_path, method, start):
    kind, settings = RL[method]
    if kind == "prompts":
        settings = {**settings, "reward_model": reward_job.fine_tuned_model}
    model = sft_job.fine_tuned_model if start == "sft" else "tiny-llama"
    job = run_job(client, model, method, files[kind], settings)
    adapter = sft_adapter if start == "sft" else None
    replies = check_chat_parity(svc, client, job, tiny_model_path, adapter)
    if start == "sft":
        # what serving the raw adapter over the plain base (without the SFT change) would have said
        dropped = greedy_reply(reference_lm(tiny_model_path, None, raw_checkpoints(svc, job.id)[1]),
                               load_tokenizer(tiny_model_path))
        assert differ(dropped, replies[0])
