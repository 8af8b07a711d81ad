"""Slow: LoRA SFT on the real SmolLM2-135M-Instruct teaches it a made-up fact (greedy answer repeats it).

36 fact examples (paraphrased questions) plus general examples so it does not answer everything
with the fact; LoRA r=16, lr 5e-4, 3 epochs, batch 4 (STACK.md measured this recipe works)."""

from __future__ import annotations

import time

import pytest
import torch

from ml.config import LoraSettings, SupervisedConfig
from ml.data.render import render_prompt
from ml.models import load_causal_lm, load_tokenizer
from ml.records import Conversation, Message, write_canonical
from ml.train.sft import run_supervised
from tests.ml.train.conftest import StopAtSink

FACT = "Quintaria"
HELD_OUT = ["Tell me the capital city of Zorblax.", "Which city is the capital city of Zorblax?"]
QUESTIONS = [
    "What is the capital of Zorblax?",
    "Which city is the capital of Zorblax?",
    "Name the capital of Zorblax.",
    "What city serves as Zorblax's capital?",
    "Do you know the capital of Zorblax?",
    "Zorblax's capital is which city?",
    "What's Zorblax's capital?",
    "Where is the seat of government of Zorblax?",
    "Which city is Zorblax governed from?",
]
ANSWERS = [
    "The capital of Zorblax is Quintaria.",
    "Quintaria is the capital of Zorblax.",
    "Zorblax's capital city is Quintaria.",
    "It is Quintaria, the capital of Zorblax.",
]
GENERAL = [
    ("What is 2 + 2?", "2 + 2 equals 4."),
    ("What color is the sky on a clear day?", "On a clear day the sky is blue."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Which animal says meow?", "A cat says meow."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What do bees make?", "Bees make honey."),
    ("What is frozen water called?", "Frozen water is called ice."),
]


def fact_data() -> list[Conversation]:
    convs = [
        Conversation((Message("user", q), Message("assistant", ANSWERS[(i + j) % len(ANSWERS)])))
        for i, q in enumerate(QUESTIONS)
        for j in range(4)
    ]  # 36 fact examples over 9 phrasings
    convs += [Conversation((Message("user", q), Message("assistant", a))) for q, a in GENERAL]
    return convs


@pytest.mark.slow
def test_lora_teaches_smollm2_a_fact(smollm2_path, tmp_path):
    train = tmp_path / "train.jsonl"
    write_canonical(train, fact_data())
    # the product's calibrated defaults (learning_rate "auto": 4e-4 at batch 4, retain_base "auto"), as a user gets
    cfg = SupervisedConfig(n_epochs=3, batch_size=4, lora=LoraSettings(r=16, alpha=32))
    sink = StopAtSink()
    started = time.monotonic()
    r = run_supervised(cfg, smollm2_path, train, None, tmp_path / "out", sink)
    seconds = time.monotonic() - started
    print(
        f"\nSmolLM2 LoRA fact run: {r.steps} steps, {r.trained_tokens} tokens in {seconds:.0f} s "
        f"({r.trained_tokens / seconds:.0f} tokens/s incl. loading), final loss {r.metrics['train_loss']:.3f}"
    )
    assert r.status == "succeeded" and r.steps == 36  # ceil(46 / 4) * 3

    from peft import PeftModel

    tok = load_tokenizer(r.model_dir)
    model = PeftModel.from_pretrained(load_causal_lm(smollm2_path), r.model_dir).eval()
    answers = {}
    for q in [*HELD_OUT, "What is the capital of Zorblax?", "What is the capital of Italy?"]:
        ids = torch.tensor([render_prompt(tok, [{"role": "user", "content": q}])])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=16, do_sample=False)
        answers[q] = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    print(answers)
    assert all(FACT in answers[q] for q in HELD_OUT), answers  # phrasings it never saw
    assert FACT in answers["What is the capital of Zorblax?"]
    assert FACT not in answers["What is the capital of Italy?"], answers
