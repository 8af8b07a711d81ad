import json
import math

import pytest
import torch

from ml.config import LoraSettings
from ml.events import PrintSink
from ml.models import load_tokenizer
from ml.records import Message
from ml.rl.config import PPOConfig, SamplingSettings
from ml.rl.ppo import prompt_indices, run_ppo
from ml.rl.ppo_policy import ActorCritic
from ml.rl.rollout import collect_rollouts, response_mask
from ml.rl.start import load_start_causal_lm, resolve_start

from .toys import PauseAfter, sampled_reward, upper_fraction

LORA = LoraSettings(r=8, alpha=16, dropout=0.0)


def ppo_config(**kw) -> PPOConfig:
    base = {
        "steps": 10,
        "rollouts_per_step": 16,
        "minibatch_size": 8,
        "ppo_epochs": 2,
        "learning_rate": 2e-3,
        "kl_coef": 0.05,
        "lora": LORA,
        "sampling": SamplingSettings(max_new_tokens=10),
        "checkpoint_interval": 100,
    }
    return PPOConfig(**{**base, **kw})


def test_response_mask_keeps_tokens_through_the_first_end():
    responses = torch.tensor([[5, 6, 2, 2, 2], [5, 2, 7, 2, 9], [5, 6, 7, 8, 9]])
    mask, ended = response_mask(responses, [2])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert ended.tolist() == [True, True, False]


def test_prompt_order_is_a_fresh_shuffle_per_pass_and_reproducible():
    first_pass = prompt_indices(10, 0, 5, seed=3) + prompt_indices(10, 1, 5, seed=3)
    assert sorted(first_pass) == list(range(10))
    assert prompt_indices(10, 1, 5, seed=3) == prompt_indices(10, 1, 5, seed=3)
    assert prompt_indices(10, 2, 5, seed=3) + prompt_indices(10, 3, 5, seed=3) != first_pass


def test_rollout_log_probs_are_the_sampling_distribution(yes_no_policy_path):
    """The PPO "old" log-probs come from the rollout-time policy and match what generate sampled from."""
    torch.manual_seed(0)
    start = resolve_start(yes_no_policy_path)
    tok = load_tokenizer(yes_no_policy_path)
    cfg = ppo_config(
        rollouts_per_step=4, minibatch_size=2, sampling=SamplingSettings(max_new_tokens=6, temperature=0.7)
    )
    model = ActorCritic.build(load_start_causal_lm(start), cfg.lora, cfg.sampling)
    prompts = [(Message("user", "Question 1?"),), (Message("user", "A much longer question number 2?"),)] * 2
    r = collect_rollouts(model, tok, prompts, upper_fraction, cfg)
    assert r.scores.shape == (4,) and r.logprobs.shape == r.response_mask.shape
    # Before any update the adapter is zero: policy == reference, values start at 0.
    assert torch.allclose(r.logprobs, r.ref_logprobs, atol=1e-5)
    assert torch.all(r.values == 0)
    # Re-derive the sampling distribution with generate's own scores for the same tokens.
    P = r.prompt_len
    with torch.no_grad():
        out = model.policy.generate(
            input_ids=r.input_ids[:, :P],
            attention_mask=r.attention_mask[:, :P],
            do_sample=False,
            max_new_tokens=1,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=tok.pad_token_id,
        )
    first = torch.log_softmax(out.scores[0].float() / 0.7, -1).gather(1, r.input_ids[:, P : P + 1]).squeeze(1)
    assert torch.allclose(first, r.logprobs[:, 0], atol=1e-4)


