"""The 3-stage pipeline the API offers: SFT (LoRA) -> reward model from the SFT output -> PPO from the SFT
output judged by that reward model. Tiny model, a couple of steps per stage: it checks the hand-offs."""

import json
import math

import torch

from ml.config import LoraSettings, SupervisedConfig
from ml.events import PrintSink
from ml.models import load_causal_lm
from ml.records import Conversation, Message, write_canonical
from ml.rl.config import PPOConfig, RewardModelConfig, SamplingSettings
from ml.rl.ppo import run_ppo
from ml.rl.reward import run_reward_model
from ml.rl.reward_model import load_reward_model, score
from ml.train.sft import run_supervised

LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


def test_sft_then_reward_model_then_ppo(tiny_model_path, preference_files, prompts_file, tmp_path):
    from peft import PeftModel

    sft_file = tmp_path / "sft.jsonl"
    write_canonical(
        sft_file,
        [
            Conversation((Message("user", f"Question {i}?"), Message("assistant", "YES no")))
            for i in range(16)
        ],
    )
    sft_cfg = SupervisedConfig(
        adapter="lora",
        lora=LORA,
        n_epochs=1,
        batch_size=8,
        micro_batch_size=8,
        gradient_accumulation=1,
        learning_rate=1e-3,
        max_steps=2,
        bf16=False,
        packing=False,
    )
    sft = run_supervised(sft_cfg, tiny_model_path, sft_file, None, tmp_path / "sft", PrintSink(verbose=False))
    assert sft.status == "succeeded" and (sft.model_dir / "adapter_config.json").exists()

    rm_cfg = RewardModelConfig(max_steps=2, batch_size=8, micro_batch_size=8, lora=LORA)
    rm = run_reward_model(
        rm_cfg,
        sft.model_dir,
        preference_files["train"],
        preference_files["valid"],
        tmp_path / "rm",
        PrintSink(verbose=False),
    )
    assert rm.status == "succeeded" and rm.base_model == tiny_model_path
    model, tok = load_reward_model(rm.model_dir)
    assert all(
        math.isfinite(x) for x in score(model, tok, [[Message("user", "hi"), Message("assistant", "yo")]])
    )

    ppo_cfg = PPOConfig(
        steps=2,
        rollouts_per_step=4,
        minibatch_size=4,
        ppo_epochs=1,
        learning_rate=1e-3,
        lora=LORA,
        sampling=SamplingSettings(max_new_tokens=4),
    )
    sink = PrintSink(verbose=False)
    ppo = run_ppo(ppo_cfg, sft.model_dir, prompts_file, rm.model_dir, tmp_path / "ppo", sink)
    assert ppo.status == "succeeded" and ppo.steps == 2
    # The PPO reference is the SFT model: the first rollout has zero KL to it.
    assert abs(sink.steps[0][1]["kl"]) < 1e-4

    # One adapter over the ORIGINAL base that contains SFT + PPO (rank 4 + 4).
    cfg = json.loads((ppo.model_dir / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["base_model_name_or_path"] == str(tiny_model_path)
    meta = json.loads((ppo.model_dir / "chatforge.json").read_text())
    assert meta["base_model"] == str(tiny_model_path) and meta["started_from"] == str(sft.model_dir)
    # (Exactness of the fold is tested in test_start_and_config.) It loads and serves over the base.
    x = torch.randint(0, 1000, (1, 6))
    with torch.no_grad():
        ppo_logits = PeftModel.from_pretrained(load_causal_lm(tiny_model_path), str(ppo.model_dir))(
            input_ids=x
        ).logits
        base_logits = load_causal_lm(tiny_model_path)(input_ids=x).logits
    assert not torch.allclose(ppo_logits, base_logits)
