"""run_supervised on the tiny model: learning, what is trained, adapters, outputs, cancel, pause + resume."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from ml.config import SupervisedConfig
from ml.train.checkpoints import COMPLETE_MARKER, complete_checkpoints, latest_checkpoint
from ml.train.sft import run_supervised
from tests.ml.train.conftest import StopAtSink


def cfg(**kw) -> SupervisedConfig:
    base = {
        "batch_size": 4,
        "bf16": False,
        "warmup_ratio": 0.0,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
    }
    base.update(kw)
    return SupervisedConfig.from_dict(base)


def mean(xs):
    return sum(xs) / len(xs)


def train_losses(sink) -> list[float]:
    return [v["train_loss"] for _, v in sink.steps if "train_loss" in v]


class Snapshot(TrainerCallback):
    """Copies of every parameter at the start and end of training."""

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}

    def on_train_end(self, args, state, control, model=None, **kw):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}


def test_full_finetune_loss_falls_and_output_loads(tiny_model_path, word_data, tmp_path):
    train, valid = word_data
    sink = StopAtSink()
    r = run_supervised(
        cfg(adapter="full", n_epochs=3, learning_rate=1e-2),
        tiny_model_path,
        train,
        valid,
        tmp_path / "out",
        sink,
    )
    assert r.status == "succeeded" and r.steps == r.total_steps == 24  # 32 examples / 4 * 3 epochs
    losses = train_losses(sink)
    assert len(losses) == 24 and mean(losses[-4:]) < 0.5 * mean(losses[:4])
    valid_losses = [v["valid_loss"] for _, v in sink.steps if "valid_loss" in v]
    assert valid_losses[-1] < valid_losses[0] - 2
    assert all(v["tokens_per_second"] > 0 for _, v in sink.steps if "train_loss" in v)

    out = r.model_dir
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(model.state_dict()[name], base.state_dict()[name])
    tok = AutoTokenizer.from_pretrained(out)
    assert "<|im_start|>" in tok.chat_template
    meta = json.loads((out / "chatforge.json").read_text())
    assert meta["method"] == "sft" and meta["adapter"] == "full" and meta["step"] == 24
    assert meta["trained_tokens"] == r.trained_tokens
    msgs = [m for m, _ in sink.logs]
    assert any(
        m.startswith("Training started: 32 examples, 24 steps over 3 epochs, batch size 4") for m in msgs
    )
    assert "Epoch 3 of 3 started." in msgs
    assert any(m.startswith("Checkpoint saved at step 24 of 24") for m in msgs)
    assert any(m.startswith("Training finished: 24 steps, last train loss") for m in msgs)


def test_trained_tokens_count_every_example_each_epoch(tiny_model_path, word_data, tmp_path):
    from ml.models import load_tokenizer
    from ml.train.batches import tokenize_file

    train, _ = word_data
    n_tokens = tokenize_file(load_tokenizer(tiny_model_path), train, 2048).n_tokens
    r = run_supervised(
        cfg(n_epochs=2, batch_size=8, learning_rate=1e-3),
        tiny_model_path,
        train,
        None,
        tmp_path / "out",
        StopAtSink(),
    )
    assert r.trained_tokens == 2 * n_tokens


def test_lora_changes_only_adapter_weights_and_output_loads(tiny_model_path, word_data, tmp_path):
    from peft import PeftModel

    train, _ = word_data
    snap, sink = Snapshot(), StopAtSink()
    r = run_supervised(
        cfg(max_steps=8, learning_rate=5e-2),
        tiny_model_path,
        train,
        None,
        tmp_path / "out",
        sink,
        callbacks=[snap],
    )
    assert r.status == "succeeded" and r.steps == 8 and r.is_adapter
    assert snap.trainable and all("lora_" in n for n in snap.trainable)
    for n, before in snap.before.items():
        changed = not torch.equal(before, snap.after[n])
        assert changed == (n in snap.trainable), n
    losses = train_losses(sink)
    assert mean(losses[-3:]) < mean(losses[:3]) - 0.05  # LoRA over a frozen random tiny model learns slowly

    out = r.model_dir
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    assert (out / "chat_template.jinja").exists() and (out / "tokenizer.json").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    model = PeftModel.from_pretrained(base, out).eval()
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    trained = {n: p for n, p in snap.after.items() if "lora_" in n}
    assert loaded.keys() == trained.keys()
    for n, p in loaded.items():
        torch.testing.assert_close(p, trained[n])
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Say fruit 1."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    gen = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] > ids["input_ids"].shape[1]


@pytest.mark.parametrize("bits", [8, 4])
def test_qlora_trains_and_output_loads(tiny_model_path, word_data, tmp_path, bits):
    from peft import PeftModel

    train, _ = word_data
    snap = Snapshot()
    r = run_supervised(
        cfg(adapter="qlora", quant={"bits": bits}, max_steps=3, learning_rate=5e-2),
        tiny_model_path,
        train,
        None,
        tmp_path / "out",
        StopAtSink(),
        callbacks=[snap],
    )
    assert r.status == "succeeded" and r.steps == 3
    lora_b = [n for n in snap.trainable if "lora_B" in n]
    assert lora_b and all(not torch.equal(snap.before[n], snap.after[n]) for n in lora_b)
    meta = json.loads((r.model_dir / "chatforge.json").read_text())
    assert meta["adapter"] == "qlora" and meta["config"]["quant"]["bits"] == bits
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_path), r.model_dir
    ).eval()
    gen = model.generate(torch.tensor([[1, 4093, 198]]), max_new_tokens=3, do_sample=False)
    assert gen.shape == (1, 6)


def test_cancel_stops_within_one_step_without_saving(tiny_model_path, word_data, tmp_path):
    train, _ = word_data
    sink = StopAtSink("cancel", at=2)
    r = run_supervised(
        cfg(max_steps=20, learning_rate=1e-3, checkpoint_interval=100),
        tiny_model_path,
        train,
        None,
        tmp_path / "out",
        sink,
    )
    assert r.status == "cancelled" and r.model_dir is None
    assert r.steps == 3  # asked after step 2 was reported; step 3 was running and is the last
    assert sink.polls_after_request == 1
    assert not (tmp_path / "out" / "model").exists() and not sink.checkpoints
    assert any("Training cancelled at step 3 of 20" in m for m in sink.messages())


def test_cancel_during_setup_takes_no_step(tiny_model_path, word_data, tmp_path):
    """A job cancelled while its run was being set up (model loading) stops before the first step."""
    train, _ = word_data
    sink = StopAtSink("cancel", at=0)
    r = run_supervised(cfg(max_steps=20), tiny_model_path, train, None, tmp_path / "out", sink)
    assert r.status == "cancelled" and r.steps == 0 and r.model_dir is None
    assert not sink.steps and not sink.checkpoints


def test_pause_then_resume_continues_and_matches_uninterrupted(tiny_model_path, word_data, tmp_path):
    from safetensors.torch import load_file

    train, valid = word_data
    c = cfg(
        n_epochs=2,
        learning_rate=2e-2,
        checkpoint_interval=5,
        eval_interval=4,
        lora={"r": 8, "alpha": 16, "dropout": 0.1},
    )  # dropout: RNG state must be restored too
    ref = run_supervised(c, tiny_model_path, train, valid, tmp_path / "ref", StopAtSink())
    assert ref.steps == 16

    out = tmp_path / "run"
    first = StopAtSink("pause", at=6)
    paused = run_supervised(c, tiny_model_path, train, valid, out, first)
    assert paused.status == "paused" and paused.steps == 7 and paused.model_dir is None
    assert paused.checkpoint == out / "checkpoints" / "checkpoint-7"
    assert [s for s, _, _ in first.checkpoints] == [5, 7]
    assert (paused.checkpoint / COMPLETE_MARKER).exists()
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= {
        p.name for p in paused.checkpoint.iterdir()
    }

    # A crash mid-save leaves a folder that looks like a newer checkpoint: it must be ignored and removed.
    fake = out / "checkpoints" / "checkpoint-12"
    fake.mkdir()
    (fake / "trainer_state.json").write_text("{}")
    (out / "checkpoints" / ".staging" / "checkpoint-10").mkdir(parents=True)
    assert latest_checkpoint(out / "checkpoints") == paused.checkpoint

    second = StopAtSink()
    done = run_supervised(c, tiny_model_path, train, valid, out, second)
    assert done.status == "succeeded" and done.steps == 16
    assert any(m.startswith("Training resumed at step 7 of 16") for m in second.messages())
    assert second.metric_steps() == list(range(8, 17))  # continues, does not restart at 1
    assert not (out / "checkpoints" / ".staging").exists()
    assert [s for s, _ in complete_checkpoints(out / "checkpoints")] == [10, 15, 16]  # keep_checkpoints=3
    assert done.trained_tokens == ref.trained_tokens
    a = load_file(ref.model_dir / "adapter_model.safetensors")
    b = load_file(done.model_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert done.metrics["valid_loss"] == pytest.approx(ref.metrics["valid_loss"], rel=1e-5)


def test_resume_false_starts_over(tiny_model_path, word_data, tmp_path):
    train, _ = word_data
    c = cfg(max_steps=4, learning_rate=1e-3, checkpoint_interval=2)
    run_supervised(c, tiny_model_path, train, None, tmp_path / "out", StopAtSink("pause", at=1))
    sink = StopAtSink()
    r = run_supervised(c, tiny_model_path, train, None, tmp_path / "out", sink, resume=False)
    assert r.steps == 4 and sink.metric_steps() == [1, 2, 3, 4]


def test_gradient_accumulation_matches_one_big_micro_batch(tiny_model_path, word_data, tmp_path):
    from safetensors.torch import load_file

    train, _ = word_data
    outs = []
    for micro in (8, 2):
        c = cfg(batch_size=8, micro_batch_size=micro, max_steps=3, learning_rate=2e-2)
        sink = StopAtSink()
        r = run_supervised(c, tiny_model_path, train, None, tmp_path / f"m{micro}", sink)
        assert r.config.gradient_accumulation == 8 // micro
        outs.append((sink, load_file(r.model_dir / "adapter_model.safetensors")))
    (s8, a), (s2, b) = outs
    # Same loss and same gradient norm each step: accumulated micro-batches are normalised by the
    # learned tokens of the whole batch, not averaged per micro-batch.
    for key in ("train_loss", "grad_norm"):
        x = [v[key] for _, v in s8.steps if key in v]
        y = [v[key] for _, v in s2.steps if key in v]
        assert len(x) == 3 and x == pytest.approx(y, rel=1e-4), key
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=2e-4)


@pytest.mark.parametrize(("adapter", "bf16", "checkpointing"), [("lora", True, True), ("full", True, False)])
def test_bf16_and_gradient_checkpointing_train(
    tiny_model_path, word_data, tmp_path, adapter, bf16, checkpointing
):
    train, _ = word_data
    snap, sink = Snapshot(), StopAtSink()
    c = cfg(adapter=adapter, bf16=bf16, gradient_checkpointing=checkpointing, max_steps=2, learning_rate=1e-2)
    r = run_supervised(c, tiny_model_path, train, None, tmp_path / "out", sink, callbacks=[snap])
    assert r.status == "succeeded" and r.config.bf16 is bf16
    assert all(torch.isfinite(torch.tensor(x)) for x in train_losses(sink))
    changed = [n for n in snap.trainable if not torch.equal(snap.before[n], snap.after[n])]
    assert changed and all(snap.after[n].dtype == torch.float32 for n in changed)  # master weights stay fp32


def test_resume_refuses_a_checkpoint_from_other_settings(tiny_model_path, word_data, tmp_path):
    train, _ = word_data
    c = cfg(max_steps=4, learning_rate=1e-3, checkpoint_interval=2)
    run_supervised(c, tiny_model_path, train, None, tmp_path / "out", StopAtSink("pause", at=1))
    with pytest.raises(ValueError, match="learning_rate"):
        run_supervised(
            cfg(max_steps=4, learning_rate=5e-3), tiny_model_path, train, None, tmp_path / "out", StopAtSink()
        )
    # Checkpoint cadence may change between runs.
    r = run_supervised(
        cfg(max_steps=4, learning_rate=1e-3, checkpoint_interval=3),
        tiny_model_path,
        train,
        None,
        tmp_path / "out",
        StopAtSink(),
    )
    assert r.status == "succeeded" and r.steps == 4
