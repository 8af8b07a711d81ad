import json

import pytest

from ml.config import LoraSettings
from ml.data.render import render_prompt
from ml.events import PrintSink
from ml.models import load_tokenizer
from ml.records import Conversation, Message, PreferenceExample, PromptExample, write_canonical
from ml.rl.config import GRPOConfig, RLOOConfig, SamplingSettings
from ml.rl.online import _RenderedPrompts, run_grpo, run_rloo
from ml.rl.prompts import read_prompts
from ml.rl.reward_source import TrlRewardFunc, encode_prompt

from .toys import sampled_reward, upper_fraction

HISTORY = (
    Message("system", "Be brief."),
    Message("user", "Hi"),
    Message("assistant", "Hello!", weight=0),
    Message("user", "Question?"),
)


def online_config(cls, **kw):
    base = {
        "max_steps": 8,
        "batch_size": 4,
        "micro_batch_size": 16,
        "num_generations": 4,
        "learning_rate": 1e-2,
        "beta": 0.01,
        "lora": LoraSettings(r=8, alpha=16, dropout=0.0),
        "sampling": SamplingSettings(max_new_tokens=10),
    }
    return cls(**{**base, **kw})


def test_prompts_come_from_any_canonical_kind(tmp_path):
    write_canonical(tmp_path / "p.jsonl", [PromptExample(HISTORY)])
    write_canonical(
        tmp_path / "pref.jsonl",
        [PreferenceExample(HISTORY, Message("assistant", "a"), Message("assistant", "b"))],
    )
    write_canonical(tmp_path / "sft.jsonl", [Conversation(HISTORY + (Message("assistant", "Answer."),))])
    for name in ("p.jsonl", "pref.jsonl", "sft.jsonl"):
        assert read_prompts(tmp_path / name) == [HISTORY]


def test_trl_sees_prompts_tokenised_by_render_and_rewards_see_full_conversations(tiny_model_path):
    tok = load_tokenizer(tiny_model_path)

    class Fake(_RenderedPrompts):
        processing_class = tok
        max_prompt_length = 1000

    encoded = encode_prompt(HISTORY)
    ids, images, extra = Fake()._tokenize_prompts([encoded])
    assert ids == [render_prompt(tok, HISTORY)] and images is None and extra == {}
    Fake.max_prompt_length = 5
    assert Fake()._tokenize_prompts([encoded])[0] == [render_prompt(tok, HISTORY)[-5:]]

    seen = []
    fn = TrlRewardFunc(lambda convs: seen.extend(convs) or [1.0] * len(convs))
    assert fn([encoded, encoded], ["YES", [{"role": "assistant", "content": "no"}]]) == [1.0, 1.0]
    assert seen[0] == HISTORY + (Message("assistant", "YES"),)
    assert seen[1][-1] == Message("assistant", "no") and seen[1][2].weight == 0


@pytest.mark.parametrize("method", ["rloo", "grpo"])
def test_online_rl_raises_reward(method, yes_no_policy_path, prompts_file, tmp_path, monkeypatch):
    from ml.serve.batch_sample import LiveSampler

    sampled, real = [], LiveSampler.sample

    def counting(self, prompts, **kw):
        out = real(self, prompts, **kw)
        sampled.append(out is not None and out.shape[0] == len(prompts))
        return out

    monkeypatch.setattr(LiveSampler, "sample", counting)
    run, cls = (run_rloo, RLOOConfig) if method == "rloo" else (run_grpo, GRPOConfig)
    sink = PrintSink(verbose=False)
    res = run(online_config(cls), yes_no_policy_path, prompts_file, upper_fraction, tmp_path, sink)
    assert sampled and all(sampled)  # every rollout was sampled by the engine's decoder, not generate
    assert res.status == "succeeded" and res.steps == 8 and res.method == method
    rewards = [m["mean_reward"] for _, m in sink.steps if "mean_reward" in m]
    kls = [m["kl"] for _, m in sink.steps if "kl" in m]
    assert len(rewards) == 8 and len(kls) == 8
    assert max(kls) < 5.0, kls
    # The saved adapter's replies score higher than the starting model's (64 samples each; measured
    # 0.48 -> 0.75..0.88 over seeds 2 and 42 for both methods; per-step training means are too noisy).
    d = res.model_dir
    before = sampled_reward(yes_no_policy_path, None, upper_fraction)
    after = sampled_reward(yes_no_policy_path, d, upper_fraction)
    assert after > before + 0.15, (before, after, rewards)
    assert (d / "adapter_config.json").exists()
    meta = json.loads((d / "chatforge.json").read_text())
    assert meta["method"] == method and meta["base_model"] == str(yes_no_policy_path)
