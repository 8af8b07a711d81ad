"""Preference files as token ids: canonical PreferenceExample JSONL rendered once through ml.data.render.

Owns reading a preference file into (prompt_ids, chosen_ids, rejected_ids) rows, with counts for the
job log (load_preference_splits: a run's training and validation files), and the two row shapes trl's
trainers take already tokenised: reward-model rows (chosen_ids / rejected_ids = whole sequences) and
DPO rows (prompt_ids + completions). No tokenisation happens here
beyond calling render_preference, so training and serving see identical prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ml.data.render import render_preference
from ml.events import JobSink
from ml.records import DataError, PreferenceExample, read_canonical


@dataclass
class PreferenceSplit:
    prompt_ids: list[list[int]] = field(default_factory=list)
    chosen_ids: list[list[int]] = field(default_factory=list)
    rejected_ids: list[list[int]] = field(default_factory=list)
    examples: list[PreferenceExample] = field(default_factory=list)
    n_truncated: int = 0
    # Pairs dropped because chosen and rejected are identical (no preference to learn).
    n_skipped: int = 0

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def n_tokens(self) -> int:
        return sum(
            len(p) * 2 + len(c) + len(r)
            for p, c, r in zip(self.prompt_ids, self.chosen_ids, self.rejected_ids)
        )

    def reward_rows(self) -> list[dict[str, list[int]]]:
        return [
            {"chosen_ids": p + c, "rejected_ids": p + r}
            for p, c, r in zip(self.prompt_ids, self.chosen_ids, self.rejected_ids)
        ]

    def dpo_rows(self) -> list[dict[str, list[int]]]:
        return [
            {"prompt_ids": p, "chosen_ids": c, "rejected_ids": r}
            for p, c, r in zip(self.prompt_ids, self.chosen_ids, self.rejected_ids)
        ]

    def describe(self) -> str:
        extra = []
        if self.n_truncated:
            extra.append(f"{self.n_truncated} truncated")
        if self.n_skipped:
            extra.append(f"{self.n_skipped} skipped (chosen == rejected)")
        return f"{len(self)} pairs, {self.n_tokens:,} tokens" + (f" ({', '.join(extra)})" if extra else "")


def load_preferences(tokenizer, path: str | Path, max_length: int | None) -> PreferenceSplit:
    split = PreferenceSplit()
    for ex in read_canonical(path, "preference"):
        if ex.chosen.content == ex.rejected.content and ex.chosen.tool_calls == ex.rejected.tool_calls:
            split.n_skipped += 1
            continue
        p, c, r = render_preference(tokenizer, ex)
        if max_length is not None and len(p) + max(len(c), len(r)) > max_length:
            p, c, r = render_preference(tokenizer, ex, max_length)
            split.n_truncated += 1
        split.prompt_ids.append(p)
        split.chosen_ids.append(c)
        split.rejected_ids.append(r)
        split.examples.append(ex)
    return split


def load_preference_splits(
    tokenizer, train_file: str | Path, valid_file: str | Path | None, max_length: int, sink: JobSink
) -> tuple[PreferenceSplit, PreferenceSplit | None]:
    """The training and validation pairs of a run, each described in the job log; no validation split
    when there is no file or no usable pair in it. Raises DataError when no training pair is usable."""
    splits: list[PreferenceSplit | None] = []
    for name, path in (("Training", train_file), ("Validation", valid_file)):
        split = load_preferences(tokenizer, path, max_length) if path else None
        if split is not None:
            sink.log(
                f"{name} file: {split.describe()}.",
                data={"pairs": len(split), "tokens": split.n_tokens, "truncated": split.n_truncated,
                      "skipped": split.n_skipped},
            )
        splits.append(split if split else None)
    train, valid = splits
    if train is None:
        raise DataError("the training file has no usable preference pair")
    return train, valid
