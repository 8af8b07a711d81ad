"""Small synthetic data and rule-based rewards for the RL tests, plus a tiny policy with a prior.

The random tiny Llama samples nearly uniformly over 49k tokens, so no reward can be found by sampling
it; `build_yes_no_policy` fine-tunes it (all weights, a few seconds' worth of steps) to answer with
2-5 of the words yes/no/YES/NO, which gives online RL something to choose between.
"""

from __future__ import annotations

import random
from pathlib import Path

from ml.events import PrintSink
from ml.records import Conversation, Message, PreferenceExample, PromptExample, write_canonical

TOPICS = [
    "the weather",
    "my homework",
    "a recipe",
    "the train times",
    "python lists",
    "a good book",
    "the moon",
    "taxes",
    "my garden",
    "a song",
    "the bus",
    "chess",
]
HELD_OUT_TOPICS = ["my bicycle", "the ocean", "a birthday party", "jazz music", "the museum", "my cat"]
POLITE = [
    "Thank you for asking! Here is help with {}.",
    "Thank you, I am glad to help with {}.",
    "Happy to help, thank you: {} is easy.",
]
RUDE = ["No. Figure out {} yourself.", "Go away, {} is boring.", "Stop asking me about {}."]


def polite_pairs(n: int, seed: int, topics: list[str] = TOPICS) -> list[PreferenceExample]:
    """Chosen replies are polite ("thank you"), rejected ones rude: clearly separable preferences."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        t = rng.choice(topics)
        out.append(
            PreferenceExample(
                prompt=(Message("user", f"Can you help me with {t}?"),),
                chosen=Message("assistant", rng.choice(POLITE).format(t)),
                rejected=Message("assistant", rng.choice(RUDE).format(t)),
            )
        )
    return out


def write_pairs(path: Path, pairs: list[PreferenceExample]) -> Path:
    write_canonical(path, pairs)
    return path


def write_prompts(path: Path, n: int = 32) -> Path:
    write_canonical(path, [PromptExample((Message("user", f"Question {i}?"),)) for i in range(n)])
    return path


def upper_fraction(conversations) -> list[float]:
    """Reward: the fraction of the reply's letters that are upper case (0 for a reply without letters)."""
    out = []
    for conv in conversations:
        letters = [ch for ch in conv[-1].content if ch.isalpha()]
        out.append(sum(ch.isupper() for ch in letters) / max(1, len(letters)))
    return out


YES_NO = ["yes", "no", "YES", "NO"]


def build_yes_no_policy(tiny_path: Path, out: Path, steps: int = 50, seed: int = 0) -> Path:
    """Fine-tune the tiny model (full, AdamW 5e-3, batch 16) to reply with random yes/no/YES/NO words."""
    import torch

    from ml.data.render import IGNORE_INDEX, render_conversation
    from ml.models import load_causal_lm, load_tokenizer

    if (out / "model.safetensors").exists():
        return out
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok, model = load_tokenizer(tiny_path), load_causal_lm(tiny_path)

    def conv() -> Conversation:
        words = " ".join(rng.choice(YES_NO) for _ in range(rng.randint(2, 5)))
        return Conversation((Message("user", f"Question {rng.randint(0, 99)}?"), Message("assistant", words)))

    rows = [render_conversation(tok, conv()) for _ in range(256)]
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(steps):
        batch = rng.sample(rows, 16)
        width = max(r.n_tokens for r in batch)
        ids = torch.full((16, width), tok.pad_token_id)
        labels = torch.full((16, width), IGNORE_INDEX)
        mask = torch.zeros((16, width), dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, : r.n_tokens] = torch.tensor(r.input_ids)
            labels[i, : r.n_tokens] = torch.tensor(r.labels)
            mask[i, : r.n_tokens] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    tmp.rename(out)
    return out


class PauseAfter(PrintSink):
    """A sink that answers `what` ("pause" or "cancel") from its n-th control poll on: one poll per step, and
    for trainer-based recipes one more before the first step (a cancel while the run was set up)."""

    def __init__(self, n: int, what: str = "pause") -> None:
        super().__init__(verbose=False)
        self.n, self.what, self.polls = n, what, 0

    def control(self):
        self.polls += 1
        return self.what if self.polls >= self.n else None


def sampled_reward(
    model_path: Path, adapter: Path | None, reward, n: int = 64, max_new_tokens: int = 10, seed: int = 1234
) -> float:
    """Mean reward of n sampled replies (temperature 1) of a model, optionally with a LoRA adapter on it."""
    import torch

    from ml.data.render import render_prompt
    from ml.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(model_path)
    model = load_causal_lm(model_path)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    prompt = (Message("user", "Question 7?"),)
    ids = torch.tensor([render_prompt(tok, prompt)])
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            do_sample=True,
            max_new_tokens=max_new_tokens,
            num_return_sequences=n,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            top_k=None,
        )
    texts = [tok.decode(o[ids.shape[1] :], skip_special_tokens=True) for o in out]
    return sum(reward([prompt + (Message("assistant", t),) for t in texts])) / n
