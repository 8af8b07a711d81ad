"""What is served is what was trained: reference outputs of a job's raw weights, loaded directly with
transformers + peft (never through ChatForge's serving code), to compare with what the API serves.

A checkpoint's reference is its raw trainer folder: a LoRA over the model the job started from (the
base, or the base with the SFT adapter merged in), a full causal LM, or a reward classifier. The final
model's reference is the checkpoint of its last step (the trainer saves it), so folding is checked too.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

PROMPT = [{"role": "user", "content": "What is 3 plus 3?"}]
REWARD_ITEMS = [
    [{"role": "user", "content": "Please greet guest number 2."},
     {"role": "assistant", "content": "Hello, dear guest 2! Welcome."}],
    [{"role": "user", "content": "Please greet guest number 2."}, {"role": "assistant", "content": "Go away."}],
]
MAX_TOKENS = 8


def job_dir(service, job_id: str) -> Path:
    return service.data_dir / "storage" / "jobs" / job_id


def raw_checkpoints(service, job_id: str) -> dict[int, Path]:
    root = job_dir(service, job_id) / "checkpoints"
    return {int(p.name.split("-")[1]): p for p in root.glob("checkpoint-*")}


def _causal(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def reference_lm(base: Path, sft_adapter: Path | None, checkpoint: Path):
    """The weights a causal-LM checkpoint holds: (base [+ SFT merged]) + its LoRA, or its full model."""
    from peft import PeftModel

    if not (checkpoint / "adapter_config.json").exists():
        return _causal(checkpoint).eval()
    model = _causal(base)
    if sft_adapter is not None:
        model = PeftModel.from_pretrained(model, str(sft_adapter)).merge_and_unload()
    return PeftModel.from_pretrained(model, str(checkpoint)).eval()


@dataclass(frozen=True)
class Reply:
    """A greedy reply and the log-probability of each of its tokens (what tells weights apart even when
    a tiny random model repeats one token)."""

    text: str
    logprobs: list[float]
    finish: str = "length"


def greedy_reply(model, tokenizer, messages=PROMPT, n: int = MAX_TOKENS) -> Reply:
    from ml.data.render import render_prompt

    ids = render_prompt(tokenizer, messages, add_generation_prompt=True)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or 0)
        new = out[0, len(ids):]
        logits = model(input_ids=out).logits[0, len(ids) - 1 : -1].float()
        lps = torch.log_softmax(logits, -1).gather(-1, new[:, None])[:, 0].tolist()
    return Reply(tokenizer.decode(new.tolist(), skip_special_tokens=True), lps)


def served_reply(client, model_id: str, messages=PROMPT, n: int = MAX_TOKENS) -> Reply:
    r = client.chat.completions.create(model=model_id, messages=messages, max_tokens=n, temperature=0,
                                       logprobs=True)
    c = r.choices[0]
    return Reply(c.message.content or "", [t.logprob for t in c.logprobs.content], c.finish_reason)


def assert_same_reply(served: Reply, want: Reply, what: str) -> None:
    if served.finish == "stop":  # the engine stopped at an end-of-turn token; generate() may run past it
        assert want.text.startswith(served.text), f"{what}: served {served.text!r}, reference {want.text!r}"
    else:
        assert served.text == want.text, f"{what}: served {served.text!r}, reference {want.text!r}"
    k = len(served.logprobs)
    assert k >= 1
    assert served.logprobs == pytest.approx(want.logprobs[:k], abs=2e-3), what


def differ(a: Reply, b: Reply) -> bool:
    """Two replies come from different weights (text or log-probabilities)."""
    return a.text != b.text or max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=False)) > 0.05


def reference_reward_model(base: Path, sft_adapter: Path | None, checkpoint: Path):
    """A reward checkpoint's classifier: the start model as a 1-label classifier + the LoRA (with its
    trained score head), or the full classifier the checkpoint holds."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    if not (checkpoint / "adapter_config.json").exists():
        return AutoModelForSequenceClassification.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    with tempfile.TemporaryDirectory() as tmp:
        start = base
        if sft_adapter is not None:
            PeftModel.from_pretrained(_causal(base), str(sft_adapter)).merge_and_unload().save_pretrained(tmp)
            start = Path(tmp)
        model = AutoModelForSequenceClassification.from_pretrained(str(start), num_labels=1, dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(checkpoint)).eval()


def reference_scores(model, tokenizer, items=REWARD_ITEMS) -> list[float]:
    """One forward pass per item over the ids training used for a reply (ml.rl.reward_model)."""
    from ml.rl.reward_model import reward_input_ids

    with torch.no_grad():
        return [float(model(input_ids=torch.tensor([reward_input_ids(tokenizer, msgs)])).logits[0, 0])
                for msgs in items]


def served_checkpoints(client, job) -> dict[int, str]:
    """step -> checkpoint model id, as the API lists them."""
    page = client.fine_tuning.jobs.checkpoints.list(job.id, limit=100).data
    return {c.step_number: c.fine_tuned_model_checkpoint for c in page}


def check_chat_parity(svc, client, job, base: Path, sft_adapter: Path | None, steps=(1, 2)) -> list[Reply]:
    """Each checkpoint and the final model serve their raw weights' greedy reply; returns the references
    (checkpoints by step, then the final model)."""
    from ml.models import load_tokenizer

    raw = raw_checkpoints(svc, job.id)
    served = served_checkpoints(client, job)
    assert sorted(served) == sorted(raw) == list(steps), (served, raw)
    tokenizer = load_tokenizer(sft_adapter or base)
    replies = []
    # the final model holds the last step's weights (folded over the base for an SFT start)
    pairs = [*((served[s], raw[s]) for s in sorted(served)), (job.fine_tuned_model, raw[max(steps)])]
    for model_id, folder in pairs:
        want = greedy_reply(reference_lm(base, sft_adapter, folder), tokenizer)
        assert_same_reply(served_reply(client, model_id), want, model_id)
        replies.append(want)
    return replies
