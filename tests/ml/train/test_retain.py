"""The replay penalty toward the base model's own answers (ml.train.retain) on the tiny model."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from ml.config import ConfigError, LoraSettings, SupervisedConfig, resolve_auto
from ml.models import load_causal_lm, load_tokenizer
from ml.train.retain import RETAIN_PROMPTS, build_retain_set, cached_retain_set, retain_loss
from ml.train.sft import run_supervised
from ml.train.trainable import load_trainable_model
from tests.ml.train.conftest import StopAtSink
from tests.ml.train.test_sft import cfg


def mean_retain_kl(model, rs) -> float:
    with torch.no_grad():
        return sum(float(retain_loss(model, rs, i)) for i in range(len(rs))) / len(rs)


def test_the_retain_set_is_the_base_models_answers_and_costs_nothing_before_training(tiny_model_path):
    tok = load_tokenizer(tiny_model_path)
    model = load_trainable_model(tiny_model_path, "lora")
    rs = build_retain_set(model, tok, answer_tokens=8)
    assert len(rs) == len(RETAIN_PROMPTS)
    for i in range(len(rs)):
        n = int(rs.attention_mask[i].sum())
        assert 1 <= len(rs.positions[i]) <= 9 and int(rs.positions[i][-1]) == n - 2  # predicts the last token
        assert torch.allclose(rs.top_probs[i].sum(-1), torch.ones(len(rs.positions[i])), atol=1e-5)
    # a fresh adapter changes nothing (LoRA's B starts at 0): the model is the base, the penalty 0
    assert mean_retain_kl(model, rs) < 1e-5
    # and it is a real distance: nudge the adapter and it grows
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05 * torch.randn_like(p))
    assert mean_retain_kl(model, rs) > 1e-3


def test_auto_is_on_for_adapters_on_one_process_and_off_where_unsupported():
    def resolved(devices=1, **kw):
        return resolve_auto(SupervisedConfig.from_dict(kw), 40, 4000, devices).retain_base

    assert (resolved(adapter="lora"), resolved(adapter="qlora")) == (4.0, 6.0)
    assert resolved(adapter="full") == 0.0
    assert resolved(adapter="lora", devices=2) == 0.0
    assert resolved(adapter="lora", retain_base=0) == 0.0
    assert resolved(adapter="lora", retain_base=3) == 3.0
    with pytest.raises(ConfigError, match="retain_base"):
        SupervisedConfig.from_dict({"adapter": "full", "retain_base": 1})
    with pytest.raises(ConfigError, match="retain_base"):
        resolved(adapter="lora", retain_base=1, devices=2)


def test_training_with_the_penalty_stays_closer_to_the_base_and_still_learns(tiny_model_path, word_data, tmp_path):
    train, _ = word_data
    tok = load_tokenizer(tiny_model_path)
    reference = build_retain_set(load_trainable_model(tiny_model_path, "lora"), tok)
    kls, losses = {}, {}
    for weight in (0, 5):
        sink = StopAtSink()
        r = run_supervised(cfg(n_epochs=3, learning_rate=5e-2, retain_base=weight), tiny_model_path, train, None,
                           tmp_path / f"w{weight}", sink)
        assert r.status == "succeeded" and r.config.retain_base == weight
        assert any("general prompts recorded" in m for m in sink.messages()) == bool(weight)
        trained = PeftModel.from_pretrained(load_causal_lm(tiny_model_path), str(r.model_dir))
        kls[weight] = mean_retain_kl(trained, reference)
        steps = [v["train_loss"] for _, v in sink.steps if "train_loss" in v]
        losses[weight] = (steps[0], sum(steps[-4:]) / 4)
    assert kls[5] < 0.5 * kls[0], kls  # the penalty keeps general answers close to the base model's
    first, last = losses[5]  # the logged loss includes the penalty, so the file's own loss fell at least this much
    assert last < first - 0.05, losses  # still learned (LoRA over a frozen random tiny model learns slowly)


def _same_set(a, b) -> bool:
    return (torch.equal(a.input_ids, b.input_ids) and torch.equal(a.attention_mask, b.attention_mask)
            and all(torch.equal(x, y) for x, y in zip(a.positions, b.positions, strict=True))
            and all(torch.equal(x, y) for x, y in zip(a.top_ids, b.top_ids, strict=True))
            and all(torch.equal(x, y) for x, y in zip(a.top_probs, b.top_probs, strict=True)))


def test_the_retain_set_is_cached_per_base_model_and_recomputed_when_the_base_differs(tiny_model_path, tmp_path):
    tok = load_tokenizer(tiny_model_path)
    cache = tmp_path / "cache"
    first, hit = cached_retain_set(load_trainable_model(tiny_model_path, "lora"), tok, cache)
    assert not hit and len(list(cache.glob("retain-*.pt"))) == 1
    # another job on the same base, with another adapter layout: read back, identical to computing it
    other = load_trainable_model(tiny_model_path, "lora", LoraSettings(r=4, target_modules=("q_proj", "v_proj")))
    again, hit = cached_retain_set(other, tok, cache)
    assert hit and _same_set(again, first) and _same_set(again, build_retain_set(other, tok))

    # a different base (one weight changed): a miss, stored beside the first
    changed = load_trainable_model(tiny_model_path, "lora")
    with torch.no_grad():
        next(p for n, p in changed.named_parameters() if "lora_" not in n).add_(1e-3)
    _, hit = cached_retain_set(changed, tok, cache)
    assert not hit and len(list(cache.glob("retain-*.pt"))) == 2

    # a torn file is a miss, recomputed and rewritten, never an error
    for f in cache.glob("retain-*.pt"):
        f.write_bytes(f.read_bytes()[:100])
    model = load_trainable_model(tiny_model_path, "lora")
    rs, hit = cached_retain_set(model, tok, cache)
    assert not hit and _same_set(rs, first)
    assert cached_retain_set(model, tok, cache)[1]
    assert not list(cache.glob(".*.tmp"))  # nothing half-written left behind


def test_the_replay_set_is_prepared_ahead_as_a_job_will_look_it_up_and_gives_way_when_told(
        tiny_model_path, tmp_path, monkeypatch):
    import shutil

    import ml.train.trainable
    from ml.train.retain import prepare_retain_set

    base = shutil.copytree(tiny_model_path, tmp_path / "base")
    cache = tmp_path / "cache"
    calls = []

    def stop_after(n):
        def stop():
            calls.append(1)
            return len(calls) > n
        return stop

    # told to stop midway (here after a few tokens of the answers): gives up, stores nothing
    assert prepare_retain_set(base, cache, stop_after(3)) is None
    assert not list(cache.glob("retain-*.pt"))
    # left alone: stores exactly what a default LoRA job then finds under its own key
    assert prepare_retain_set(base, cache, lambda: False) is True
    rs, hit = cached_retain_set(load_trainable_model(tiny_model_path, "lora"), load_tokenizer(tiny_model_path), cache)
    assert hit and _same_set(rs, build_retain_set(load_trainable_model(tiny_model_path, "lora"),
                                                  load_tokenizer(tiny_model_path)))
    # asked again: its note says it is done, so it does not even load the model
    monkeypatch.setattr(ml.train.trainable, "load_trainable_model", lambda *a, **k: pytest.fail("loaded again"))
    assert prepare_retain_set(base, cache, lambda: False) is False
    # a changed model folder is another model: its note no longer applies
    (base / "extra.txt").write_text("changed")
    with pytest.raises(pytest.fail.Exception, match="loaded again"):
        prepare_retain_set(base, cache, lambda: False)
