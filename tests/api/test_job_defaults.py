"""Every method accepts every common batch size with all other settings at their defaults: the API creates
the job (no 400 about a default the user never set, such as micro_batch_size), the worker's translation of
the stored job (chatforge.jobconfig.config_for, then resolve_auto for supervised) yields a runnable config,
and cancelling right away ends the job cancelled, never failed. Explicit conflicts still get a 400 naming
the field. Through the openai SDK on the tiny model; no training runs except one 1-step reward model that
the online RL methods need."""

import openai
import pytest

from chatforge.jobconfig import config_for
from ml.config import resolve_auto
from tests.api.test_jobs import TERMINAL, wait_status
from tests.support.data import preference_rows, prompt_rows, sft_rows, write_jsonl

METHODS = ("supervised", "dpo", "reward_model", "ppo", "rloo", "grpo")
BATCH_SIZES = (1, 2, 4, 8, 16, 32)
FILE_KIND = {"supervised": "sft", "dpo": "pref", "reward_model": "pref", "ppo": "prompts", "rloo": "prompts",
             "grpo": "prompts"}


@pytest.fixture(scope="module")
def files(client_a, tmp_path_factory):
    d = tmp_path_factory.mktemp("defaults")

    def up(name, rows):
        return client_a.files.create(file=write_jsonl(d / name, rows).open("rb"), purpose="fine-tune").id

    return {"sft": up("sft.jsonl", sft_rows(40)), "pref": up("pref.jsonl", preference_rows(12)),
            "prompts": up("prompts.jsonl", prompt_rows(32)), "few_prompts": up("few.jsonl", prompt_rows(10))}


@pytest.fixture(scope="module")
def reward_model(client_a, files):
    """The cheapest real reward model: one optimizer step on the tiny model."""
    job = client_a.fine_tuning.jobs.create(
        model="tiny-llama", training_file=files["pref"], suffix="rm",
        method={"type": "reward_model", "reward_model": {"max_steps": 1, "max_length": 64,
                                                         "hyperparameters": {"batch_size": 2}}})
    job = wait_status(client_a, job.id, TERMINAL, timeout=600)
    assert job.status == "succeeded", job.error
    return job.fine_tuned_model


def create(client, files, mtype, settings):
    return client.fine_tuning.jobs.create(model="tiny-llama", training_file=files[FILE_KIND[mtype]],
                                          method={"type": mtype, mtype: settings})


@pytest.mark.parametrize("mtype", METHODS)
def test_every_batch_size_is_accepted_with_defaults(client_a, files, reward_model, mtype):
    created = []
    for batch in BATCH_SIZES:
        settings = {"hyperparameters": {"batch_size": batch}}
        if mtype in ("ppo", "rloo", "grpo"):
            settings["reward_model"] = reward_model
        job = create(client_a, files, mtype, settings)
        created.append(job)
        client_a.fine_tuning.jobs.cancel(job.id)
        assert job.status == "queued", (batch, job.status, job.error)
        method = job.method.to_dict()
        assert method[mtype]["hyperparameters"]["batch_size"] == batch

        # What the worker does with the stored job before training.
        cfg = config_for(method)
        if mtype == "supervised":
            r = resolve_auto(cfg, n_examples=40, n_tokens=40 * 60)
            assert r.batch_size == batch and r.micro_batch_size * r.gradient_accumulation == batch
        elif mtype == "ppo":
            assert cfg.rollouts_per_step == batch and batch % cfg.resolved_minibatch_size == 0
        else:
            assert cfg.batch_size == batch
            assert cfg.resolved_micro_batch_size * cfg.gradient_accumulation == cfg.examples_per_step
    for job in created:
        final = wait_status(client_a, job.id, TERMINAL, timeout=300)
        assert final.status == "cancelled", (job.id, final.status, final.error)


@pytest.mark.parametrize("mtype", ["rloo", "grpo"])
def test_more_prompts_per_step_than_the_file_holds_is_a_400(client_a, files, reward_model, mtype):
    """RLOO and GRPO sample whole batches of prompts: 16 per step cannot come from a file of 10."""
    with pytest.raises(openai.BadRequestError) as e:
        client_a.fine_tuning.jobs.create(model="tiny-llama", training_file=files["few_prompts"], method={
            "type": mtype, mtype: {"reward_model": reward_model, "hyperparameters": {"batch_size": 16}}})
    assert e.value.body["param"] == f"method.{mtype}.batch_size", e.value.body
    assert "the training file has 10 prompts" in e.value.body["message"]


@pytest.mark.parametrize(
    ("mtype", "settings", "param"),
    [
        ("dpo", {"hyperparameters": {"batch_size": 4}, "micro_batch_size": 8}, "method.dpo.micro_batch_size"),
        ("grpo", {"hyperparameters": {"batch_size": 3}, "micro_batch_size": 8}, "method.grpo.micro_batch_size"),
        ("ppo", {"hyperparameters": {"batch_size": 4}, "rollouts_per_step": 8}, "method.ppo.batch_size"),
        ("ppo", {"rollouts_per_step": 6, "minibatch_size": 4}, "method.ppo.minibatch_size"),
        ("supervised", {"hyperparameters": {"batch_size": 4}, "micro_batch_size": 8},
         "method.supervised.micro_batch_size"),
    ],
)
def test_explicit_conflicts_are_a_400_naming_the_field(client_a, files, reward_model, mtype, settings, param):
    if mtype in ("ppo", "grpo"):
        settings = {**settings, "reward_model": reward_model}
    with pytest.raises(openai.BadRequestError) as e:
        create(client_a, files, mtype, settings)
    assert e.value.body["param"] == param, e.value.body
    assert param.split(".")[-1] in e.value.body["message"]
