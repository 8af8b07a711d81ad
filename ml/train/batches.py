"""Supervised examples as token tensors: a canonical SFT file rendered once, and the collators that batch it.

Owns turning a canonical JSONL file into (input_ids, labels) rows via ml.data.render, and the two batch
shapes: packed (several whole examples per row, position ids restarting at each, so attention never
crosses examples and almost no compute goes to padding) and padded (each row padded to the longest).
It does not read other formats (ml.data converts them first) nor choose batch sizes (ml.config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ml.data.render import IGNORE_INDEX, render_conversation
from ml.records import read_canonical


@dataclass
class TokenizedSplit(Dataset):
    """A rendered split: one dict(input_ids, labels) per usable example, plus counts for reports."""

    rows: list[dict[str, list[int]]] = field(default_factory=list)
    n_truncated: int = 0
    # Examples dropped because no learned token survived (all weight 0, or truncated away).
    n_skipped: int = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.rows[i]

    @property
    def n_tokens(self) -> int:
        return sum(len(r["input_ids"]) for r in self.rows)

    @property
    def n_learned(self) -> int:
        return sum(sum(1 for x in r["labels"] if x != IGNORE_INDEX) for r in self.rows)

    def describe(self) -> str:
        s = f"{len(self)} examples, {self.n_tokens:,} tokens ({self.n_learned:,} learned)"
        if self.n_truncated:
            s += f"; {self.n_truncated} cut to the maximum length"
        if self.n_skipped:
            s += f"; {self.n_skipped} skipped with nothing to learn"
        return s


def tokenize_file(tokenizer, path: str | Path, max_length: int) -> TokenizedSplit:
    """Render every conversation of a canonical SFT file (ml.records) with the chat template."""
    split = TokenizedSplit()
    for conv in read_canonical(path, "sft"):
        ex = render_conversation(tokenizer, conv, max_length=max_length)
        split.n_truncated += ex.truncated
        if ex.n_learned == 0:
            split.n_skipped += 1
            continue
        split.rows.append({"input_ids": ex.input_ids, "labels": ex.labels})
    return split


def _pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: example indices grouped into rows of at most `capacity` tokens."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, room in enumerate(free):
            if lengths[i] <= room:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return rows


class PackedCollator:
    """Packs a micro-batch's examples into as few rows of <= max_length tokens as fit, without splitting any.

    No attention_mask is returned: transformers then derives a block-diagonal causal mask from the
    restarting position_ids (sdpa, eager and flash attention alike). The first label of every example
    is ignored so no row learns to predict one example from the end of another. `n_tokens` counts the
    real (non-padding) tokens; the trainer pops it before the forward pass.
    """

    def __init__(self, pad_token_id: int, max_length: int) -> None:
        self.pad_token_id = pad_token_id
        self.max_length = max_length

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        lengths = [len(f["input_ids"]) for f in features]
        groups = _pack_rows(lengths, max(self.max_length, max(lengths)))
        width = max(sum(lengths[i] for i in g) for g in groups)
        ids = torch.full((len(groups), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(groups), width), IGNORE_INDEX, dtype=torch.long)
        pos = torch.zeros((len(groups), width), dtype=torch.long)
        for r, group in enumerate(groups):
            at = 0
            for i in group:
                n = lengths[i]
                ids[r, at : at + n] = torch.tensor(features[i]["input_ids"])
                lab = torch.tensor(features[i]["labels"])
                lab[0] = IGNORE_INDEX
                labels[r, at : at + n] = lab
                pos[r, at : at + n] = torch.arange(n)
                at += n
            # Padding forms its own pseudo-sequence (positions restart) so no real token attends to it.
            pos[r, at:] = torch.arange(width - at)
        return {"input_ids": ids, "labels": labels, "position_ids": pos, "n_tokens": sum(lengths)}


class PaddedCollator:
    """Pads every example of a micro-batch to the longest one (right padding, attention_mask)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        lengths = [len(f["input_ids"]) for f in features]
        width = max(lengths)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for r, (f, n) in enumerate(zip(features, lengths)):
            ids[r, :n] = torch.tensor(f["input_ids"])
            labels[r, :n] = torch.tensor(f["labels"])
            mask[r, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, "n_tokens": sum(lengths)}
