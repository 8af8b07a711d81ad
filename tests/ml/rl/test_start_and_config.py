import json

import pytest
import torch

from ml.config import ConfigError, LoraSettings, config_field_docs
from ml.models import load_causal_lm, load_tokenizer
from ml.rl.config import (
    DPOConfig,
    GRPOConfig,
    PPOConfig,
    RewardModelConfig,
    RLOOConfig,
    SamplingSettings,
)
from ml.rl.start import (
    load_start_causal_lm,
    load_start_sequence_classifier,
    materialize,
    resolve_start,
    write_policy_adapter,
)

ALL = (RewardModelConfig, DPOConfig, PPOConfig, RLOOConfig, GRPOConfig)


@pytest.fixture(scope="module")
def sft_adapter(tiny_model_path, tmp_path_factory):
    """A random (non-zero) LoRA adapter folder standing in for an SFT output."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        load_causal_lm(tiny_model_path),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    d = tmp_path_factory.mktemp("sft")
    model.save_pretrained(str(d))
    load_tokenizer(tiny_model_path).save_pretrained(str(d))
    return d


def test_resolve_start(tiny_model_path, sft_adapter, tmp_path):
    assert resolve_start(tiny_model_path).adapter is None
    s = resolve_start(sft_adapter)
    assert s.base == tiny_model_path and s.adapter == sft_adapter and s.tokenizer_dir == sft_adapter
    with pytest.raises(FileNotFoundError):
        resolve_start(tmp_path / "missing")


def test_stacked_adapter_reproduces_merged_sft_plus_rl_adapter(tiny_model_path, sft_adapter, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    start = resolve_start(sft_adapter)
    torch.manual_seed(1)
    policy = get_peft_model(
        load_start_causal_lm(start),
        LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "o_proj"], init_lora_weights=False
        ),
    )
    x = torch.randint(0, 1000, (2, 9))
    with torch.no_grad():
        expected = policy(input_ids=x).logits
    write_policy_adapter(policy, start, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert cfg["r"] == 12 and cfg["base_model_name_or_path"] == str(tiny_model_path)
    served = PeftModel.from_pretrained(load_causal_lm(tiny_model_path), str(tmp_path / "out"))
    with torch.no_grad():
        got = served(input_ids=x).logits
    assert torch.allclose(got, expected, atol=1e-4)
    with torch.no_grad():
        base = load_causal_lm(tiny_model_path)(input_ids=x).logits
    assert not torch.allclose(base, expected, atol=1e-2)


def test_sequence_classifier_from_adapter_keeps_the_merged_backbone(sft_adapter, tmp_path):
    start = resolve_start(sft_adapter)
    rm = load_start_sequence_classifier(start)
    lm = load_start_causal_lm(start)
    for k, v in lm.base_model.state_dict().items():
        assert torch.equal(rm.base_model.state_dict()[k], v), k
    full = materialize(start, tmp_path / "merged")
    assert full.adapter is None and (full.base / "config.json").exists()
    assert torch.equal(
        load_causal_lm(full.base).model.layers[0].self_attn.q_proj.weight,
        lm.model.layers[0].self_attn.q_proj.weight,
    )


@pytest.mark.parametrize("cls", ALL)
def test_configs_round_trip_and_document_every_field(cls):
    cfg = cls()
    assert cls.from_dict(cfg.to_dict()) == cfg
    from dataclasses import fields

    docs = config_field_docs(cls)
    assert {f.name for f in fields(cls)} == set(docs)
    assert all(docs.values())


@pytest.mark.parametrize(
    "cls, bad, param",
    [
        (PPOConfig, {"minibatch_size": 3}, "minibatch_size"),
        (PPOConfig, {"sampling": {"top_p": 0}}, "sampling.top_p"),
        (PPOConfig, {"lora": {"r": 0}}, "lora.r"),
        (PPOConfig, {"gamma": 1.5}, "gamma"),
        (DPOConfig, {"beta": 0}, "beta"),
        (DPOConfig, {"loss_type": "nope"}, "loss_type"),
        (DPOConfig, {"label_smoothing": 0.5}, "label_smoothing"),
        (RewardModelConfig, {"adapter": "qlora"}, "adapter"),
        (RewardModelConfig, {"batch_size": 8, "micro_batch_size": 3}, "micro_batch_size"),
        (GRPOConfig, {"batch_size": 3, "micro_batch_size": 8}, "micro_batch_size"),
        (DPOConfig, {"batch_size": 4, "micro_batch_size": 8}, "micro_batch_size"),
        (PPOConfig, {"rollouts_per_step": 6, "minibatch_size": 4}, "minibatch_size"),
        (GRPOConfig, {"num_generations": 1}, "num_generations"),
        (RLOOConfig, {"unknown": 1}, "unknown"),
    ],
)
def test_config_errors_name_the_parameter(cls, bad, param):
    with pytest.raises(ConfigError) as e:
        cls.from_dict(bad)
    assert e.value.param == param


def test_nested_settings_from_dicts():
    cfg = PPOConfig.from_dict(
        {"sampling": {"temperature": 0.7}, "lora": {"r": 4, "target_modules": ["q_proj"]}}
    )
    assert cfg.sampling == SamplingSettings(temperature=0.7)
    assert cfg.lora == LoraSettings(r=4, target_modules=("q_proj",))
    # RLOO/GRPO: batch_size counts prompts; a step trains on batch_size * num_generations completions.
    assert RLOOConfig(batch_size=2, micro_batch_size=4).gradient_accumulation == 2


BATCH_SIZES = (1, 2, 4, 8, 16, 32)


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("batch", BATCH_SIZES)
def test_every_batch_size_splits_into_equal_forward_passes(cls, batch):
    """A user-set batch size with every other setting at its default is a valid config, and the
    "auto" memory knob splits its step into equal forward passes no larger than the default."""
    if cls is PPOConfig:
        cfg = cls(rollouts_per_step=batch)
        assert cfg.batch_size == batch
        mb = cfg.resolved_minibatch_size
        assert batch % mb == 0 and mb == max(d for d in (1, 2, 4) if batch % d == 0)
        return
    cfg = cls(batch_size=batch)
    per_step = batch * cfg.num_generations if cls in (RLOOConfig, GRPOConfig) else batch
    assert cfg.examples_per_step == per_step
    micro = cfg.resolved_micro_batch_size
    assert micro * cfg.gradient_accumulation == per_step
    assert micro == max(d for d in range(1, 9) if per_step % d == 0)
    assert cls.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("method", ["reward_model", "dpo", "rloo", "grpo"])
@pytest.mark.parametrize("batch", BATCH_SIZES)
def test_trl_accepts_every_batch_size(method, batch, tmp_path):
    """The trl config each recipe builds (trl checks that a generation batch holds whole prompt groups)."""
    import trl

    from ml.rl.online import _method_fields
    from ml.rl.recipe import trl_args

    cls, trl_cls = {"reward_model": (RewardModelConfig, trl.RewardConfig), "dpo": (DPOConfig, trl.DPOConfig),
                    "rloo": (RLOOConfig, trl.RLOOConfig), "grpo": (GRPOConfig, trl.GRPOConfig)}[method]
    cfg = cls(batch_size=batch)
    extra = _method_fields(cfg) if method in ("rloo", "grpo") else {}
    args = trl_args(trl_cls, cfg, tmp_path, False, **extra)
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == cfg.examples_per_step
    if method in ("rloo", "grpo"):
        assert args.generation_batch_size == batch * cfg.num_generations