def test_ppo_raises_reward_with_bounded_kl(yes_no_policy_path, prompts_file, tmp_path):
    sink = PrintSink(verbose=False)
    res = run_ppo(ppo_config(), yes_no_policy_path, prompts_file, upper_fraction, tmp_path, sink)
    assert res.status == "succeeded" and res.steps == 10 and res.method == "ppo"
    rewards = [m["mean_reward"] for _, m in sink.steps]
    kls = [m["kl"] for _, m in sink.steps]
    assert sum(rewards[5:]) / 5 > sum(rewards[:2]) / 2 + 0.1, rewards  # +0.16..0.22 over seeds 1-3
    assert kls[0] == pytest.approx(0.0, abs=1e-4)  # the first rollout comes from the reference itself
    assert max(kls) < 10.0, kls
    for _, m in sink.steps:
        assert {"mean_reward", "kl", "policy_loss", "value_loss", "entropy", "clipfrac"} <= set(m)
    d = res.model_dir
    assert (d / "adapter_config.json").exists() and (d / "tokenizer.json").exists()
    before = sampled_reward(yes_no_policy_path, None, upper_fraction)
    assert sampled_reward(yes_no_policy_path, d, upper_fraction) > before + 0.15
    assert json.loads((d / "chatforge.json").read_text())["method"] == "ppo"


def test_ppo_resume_continues_exactly(yes_no_policy_path, prompts_file, tmp_path):
    """Pause after 2 of 4 steps and resume: the same metrics and adapter as an uninterrupted run."""
    from safetensors.torch import load_file

    cfg = ppo_config(
        steps=4,
        rollouts_per_step=4,
        minibatch_size=2,
        sampling=SamplingSettings(max_new_tokens=5),
        checkpoint_interval=100,
    )
    straight = PrintSink(verbose=False)
    a = run_ppo(cfg, yes_no_policy_path, prompts_file, upper_fraction, tmp_path / "a", straight)

    pausing = PauseAfter(2)
    paused = run_ppo(cfg, yes_no_policy_path, prompts_file, upper_fraction, tmp_path / "b", pausing)
    assert paused.status == "paused" and paused.steps == 2 and paused.model_dir is None
    assert pausing.checkpoints[-1][0] == 2 and (paused.checkpoint / "value_head.safetensors").exists()
    resumed = PrintSink(verbose=False)
    b = run_ppo(cfg, yes_no_policy_path, prompts_file, upper_fraction, tmp_path / "b", resumed)
    assert b.status == "succeeded" and [s for s, _ in resumed.steps] == [3, 4]

    for (sa, ma), (sb, mb) in zip(straight.steps[2:], resumed.steps):
        assert sa == sb
        for k in ("mean_reward", "kl", "policy_loss", "value_loss"):
            assert ma[k] == pytest.approx(mb[k], rel=1e-4, abs=1e-6), k
    wa = load_file(str(a.model_dir / "adapter_model.safetensors"))
    wb = load_file(str(b.model_dir / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_ppo_cancel_saves_nothing(yes_no_policy_path, prompts_file, tmp_path):
    cfg = ppo_config(
        steps=5, rollouts_per_step=2, minibatch_size=2, sampling=SamplingSettings(max_new_tokens=4)
    )
    sink = PauseAfter(1, "cancel")
    res = run_ppo(cfg, yes_no_policy_path, prompts_file, upper_fraction, tmp_path, sink)
    assert res.status == "cancelled" and res.steps == 1 and res.model_dir is None
    assert res.checkpoint is None and not (tmp_path / "model").exists()


def test_ppo_with_a_reward_model_folder(
    tiny_model_path, yes_no_policy_path, preference_files, prompts_file, tmp_path
):
    from ml.rl.config import RewardModelConfig
    from ml.rl.reward import run_reward_model

    rm = run_reward_model(
        RewardModelConfig(max_steps=2, batch_size=8, micro_batch_size=8, lora=LORA),
        tiny_model_path,
        preference_files["train"],
        None,
        tmp_path / "rm",
        PrintSink(verbose=False),
    )
    sink = PrintSink(verbose=False)
    cfg = ppo_config(
        steps=2, rollouts_per_step=4, minibatch_size=4, sampling=SamplingSettings(max_new_tokens=5)
    )
    res = run_ppo(cfg, yes_no_policy_path, prompts_file, rm.model_dir, tmp_path / "ppo", sink)
    assert res.status == "succeeded" and res.steps == 2
    rewards = [m["mean_reward"] for _, m in sink.steps]
    assert all(math.isfinite(r) for r in rewards) and len(set(rewards)) == 2  # real, varying scores
