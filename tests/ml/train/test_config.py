"""ml.config: validation naming dotted params, dict round trip, OpenAI-style auto values, Alpaca recipe."""

from __future__ import annotations

import pytest

from ml.config import (
    AUTO_LR_MULTIPLIER_AT_BATCH_4,
    AUTO_LR_MULTIPLIER_RANGE,
    BASE_LEARNING_RATE,
    ConfigError,
    DeepSpeedSettings,
    LoraSettings,
    SupervisedConfig,
    auto_batch_size,
    auto_epochs,
    auto_lr_multiplier,
    config_field_docs,
    resolve_auto,
)


def test_defaults_are_valid_and_round_trip():
    c = SupervisedConfig()
    assert c.adapter == "lora" and c.lora.r == 16 and not c.is_resolved
    d = c.to_dict()
    assert d["lora"]["target_modules"] == "all-linear" and d["deepspeed"] is None
    assert SupervisedConfig.from_dict(d) == c
    c2 = SupervisedConfig.from_dict(
        {
            "adapter": "full",
            "deepspeed": {"stage": 3, "offload": True},
            "lora": {"target_modules": ["q_proj"]},
        }
    )
    assert c2.deepspeed == DeepSpeedSettings(3, True) and c2.lora.target_modules == ("q_proj",)
    assert SupervisedConfig.from_dict(c2.to_dict()) == c2


@pytest.mark.parametrize(
    ("d", "param"),
    [
        ({"lora": {"r": 0}}, "lora.r"),
        ({"lora": {"dropout": 1.5}}, "lora.dropout"),
        ({"lora": {"bogus": 1}}, "lora.bogus"),
        ({"quant": {"bits": 3}}, "quant.bits"),
        ({"deepspeed": {"stage": 1}}, "deepspeed.stage"),
        ({"adapter": "qlora", "deepspeed": {"stage": 2}}, "deepspeed"),
        ({"n_epochs": 0}, "n_epochs"),
        ({"n_epochs": True}, "n_epochs"),
        ({"n_epochs": "many"}, "n_epochs"),
        ({"learning_rate": -1e-4}, "learning_rate"),
        ({"learning_rate_multiplier": 0}, "learning_rate_multiplier"),
        ({"lr_scheduler": "exp"}, "lr_scheduler"),
        ({"warmup_ratio": 0.9}, "warmup_ratio"),
        ({"packing": "yes"}, "packing"),
        ({"batch_size": 8, "micro_batch_size": 16}, "micro_batch_size"),
        ({"batch_size": 12, "gradient_accumulation": 5}, "gradient_accumulation"),
        ({"batch_size": 8, "micro_batch_size": 3, "gradient_accumulation": 2}, "gradient_accumulation"),
        ({"epochs": 3}, "epochs"),
    ],
)
def test_errors_name_the_param(d, param):
    with pytest.raises(ConfigError) as e:
        SupervisedConfig.from_dict(d)
    assert e.value.param == param
    assert param in str(e.value)


def test_direct_construction_checks_too():
    with pytest.raises(ConfigError, match="alpha"):
        LoraSettings(alpha=0)


def test_auto_epochs_and_batch_follow_openai():
    assert auto_epochs(10) == 10  # 100 // 10
    assert auto_epochs(2) == 25  # capped
    assert auto_epochs(1000) == 3
    assert auto_epochs(100_000) == 1
    assert auto_epochs(10_000) == 2
    assert auto_batch_size(40) == 1
    assert auto_batch_size(5000) == 10
    assert auto_batch_size(10**6) == 256


