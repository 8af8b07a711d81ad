"""Grading sampled answers against the testing criteria: one GradeResult per (row, criterion).

string_check and text_similarity are pure functions of the item and sample. reward_model criteria
call `reward_scorer(model_id, conversations) -> scores` (the same scorer as POST /v1/rewards), batched
over all rows. Pairwise reward criteria compare the sample with the baseline sample of the same item:
score 1 (win), 0.5 (tie) or 0 (loss); `passed` means a win.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ml.evals.metrics import similarity
from ml.evals.templates import TemplateError, render_template

RewardScorer = Callable[[str, list[list[dict[str, str]]]], list[float]]
TIE_TOLERANCE = 1e-6


@dataclass
class GradeRow:
    item: dict[str, Any]
    sample: dict[str, Any]  # {"input": [messages], "output_text": str, ...}
    baseline: dict[str, Any] | None = None  # the baseline model's sample in pairwise runs


@dataclass
class GradeResult:
    name: str
    type: str
    score: float
    passed: bool
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "type": self.type, "score": self.score, "passed": self.passed, "sample": None}
        if self.error:
            out["error"] = self.error
        out.update(self.extra)
        return out


def _ns(row: GradeRow) -> dict[str, Any]:
    return {"item": row.item, "sample": row.sample}


def string_check(spec: dict, row: GradeRow) -> GradeResult:
    text = render_template(spec["input"], _ns(row))
    ref = render_template(spec["reference"], _ns(row))
    op = spec["operation"]
    if op == "eq":
        ok = text == ref
    elif op == "ne":
        ok = text != ref
    elif op == "like":
        ok = ref in text
    else:  # ilike
        ok = ref.casefold() in text.casefold()
    return GradeResult(spec["name"], "string_check", 1.0 if ok else 0.0, ok)


def text_similarity(spec: dict, row: GradeRow) -> GradeResult:
    text = render_template(spec["input"], _ns(row))
    ref = render_template(spec["reference"], _ns(row))
    score = similarity(spec["evaluation_metric"], text, ref)
    return GradeResult(spec["name"], "text_similarity", score, score >= spec["pass_threshold"],
                       extra={"evaluation_metric": spec["evaluation_metric"]})


def _conversation(sample: dict[str, Any]) -> list[dict[str, str]]:
    return [*sample["input"], {"role": "assistant", "content": sample.get("output_text") or ""}]


def reward_results(spec: dict, rows: Sequence[GradeRow], scorer: RewardScorer) -> list[GradeResult]:
    name, threshold = spec["name"], spec.get("pass_threshold")
    if spec.get("mode") == "pairwise":
        if any(r.baseline is None for r in rows):
            raise ValueError(f"criterion {name!r} is pairwise but the run has no baseline_model")
        convs = [_conversation(r.sample) for r in rows] + [_conversation(r.baseline) for r in rows]
        scores = scorer(spec["model"], convs)
        ours, theirs = scores[: len(rows)], scores[len(rows):]
        out = []
        for a, b in zip(ours, theirs):
            outcome = "tie" if abs(a - b) <= TIE_TOLERANCE else ("win" if a > b else "loss")
            value = {"win": 1.0, "tie": 0.5, "loss": 0.0}[outcome]
            out.append(GradeResult(name, "reward_model", value, outcome == "win",
                                   extra={"mode": "pairwise", "outcome": outcome, "reward": a,
                                          "baseline_reward": b}))
        return out
    scores = scorer(spec["model"], [_conversation(r.sample) for r in rows])
    limit = 0.0 if threshold is None else threshold
    return [GradeResult(name, "reward_model", s, s >= limit, extra={"mode": "score"}) for s in scores]


def grade_rows(criteria: Sequence[dict], rows: Sequence[GradeRow],
               reward_scorer: RewardScorer | None = None) -> list[list[GradeResult]]:
    """results[i][j]: row i graded by criterion j. A template naming a missing field is an error result
    for that row (it counts as errored), not an exception for the whole batch."""
    out: list[list[GradeResult]] = [[] for _ in rows]
    for spec in criteria:
        kind = spec["type"]
        if kind == "reward_model":
            if reward_scorer is None:
                raise ValueError("reward_model criteria need a reward scorer")
            for i, res in enumerate(reward_results(spec, rows, reward_scorer) if rows else []):
                out[i].append(res)
            continue
        grade = string_check if kind == "string_check" else text_similarity
        for i, row in enumerate(rows):
            try:
                out[i].append(grade(spec, row))
            except TemplateError as e:
                out[i].append(GradeResult(spec["name"], kind, 0.0, False, error=str(e)))
    return out
