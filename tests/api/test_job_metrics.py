"""What a user reads after a job: the metrics CSV in result_files (OpenAI's columns first, one row per
step) and, with a validation file, each method's validation metrics in the job's final result: loss and
perplexity (SFT), preference accuracy and reward margin (reward model, DPO), mean reward and KL (PPO,
GRPO). Tiny model, a few steps each, through the openai SDK."""

import csv
import io
import math

import pytest

from tests.api.test_jobs import TERMINAL, wait_status
from tests.support.data import preference_rows, prompt_rows, sft_rows, write_jsonl


@pytest.fixture(scope="module")
def files(client_a, tmp_path_factory):
    d = tmp_path_factory.mktemp("metrics")

    def up(name, rows):
        return client_a.files.create(file=write_jsonl(d / name, rows).open("rb"), purpose="fine-tune").id

    return {
        "sft": up("sft.jsonl", sft_rows(16)), "sft_valid": up("sft_valid.jsonl", sft_rows(40)[30:]),
        "pref": up("pref.jsonl", preference_rows(12)), "pref_valid": up("pref_valid.jsonl", preference_rows(10)),
        "prompts": up("prompts.jsonl", prompt_rows(10)), "prompts_valid": up("prompts_valid.jsonl", prompt_rows(10)),
    }


def run(client, files, mtype, settings, train, valid, model="tiny-llama"):
    job = client.fine_tuning.jobs.create(model=model, training_file=files[train], validation_file=files[valid],
                                         method={"type": mtype, mtype: settings})
    job = wait_status(client, job.id, TERMINAL, timeout=600)
    assert job.status == "succeeded", job.error
    return job


def test_sft_metrics_csv_and_validation_loss(client_a, files):
    # 16 examples / batch 4 = 4 steps; validation every 3 steps, so the last step needs the final evaluation
    job = run(client_a, files, "supervised", {"hyperparameters": {"n_epochs": 1, "batch_size": 4},
                                              "eval_interval": 3, "max_seq_length": 64}, "sft", "sft_valid")
    metrics = job.model_extra["result"]["metrics"]
    assert math.isfinite(metrics["valid_loss"]) and metrics["valid_loss"] > 0
    assert metrics["valid_perplexity"] == pytest.approx(math.exp(metrics["valid_loss"]), rel=1e-6)

    content = client_a.files.content(job.result_files[0]).text
    rows = list(csv.DictReader(io.StringIO(content)))
    header = content.splitlines()[0].split(",")
    assert header[:5] == ["step", "train_loss", "valid_loss", "learning_rate", "tokens_per_second"]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]  # one row per step, the final evaluation merged
    assert rows[2]["valid_loss"] and rows[3]["valid_loss"] and not rows[0]["valid_loss"]
    assert float(rows[3]["valid_loss"]) == pytest.approx(metrics["valid_loss"], rel=1e-6)
    assert all(float(r["train_loss"]) > 0 and float(r["tokens_per_second"]) > 0 for r in rows)


@pytest.fixture(scope="module")
def reward_model(client_a, files):
    job = run(client_a, files, "reward_model", {"hyperparameters": {"n_epochs": 1, "batch_size": 4},
                                                "max_length": 64}, "pref", "pref_valid")
    return job


def test_reward_model_reports_preference_accuracy_and_margin(reward_model):
    metrics = reward_model.model_extra["result"]["metrics"]
    assert 0.0 <= metrics["valid_accuracy"] <= 1.0
    assert math.isfinite(metrics["valid_margin"])


def test_dpo_reports_preference_accuracy_and_margin(client_a, files):
    job = run(client_a, files, "dpo", {"hyperparameters": {"n_epochs": 1, "batch_size": 4}, "max_length": 64},
              "pref", "pref_valid")
    metrics = job.model_extra["result"]["metrics"]
    assert 0.0 <= metrics["valid_accuracy"] <= 1.0
    assert math.isfinite(metrics["valid_margin"])


@pytest.mark.parametrize("mtype", ["ppo", "grpo"])
def test_online_rl_reports_mean_reward_and_kl(client_a, files, reward_model, mtype):
    small = {"sampling": {"max_new_tokens": 6}, "max_prompt_length": 48,
             "reward_model": reward_model.fine_tuned_model}
    if mtype == "ppo":
        small.update(steps=2, rollouts_per_step=4, minibatch_size=2, ppo_epochs=1)
    else:
        small.update(max_steps=2, num_generations=2, hyperparameters={"batch_size": 4})
    job = run(client_a, files, mtype, small, "prompts", "prompts_valid")
    metrics = job.model_extra["result"]["metrics"]
    assert math.isfinite(metrics["valid_mean_reward"])
    assert math.isfinite(metrics["valid_kl"])