def test_resolve_auto():
    c = resolve_auto(SupervisedConfig(), n_examples=5000, n_tokens=5000 * 300)
    assert c.is_resolved
    assert (c.n_epochs, c.batch_size) == (3, 10)
    # 2048-token budget / 300 tokens -> cap 6; largest divisor of 10 that fits is 5.
    assert (c.micro_batch_size, c.gradient_accumulation) == (5, 2)
    assert c.peak_learning_rate == pytest.approx(
        BASE_LEARNING_RATE["lora"] * AUTO_LR_MULTIPLIER_AT_BATCH_4["lora"] * (10 / 4) ** 0.5, rel=1e-3
    )
    steps = 3 * 500
    assert c.eval_interval == steps // 10 and c.checkpoint_interval == 250
    assert c.bf16 is False
    # Explicit values survive.
    c2 = resolve_auto(SupervisedConfig(n_epochs=1, batch_size=4, learning_rate=1e-3), 100, 1000)
    assert (c2.n_epochs, c2.batch_size, c2.peak_learning_rate) == (1, 4, 1e-3)
    # Two devices: the per-device batch is split.
    c3 = resolve_auto(SupervisedConfig(batch_size=16, micro_batch_size=4), 100, 1000, n_devices=2)
    assert (c3.micro_batch_size, c3.gradient_accumulation) == (4, 2)
    with pytest.raises(ConfigError, match="batch_size"):
        resolve_auto(SupervisedConfig(batch_size=5), 100, 1000, n_devices=2)


BATCH_SIZES = (1, 2, 4, 8, 16, 32)


@pytest.mark.parametrize("adapter", ["lora", "qlora", "full"])
@pytest.mark.parametrize("batch", BATCH_SIZES)
def test_every_batch_size_resolves_for_every_adapter(adapter, batch):
    """A user-set batch size with everything else default: valid, split exactly, and a calibrated rate."""
    c = SupervisedConfig.from_dict({"adapter": adapter, "batch_size": batch})
    for n_examples, mean_len in ((40, 60), (40, 1500), (5000, 300)):
        r = resolve_auto(c, n_examples, n_examples * mean_len)
        assert r.is_resolved and r.batch_size == batch
        assert r.micro_batch_size * r.gradient_accumulation == batch
        lo, hi = AUTO_LR_MULTIPLIER_RANGE
        assert lo <= r.learning_rate_multiplier <= hi
        assert r.peak_learning_rate == pytest.approx(
            BASE_LEARNING_RATE[adapter] * auto_lr_multiplier(batch, adapter)
        )


def test_auto_learning_rate_is_calibrated_per_adapter_and_grows_with_batch():
    # The case a user reported: ~40 examples, batch 4, 3 epochs (30 steps) at the old 1.4e-4 learned the
    # chat template but not the fact; bench/fact_sweep.py calibrated LoRA at batch 4 to 4e-4.
    lora4 = resolve_auto(SupervisedConfig(batch_size=4, n_epochs=3), 40, 40 * 60)
    assert lora4.peak_learning_rate == pytest.approx(4e-4)
    full4 = resolve_auto(SupervisedConfig(adapter="full", batch_size=4), 40, 40 * 60)
    assert full4.peak_learning_rate == pytest.approx(lora4.peak_learning_rate / 10)  # LoRA ~10x full
    for adapter in ("lora", "qlora", "full"):
        mults = [auto_lr_multiplier(b, adapter) for b in BATCH_SIZES]
        assert mults == sorted(mults) and mults[0] < mults[-1]
        assert auto_lr_multiplier(4, adapter) == AUTO_LR_MULTIPLIER_AT_BATCH_4[adapter]
    # An explicit multiplier or rate wins over "auto".
    assert resolve_auto(SupervisedConfig(batch_size=4, learning_rate_multiplier=1.0), 40, 2400).peak_learning_rate \
        == pytest.approx(BASE_LEARNING_RATE["lora"])


def test_alpaca_recipe_is_expressible():
    c = SupervisedConfig(
        adapter="full",
        n_epochs=3,
        batch_size=128,
        micro_batch_size=4,
        learning_rate=2e-5,
        max_seq_length=512,
        weight_decay=0.0,
        warmup_ratio=0.03,
        lr_scheduler="cosine",
    )
    r = resolve_auto(c, n_examples=52_002, n_tokens=52_002 * 150)
    assert (r.batch_size, r.micro_batch_size, r.gradient_accumulation) == (128, 4, 32)
    assert r.peak_learning_rate == 2e-5 and r.lr_scheduler == "cosine" and r.n_epochs == 3


def test_every_field_has_a_docstring():
    docs = config_field_docs(SupervisedConfig)
    from dataclasses import fields

    assert {f.name for f in fields(SupervisedConfig)} <= set(docs)
    assert "rank" in config_field_docs(LoraSettings)["r"].lower()
