import json

import pytest
import torch

from ml.config import LoraSettings
from ml.events import PrintSink
from ml.models import load_causal_lm, load_tokenizer
from ml.rl.config import DPOConfig
from ml.rl.dpo import run_dpo, sequence_logps
from ml.rl.preferences import load_preferences


def dpo_config(**kw) -> DPOConfig:
    base = {
        "max_steps": 4,
        "learning_rate": 2e-3,
        "beta": 0.1,
        "batch_size": 8,
        "micro_batch_size": 8,
        "lora": LoraSettings(r=8, alpha=16, dropout=0.0),
    }
    return DPOConfig(**{**base, **kw})


def mean_margin(model, rows) -> float:
    chosen = sequence_logps(model, rows, "chosen_ids")
    rejected = sequence_logps(model, rows, "rejected_ids")
    return sum(c - r for c, r in zip(chosen, rejected)) / len(rows)


def test_dpo_raises_held_out_log_prob_margin(tiny_model_path, preference_files, tmp_path):
    from peft import PeftModel

    sink = PrintSink(verbose=False)
    res = run_dpo(dpo_config(), tiny_model_path, preference_files["train"], None, tmp_path, sink)
    assert res.status == "succeeded" and res.steps == 4

    # A standard PEFT adapter folder, like SFT's: adapter + tokenizer + chat template + chatforge.json.
    d = res.model_dir
    assert (d / "adapter_config.json").exists() and (d / "adapter_model.safetensors").exists()
    assert (d / "tokenizer.json").exists() and (d / "chat_template.jinja").exists()
    meta = json.loads((d / "chatforge.json").read_text())
    assert meta["method"] == "dpo" and meta["is_adapter"] and meta["base_model"] == str(tiny_model_path)

    rows = load_preferences(load_tokenizer(tiny_model_path), preference_files["held_out"], 1024).dpo_rows()
    before = mean_margin(load_causal_lm(tiny_model_path), rows)
    after = mean_margin(PeftModel.from_pretrained(load_causal_lm(tiny_model_path), str(d)), rows)
    assert after > before + 0.2, (before, after)

    steps = dict(sink.steps)
    # Step 1 is taken with the adapter still zero, so policy == reference: implicit rewards are 0.
    assert steps[1]["rewards_chosen"] == pytest.approx(0.0, abs=1e-5)
    assert steps[1]["rewards_rejected"] == pytest.approx(0.0, abs=1e-5)
    assert {"margin", "accuracy", "rewards_chosen", "rewards_rejected", "train_loss"} <= set(steps[4])
    assert steps[4]["margin"] > 0


def test_dpo_from_sft_adapter_uses_it_as_reference_and_folds_it_in(
    tiny_model_path, preference_files, tmp_path
):
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    sft = get_peft_model(
        load_causal_lm(tiny_model_path),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    sft_dir = tmp_path / "sft"
    sft.save_pretrained(str(sft_dir))
    load_tokenizer(tiny_model_path).save_pretrained(str(sft_dir))

    sink = PrintSink(verbose=False)
    cfg = dpo_config(
        max_steps=1, lora=LoraSettings(r=8, alpha=16, dropout=0.0, target_modules=("q_proj", "o_proj"))
    )
    res = run_dpo(cfg, sft_dir, preference_files["train"], None, tmp_path / "out", sink)
    assert res.status == "succeeded"
    # The reference is the SFT model (merged), not the raw base: the first step's implicit rewards are 0.
    assert sink.steps[0][1]["rewards_chosen"] == pytest.approx(0.0, abs=1e-5)

    out_cfg = json.loads((res.model_dir / "adapter_config.json").read_text())
    assert out_cfg["r"] == 4 + 8 and out_cfg["base_model_name_or_path"] == str(tiny_model_path)
    # The folded adapter over the original base contains the SFT change: on q_proj/v_proj-only
    # targets the stacked model differs from the base at least as the SFT adapter does.
    x = torch.randint(0, 1000, (1, 8))
    with torch.no_grad():
        base_logits = load_causal_lm(tiny_model_path)(input_ids=x).logits
        sft_logits = PeftModel.from_pretrained(load_causal_lm(tiny_model_path), str(sft_dir))(
            input_ids=x
        ).logits
        out_logits = PeftModel.from_pretrained(load_causal_lm(tiny_model_path), str(res.model_dir))(
            input_ids=x
        ).logits
    # One DPO step at lr 2e-3 moves little: the result stays near the SFT model, far from the base.
    assert (out_logits - sft_logits).abs().max() < (out_logits - base_logits).abs().max()


def test_full_dpo_keeps_a_frozen_reference_copy(tiny_model_path, preference_files, tmp_path):
    sink = PrintSink(verbose=False)
    res = run_dpo(
        dpo_config(adapter="full", max_steps=2, learning_rate=1e-4),
        tiny_model_path,
        preference_files["train"],
        None,
        tmp_path,
        sink,
    )
    assert res.status == "succeeded" and not res.is_adapter
    assert (res.model_dir / "model.safetensors").exists()
    assert sink.steps[0][1]["rewards_chosen"] == pytest.approx(0.0, abs=1e-5)
    assert sink.steps[-1][1]["rewards_chosen"] != pytest.approx(0.0, abs=1e-7)
