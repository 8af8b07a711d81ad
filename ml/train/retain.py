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

The set depends on the base model's weights and nothing of the job's, so `cached_retain_set` keeps it on disk
keyed by a hash of those weights (and of the prompts, tokenizer, dtype and library versions): the first job
on a base model computes it, later ones read it back. `prepare_retain_set` computes it ahead of any job (a
worker's idle training process does, for its default base model), giving up as soon as it is told to stop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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

log = logging.getLogger(__name__)


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


class Stopped(Exception):
    """build_retain_set gave up because its `stop` said so."""


class _StopWhen:
    """A generate() stopping criterion: stop every row once `stop()` is true (checked once per token)."""

    def __init__(self, stop: Callable[[], bool]):
        self.stop = stop

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.stop(), dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def build_retain_set(model, tokenizer, prompts: tuple[str, ...] = RETAIN_PROMPTS,
                     answer_tokens: int = ANSWER_TOKENS, top_k: int = TOP_K,
                     stop: Callable[[], bool] | None = None) -> RetainSet:
    """Let the base model (adapter off) answer `prompts` greedily and record its next-token distributions.
    `stop`, checked between tokens and rows, abandons the work: raises Stopped."""
    from transformers import StoppingCriteriaList

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
                                 pad_token_id=pad, use_cache=True,
                                 stopping_criteria=StoppingCriteriaList([_StopWhen(stop)]) if stop else None)
            if stop and stop():
                raise Stopped
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
                if stop and stop():
                    raise Stopped
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


def base_fingerprint(model, tokenizer, prompts: tuple[str, ...] = RETAIN_PROMPTS,
                     answer_tokens: int = ANSWER_TOKENS, top_k: int = TOP_K) -> str:
    """A key for what build_retain_set would compute: the base weights (every parameter but the adapter's,
    bytes and dtype), the tokenizer's vocabulary and chat template, the prompts and sizes, the device type and
    the torch and transformers versions (their kernels decide the greedy answers)."""
    import transformers

    h = hashlib.sha256()
    meta = {"prompts": prompts, "answer_tokens": answer_tokens, "top_k": top_k, "torch": torch.__version__,
            "transformers": transformers.__version__, "vocab": len(tokenizer),
            "template": getattr(tokenizer, "chat_template", None), "eos": tokenizer.eos_token_id,
            "device": next(model.parameters()).device.type}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name, t in model.state_dict().items():
        if "lora_" in name or "modules_to_save" in name or not isinstance(t, torch.Tensor):
            continue  # the adapter's own weights: switched off while the base answers
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")  # same for any LoRA layout
        t = t.detach().reshape(-1).contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{t.numel()}".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()[:32]


def cached_retain_set(model, tokenizer, cache_dir: Path | None) -> tuple[RetainSet, bool]:
    """build_retain_set, read from `cache_dir` when an earlier job on the same base model stored it (and
    stored there otherwise). Returns the set and whether it came from the cache."""
    if cache_dir is None:
        return build_retain_set(model, tokenizer), False
    path = Path(cache_dir) / f"retain-{base_fingerprint(model, tokenizer)}.pt"
    if path.exists():
        try:
            return RetainSet(**torch.load(path, map_location=next(model.parameters()).device,
                                          weights_only=True)), True
        except Exception as e:  # noqa: BLE001 - a torn or foreign file is only a miss: compute it again
            log.warning("ignoring an unreadable retain cache %s: %s", path, e)
    rs = build_retain_set(model, tokenizer)
    _store(rs, path)
    return rs, False


def _folder_key(base_model: Path) -> str:
    """What identifies a base model folder's contents without reading them: names, sizes and times of its
    files, with the library versions (a changed file or library means the stored set may be another's)."""
    import transformers

    files = sorted((str(f.relative_to(base_model)), f.stat().st_size, f.stat().st_mtime_ns)
                   for f in base_model.rglob("*") if f.is_file())
    meta = [str(base_model.resolve()), files, torch.__version__, transformers.__version__]
    return hashlib.sha256(json.dumps(meta).encode()).hexdigest()[:32]


def prepare_retain_set(base_model: Path, cache_dir: Path, stop: Callable[[], bool]) -> bool | None:
    """Compute and store the replay set a default LoRA job on `base_model` would compute, before any job asks.

    Loads the model as that job does (float32 weights, a LoRA wrapper whose adapter is switched off), so the key
    is the one the job will look up. A note in `cache_dir` maps the folder's files to that key, so a later call
    finds the work done without loading the model. Returns True when it stored the set, False when it was
    stored already, None when `stop()` turned true first (nothing is stored then)."""
    from ml.models import load_tokenizer
    from ml.train.trainable import load_trainable_model

    base_model, cache_dir = Path(base_model), Path(cache_dir)
    note = cache_dir / f"retain-folder-{_folder_key(base_model)}.txt"
    try:
        if (cache_dir / f"retain-{note.read_text().strip()}.pt").exists():
            return False
    except OSError:
        pass
    t = time.monotonic()
    tokenizer = load_tokenizer(base_model)
    model = load_trainable_model(base_model, "lora")
    if stop():
        return None
    key = base_fingerprint(model, tokenizer)
    path = cache_dir / f"retain-{key}.pt"
    stored = not path.exists()
    if stored:
        try:
            rs = build_retain_set(model, tokenizer, stop=stop)
        except Stopped:
            return None
        _store(rs, path)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(note, key.encode())
    log.info("replay set of %s %s in %.1f s", base_model, "prepared" if stored else "found", time.monotonic() - t)
    return stored


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _store(rs: RetainSet, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(vars(rs), tmp)  # the fields as they are (asdict would deep-copy every tensor)
        os.replace(tmp, path)  # whole or absent: concurrent jobs on one host never read half a file
    except OSError as e:  # a full or read-only cache disk costs the next job the recomputation, nothing else
        log.warning("could not store the retain set in %s: %s", path.parent, e)


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
