"""Keep what the base model could do while it learns a small file: a penalty toward its own answers.

Fine-tuning on a few dozen short answers teaches their style as well as their content: after ~40 one-sentence
replies a small model answers everything in one sentence and loses what it used to reach by a longer answer
(docs/training-defaults.md shows 10 to 40 points of general accuracy lost). The remedy is the oldest one in
continual learning, replay, in its self-distillation form: at the start of a run the base model (the adapter
switched off) answers a fixed set of general prompts; each optimizer step then adds, to the loss on the
user's data, the KL divergence from the base model's next-token distribution to the trained model's on one
of those answers. The answers are the base model's own, so the penalty asks for nothing but "stay
as you were where the user's data says nothing".

The base distribution is kept as its top-k tokens per position, computed once, and both distributions are
compared over those k tokens (renormalised, so the penalty is 0 before training moves anything); each step costs
one extra forward and backward over one replay sequence (~100 tokens). The prompts are instructions of many
kinds (explain, write, list, advise) and ask for no particular fact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ml.data.render import render_prompt
from ml.train.loss import causal_lm

RETAIN_PROMPTS: tuple[str, ...] = (
    "Explain in a few sentences why regular exercise is good for you.",
    "Write a short poem about the sea.",
    "Give me three tips for studying for an exam.",
    "How does a rainbow form?",
    "Describe a typical morning routine.",
    "What are some good ways to save money?",
    "Write a friendly email inviting a colleague to lunch.",
    "Explain what a computer program is to a child.",
    "List four things to pack for a weekend camping trip.",
    "Why do leaves change colour in autumn?",
    "Summarise the benefits of reading books.",
    "How can I make a cup of tea?",
    "What should I consider when choosing a pet?",
    "Tell me a short story about a lost key.",
    "Explain the difference between weather and climate.",
    "What makes a good team leader?",
    "How do I write a good cover letter?",
    "Describe how a bicycle works.",
    "Suggest a healthy breakfast and explain why it is healthy.",
    "What is the water cycle?",
    "Give advice to someone learning to cook.",
    "Why is sleep important?",
    "Write two sentences describing a busy city street.",
    "How should I prepare for a job interview?",
)
ANSWER_TOKENS = 48  # of each base-model answer kept (greedy)
TOP_K = 64  # tokens of the base distribution kept per position


@dataclass
class RetainSet:
    """Replay sequences (right-padded) and the base model's top-k next-token distribution on their answers."""

    input_ids: torch.Tensor  # (R, L)
    attention_mask: torch.Tensor  # (R, L)
    positions: list[torch.Tensor]  # per row: positions whose next token is part of the answer
    top_ids: list[torch.Tensor]  # per row: (n_i, k) token ids
    top_probs: list[torch.Tensor]  # per row: (n_i, k) base probabilities, renormalised over the k

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def _no_adapter(model):
    disable = getattr(model, "disable_adapter", None)  # peft: the base model is the adapter switched off
    if disable is None:
        raise ValueError("retaining the base model's answers needs an adapter (lora or qlora)")
    return disable()


@torch.no_grad()
def build_retain_set(model, tokenizer, prompts: tuple[str, ...] = RETAIN_PROMPTS,
                     answer_tokens: int = ANSWER_TOKENS, top_k: int = TOP_K) -> RetainSet:
    """Let the base model (adapter off) answer `prompts` greedily and record its next-token distributions."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompt_ids = [render_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    width = max(map(len, prompt_ids))
    x = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
    try:
        with _no_adapter(model):
            out = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=answer_tokens, do_sample=False,
                                 pad_token_id=pad, use_cache=True)
            rows = []
            for i, p in enumerate(prompt_ids):
                ans = out[i, width:].tolist()
                if tokenizer.eos_token_id in ans:
                    ans = ans[: ans.index(tokenizer.eos_token_id) + 1]
                ans = ans or [tokenizer.eos_token_id]
                rows.append((p, ans))
            length = max(len(p) + len(a) for p, a in rows)
            ids = torch.full((len(rows), length), pad, dtype=torch.long, device=device)
            att = torch.zeros_like(ids)
            positions, top_ids, top_probs = [], [], []
            lm = causal_lm(model)
            for i, (p, a) in enumerate(rows):  # one row at a time, projecting only the answer positions
                ids[i, : len(p) + len(a)] = torch.tensor(p + a, device=device)
                att[i, : len(p) + len(a)] = 1
                pos = torch.arange(len(p) - 1, len(p) + len(a) - 1, device=device)
                hidden = lm.get_decoder()(input_ids=ids[i : i + 1, : len(p) + len(a)], use_cache=False)
                lp = lm.get_output_embeddings()(hidden.last_hidden_state[0, pos]).float().log_softmax(-1)
                v, k = lp.topk(min(top_k, lp.shape[-1]), dim=-1)
                positions.append(pos)
                top_ids.append(k)
                top_probs.append(v.softmax(-1))  # renormalised over the kept tokens
    finally:
        model.train(was_training)
    return RetainSet(ids, att, positions, top_ids, top_probs)


def retain_loss(model, rs: RetainSet, index: int) -> torch.Tensor:
    """KL divergence from the base model's next-token distribution (top-k) to the model's on replay sequence
    `index` (mod its size), averaged over answer positions: 0 where the two agree."""
    i = index % len(rs)
    n = int(rs.attention_mask[i].sum())
    lm = causal_lm(model)
    hidden = lm.get_decoder()(input_ids=rs.input_ids[i : i + 1, :n], use_cache=False).last_hidden_state[0]
    logits = lm.get_output_embeddings()(hidden[rs.positions[i]]).float()
    logq = logits.gather(-1, rs.top_ids[i]).log_softmax(-1)  # both distributions over the same k tokens
    p = rs.top_probs[i]
    return (p * (p.clamp_min(1e-12).log() - logq)).sum(-1).mean()
