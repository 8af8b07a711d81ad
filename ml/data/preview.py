"""Dataset preview: the first few canonical examples as the base model will see them.

Each example is rendered with the base model's chat template through ml.data.render and cut into
segments [{"text", "learned"}], learned = the tokens the loss trains on. Preference examples show the
prompt, the chosen and the rejected reply separately; prompt-only examples show the prompt with the
generation prompt appended. It does not validate (that is inspect_file's job).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from ml.data.render import render_conversation
from ml.records import Conversation, Message, PreferenceExample, PromptExample, read_canonical


def _segments(pieces) -> list[dict[str, Any]]:
    return [{"text": text, "learned": bool(learned)} for text, learned in pieces]


def _split_at(pieces, n_chars: int) -> tuple[list, list]:
    """Cut (text, learned) pieces after the first n_chars characters."""
    head, tail, seen = [], [], 0
    for text, learned in pieces:
        if seen >= n_chars:
            tail.append((text, learned))
        elif seen + len(text) <= n_chars:
            head.append((text, learned))
        else:
            cut = n_chars - seen
            head.append((text[:cut], learned))
            tail.append((text[cut:], learned))
        seen += len(text)
    return head, tail


def _prompt_text(tokenizer, prompt) -> str:
    msgs = []
    for m in prompt:
        d = m.to_dict()
        d.pop("weight", None)
        msgs.append(d)
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def _preview_preference(tokenizer, ex: PreferenceExample, max_length: int | None) -> dict[str, Any]:
    prompt_text = _prompt_text(tokenizer, ex.prompt)
    out: dict[str, Any] = {"prompt": [{"text": prompt_text, "learned": False}]}
    for side, reply in (("chosen", ex.chosen), ("rejected", ex.rejected)):
        reply = Message("assistant", reply.content, None, reply.tool_calls, reply.name)
        r = render_conversation(tokenizer, Conversation(tuple(ex.prompt) + (reply,)), max_length=max_length)
        full = "".join(t for t, _ in r.segments)
        if full.startswith(prompt_text):
            _, tail = _split_at(r.segments, len(prompt_text))
        else:  # template renders the prompt differently when a reply follows; show everything
            tail = r.segments
        out[side] = _segments(tail)
        out[f"{side}_tokens"] = r.n_tokens
    return out


def preview_record(tokenizer, rec, max_length: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"record": rec.to_dict()}
    if isinstance(rec, Conversation):
        r = render_conversation(tokenizer, rec, max_length=max_length)
        item.update(
            segments=_segments(r.segments), n_tokens=r.n_tokens, n_learned=r.n_learned, truncated=r.truncated
        )
    elif isinstance(rec, PreferenceExample):
        item.update(_preview_preference(tokenizer, rec, max_length))
    elif isinstance(rec, PromptExample):
        text = _prompt_text(tokenizer, rec.prompt)
        item.update(
            segments=[{"text": text, "learned": False}],
            n_tokens=len(tokenizer(text, add_special_tokens=False)["input_ids"]),
        )
    return item


def preview(
    canonical_path: str | Path, kind: str, tokenizer, n: int = 5, max_length: int | None = None
) -> list[dict[str, Any]]:
    """The first n canonical records with their rendered text cut into learned/unlearned segments.

    sft / prompts: {"record", "segments", "n_tokens", ...}; preference: {"record", "prompt", "chosen",
    "rejected", "chosen_tokens", "rejected_tokens"} where each side is a list of segments.
    """
    return [
        preview_record(tokenizer, rec, max_length)
        for rec in itertools.islice(read_canonical(canonical_path, kind), n)
    ]
