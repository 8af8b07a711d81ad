"""Shared pieces for the training tests: tiny datasets in canonical form and sinks that stop a run."""

from __future__ import annotations

import os

import pytest
import torch

from ml.events import PrintSink
from ml.records import Conversation, Message, write_canonical

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

WORDS = ["apple", "banana", "cherry", "date"]


def word_conversations(n: int) -> list[Conversation]:
    """A repetitive task a tiny model can learn in a few steps."""
    return [
        Conversation(
            (Message("user", f"Say fruit {i % 4}."), Message("assistant", f"{WORDS[i % 4]} {WORDS[i % 4]}"))
        )
        for i in range(n)
    ]


@pytest.fixture
def word_data(tmp_path):
    train, valid = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    write_canonical(train, word_conversations(32))
    write_canonical(valid, word_conversations(4))
    return train, valid


class StopAtSink(PrintSink):
    """Says `word` ("pause" or "cancel") once the run has reported step `at`."""

    def __init__(self, word: str | None = None, at: int = 0) -> None:
        super().__init__(verbose=False)
        self.word, self.at = word, at
        self.polls_after_request = 0

    def control(self):
        done = max((s for s, _ in self.steps), default=0)
        if self.word and done >= self.at:
            self.polls_after_request += 1
            return self.word
        return None

    def messages(self) -> list[str]:
        return [m for m, _ in self.logs]

    def metric_steps(self) -> list[int]:
        return [s for s, v in self.steps if "train_loss" in v]
