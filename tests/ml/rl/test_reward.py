import json
import math

import pytest

from ml.config import LoraSettings
from ml.events import PrintSink
from ml.records import Message, read_canonical, write_canonical
from ml.rl.config import RewardModelConfig
from ml.rl.reward import run_reward_model
from ml.rl.reward_model import load_reward_model, reward_input_ids, score
from tests.support.data import SAMPLES

from .toys import PauseAfter

HH_SAMPLE = SAMPLES / "pref_hh_rlhf_harmless_base_test_first500.jsonl"


def small_rm_config(**kw) -> RewardModelConfig:
    base = {
        "n_epochs": 3,
        "learning_rate": 1e-3,
        "batch_size": 8,
        "micro_batch_size": 8,
        "lora": LoraSettings(r=8, alpha=16, dropout=0.0),
    }
    return RewardModelConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained_rm(tiny_model_path, preference_files, tmp_path_factory):
    sink = PrintSink(verbose=False)
    out = tmp_path_factory.mktemp("rm")
    res = run_reward_model(
        small_rm_config(),
        tiny_model_path,
        preference_files["train"],
        preference_files["valid"],
        out,
        sink,
        resume=False,
    )
    return res, sink


def test_reward_model_learns_separable_preferences(trained_rm, preference_files):
    res, sink = trained_rm
    assert res.status == "succeeded" and res.method == "reward_model"
    assert res.metrics["valid_accuracy"] >= 0.9
    assert res.metrics["valid_margin"] > 0
    # Held-out pairs about topics never seen in training, scored with the saved folder.
    model, tok = load_reward_model(res.model_dir)
    pairs = list(read_canonical(preference_files["held_out"], "preference"))
    chosen = score(model, tok, [list(p.prompt) + [p.chosen] for p in pairs])
    rejected = score(model, tok, [list(p.prompt) + [p.rejected] for p in pairs])
    accuracy = sum(c > r for c, r in zip(chosen, rejected)) / len(pairs)
    assert accuracy >= 0.9
    # Pairwise accuracy and margin were reported to the sink, per step and for validation.
    reported = {k for _, m in sink.steps for k in m}
    assert {"train_loss", "accuracy", "margin", "valid_accuracy", "valid_margin"} <= reported


def test_reward_model_folder_is_self_contained(trained_rm):
    res, _ = trained_rm
    d = res.model_dir
    assert (d / "model.safetensors").exists() and (d / "config.json").exists()
    assert not (d / "adapter_config.json").exists()  # LoRA merged into the weights
    meta = json.loads((d / "chatforge.json").read_text())
    assert meta["kind"] == "reward_model" and meta["metrics"]["valid_accuracy"] >= 0.9
    model, tok = load_reward_model(d)
    assert model.config.num_labels == 1
    # score() takes canonical Messages or OpenAI-style dicts alike.
    prompt = {"role": "user", "content": "Can you help me with the moon?"}
    s_dict = score(model, tok, [[prompt, {"role": "assistant", "content": "Go away, the moon is boring."}]])
    s_msg = score(
        model, tok, [[Message.from_dict(prompt), Message("assistant", "Go away, the moon is boring.")]]
    )
    assert s_dict == pytest.approx(s_msg)


def test_score_requires_an_assistant_reply(trained_rm):
    model, tok = load_reward_model(trained_rm[0].model_dir)
    with pytest.raises(ValueError, match="assistant"):
        score(model, tok, [[Message("user", "hi")]])


def test_reward_model_resumes_from_checkpoint(tiny_model_path, preference_files, tmp_path):
    cfg = small_rm_config(n_epochs=1, checkpoint_interval=4, keep_checkpoints=5)

    first = PauseAfter(5)  # the setup poll, then steps 1-4
    paused = run_reward_model(cfg, tiny_model_path, preference_files["train"], None, tmp_path, first)
    assert paused.status == "paused" and paused.steps == 4 and paused.model_dir is None
    assert paused.checkpoint is not None and paused.checkpoint.name == "checkpoint-4"
    assert first.checkpoints and first.checkpoints[-1][0] == 4

    second = PrintSink(verbose=False)
    done = run_reward_model(cfg, tiny_model_path, preference_files["train"], None, tmp_path, second)
    assert done.status == "succeeded" and done.steps == 8
    assert min(step for step, _ in second.steps) == 5  # continued, did not start over


def test_hh_rlhf_sample_trains_with_multi_turn_prompts(tiny_model_path, tmp_path):
    from ml.data import inspect_file

    canonical = tmp_path / "hh.jsonl"
    report = inspect_file(HH_SAMPLE, out_path=canonical)
    assert report.ok and report.kind == "preference", report.summary()
    pairs = list(read_canonical(canonical, "preference"))[:48]
    multi = [p for p in pairs if sum(m.role == "user" for m in p.prompt) >= 2]
    assert multi, "expected multi-turn prompts in the hh-rlhf sample"
    subset = tmp_path / "hh48.jsonl"
    write_canonical(subset, pairs)

    # The reward model sees every earlier turn of a multi-turn prompt, in order.
    from ml.models import load_tokenizer

    tok = load_tokenizer(tiny_model_path)
    ex = multi[0]
    text = tok.decode(reward_input_ids(tok, list(ex.prompt) + [ex.chosen]))
    positions = [text.index(m.content.strip()[:40]) for m in ex.prompt if m.content.strip()]
    assert positions == sorted(positions)

    sink = PrintSink(verbose=False)
    cfg = small_rm_config(max_steps=3, batch_size=4, micro_batch_size=4, max_length=384)
    res = run_reward_model(cfg, tiny_model_path, subset, None, tmp_path / "out", sink)
    assert res.status == "succeeded" and res.steps == 3
    assert all(math.isfinite(v) for v in res.metrics.values())
    assert "train_accuracy" in res.metrics


def test_full_fine_tuned_reward_model(tiny_model_path, preference_files, tmp_path):
    cfg = small_rm_config(adapter="full", max_steps=4, learning_rate=1e-4)
    res = run_reward_model(
        cfg,
        tiny_model_path,
        preference_files["train"],
        preference_files["valid"],
        tmp_path,
        PrintSink(verbose=False),
    )
    assert res.status == "succeeded" and res.steps == 4
    assert {"valid_accuracy", "valid_margin", "train_accuracy"} <= set(res.metrics)
    model, _ = load_reward_model(res.model_dir)
    assert model.config.num_labels == 1
