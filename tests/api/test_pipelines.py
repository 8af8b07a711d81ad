"""The three-stage InstructGPT pipeline through the API on the tiny model: SFT -> reward model -> PPO,
each stage a normal job that starts from the previous stage's output."""

import time

import httpx2 as httpx
import pytest

from tests.api.test_jobs import TERMINAL, wait_status
from tests.support.data import preference_rows, prompt_rows, sft_rows, write_jsonl

SMALL = {
    "sft": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}, "max_seq_length": 64},
    "reward_model": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}, "micro_batch_size": 4, "max_length": 64},
    "ppo": {"steps": 2, "rollouts_per_step": 4, "minibatch_size": 2, "ppo_epochs": 1,
            "sampling": {"max_new_tokens": 8}, "max_prompt_length": 48},
}


@pytest.fixture(scope="module")
def files(client_a, tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    up = lambda name, rows: client_a.files.create(file=write_jsonl(d / name, rows).open("rb"), purpose="fine-tune").id
    return up("sft.jsonl", sft_rows(12)), up("pref.jsonl", preference_rows(12)), up("prompts.jsonl", prompt_rows(12))


def post(service, key, path, body=None):
    return httpx.post(service.v1 + path, headers={"Authorization": f"Bearer {key}"}, json=body, timeout=60)


def get(service, key, path):
    return httpx.get(service.v1 + path, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def wait_pipeline(service, key, pid, timeout=900):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        p = get(service, key, f"/fine_tuning/pipelines/{pid}").json()
        if p["status"] != "running":
            return p
        time.sleep(1)
    raise AssertionError(f"pipeline stuck: {p}")


def test_pipeline_runs_three_chained_stages(service, key_a, client_a, files):
    sft, pref, prompts = files
    r = post(service, key_a, "/fine_tuning/pipelines", {
        "model": "tiny-llama", "sft_file": sft, "preference_file": pref, "prompts_file": prompts,
        "suffix": "rlhf", "stages": SMALL})
    assert r.status_code == 200, r.text
    p = r.json()
    assert [s["name"] for s in p["stages"]] == ["sft", "reward_model", "ppo"]
    assert [s["status"] for s in p["stages"]] == ["queued", "waiting", "waiting"]
    p = wait_pipeline(service, key_a, p["id"])
    assert p["status"] == "succeeded", p["error"]
    sft_job, rm_job, ppo_job = (client_a.fine_tuning.jobs.retrieve(s["job_id"]) for s in p["stages"])
    assert rm_job.model == sft_job.fine_tuned_model  # the reward model starts from the SFT model
    assert ppo_job.model == sft_job.fine_tuned_model
    assert ppo_job.model_extra["extra_files"]["reward_model"] == rm_job.fine_tuned_model
    assert p["fine_tuned_model"] == ppo_job.fine_tuned_model
    r = client_a.chat.completions.create(model=p["fine_tuned_model"], messages=[{"role": "user", "content": "hi"}],
                                         max_tokens=4)
    assert r.choices[0].message.content is not None
    # the reward model scores through /v1/rewards
    scores = post(service, key_a, "/rewards", {"model": rm_job.fine_tuned_model, "items": [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello, dear guest!"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Go away."}]}]})
    assert scores.status_code == 200, scores.text
    assert len(scores.json()["data"]) == 2
    metrics = [e for e in client_a.fine_tuning.jobs.list_events(ppo_job.id, limit=100).data if e.type == "metrics"]
    assert metrics and {"reward_mean", "kl"} & set(metrics[0].data)


def test_cancelled_stage_stops_the_chain_and_names_it(service, key_a, client_a, files):
    sft, pref, prompts = files
    slow = {**SMALL, "sft": {"max_steps": 500, "max_seq_length": 64, "checkpoint_interval": 1000}}
    p = post(service, key_a, "/fine_tuning/pipelines", {
        "model": "tiny-llama", "sft_file": sft, "preference_file": pref, "prompts_file": prompts,
        "stages": slow}).json()
    first = p["stages"][0]["job_id"]
    wait_status(client_a, first, ("running",) + TERMINAL)
    client_a.fine_tuning.jobs.cancel(first)
    p = wait_pipeline(service, key_a, p["id"], timeout=120)
    assert p["status"] == "cancelled" and p["error"]["stage"] == "sft"
    assert [s["status"] for s in p["stages"]] == ["cancelled", "cancelled", "cancelled"]


def test_pipeline_bad_stage_setting_is_400(service, key_a, files):
    sft, pref, prompts = files
    r = post(service, key_a, "/fine_tuning/pipelines", {
        "model": "tiny-llama", "sft_file": sft, "preference_file": pref, "prompts_file": prompts,
        "stages": {"ppo": {"kl_coef": -1}}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stages.ppo.kl_coef"  # the pipeline's own field
    r = post(service, key_a, "/fine_tuning/pipelines", {
        "model": "tiny-llama", "sft_file": pref, "preference_file": pref, "prompts_file": prompts})
    assert r.status_code == 400 and r.json()["error"]["param"] == "sft_file"
