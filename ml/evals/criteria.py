"""Testing criteria as OpenAI's Evals API takes them, checked once when an eval is created.

Supported: `string_check`, `text_similarity` (the metrics in SUPPORTED_METRICS) and ChatForge's own
`reward_model` (score with a trained reward model; `mode: "pairwise"` compares a run's model against
its `baseline_model`). OpenAI's model-judged graders (`label_model`, `score_model`, `python`,
`multi`) are refused with a message saying so, never accepted and ignored.
"""

from __future__ import annotations

import copy
from typing import Any

from ml.evals.templates import variables

STRING_OPERATIONS = ("eq", "ne", "like", "ilike")
SUPPORTED_METRICS = ("fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5",
                     "rouge_l")
UNSUPPORTED_METRICS = {"cosine": "needs an embeddings model", "meteor": "needs WordNet data"}
REFUSED_TYPES = ("label_model", "score_model", "python", "multi")
REWARD_MODES = ("score", "pairwise")


class EvalSpecError(ValueError):
    """Invalid eval or run settings; `param` is the dotted field name."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message, self.param = message, param


def _string(spec: dict, key: str, at: str) -> str:
    value = spec.get(key)
    if not isinstance(value, str) or not value:
        raise EvalSpecError(f"{at}.{key} must be a non-empty string", f"{at}.{key}")
    return value


def _template(spec: dict, key: str, at: str) -> str:
    value = _string(spec, key, at) if key in spec else None
    if value is None:
        raise EvalSpecError(f"{at}.{key} is required", f"{at}.{key}")
    for var in variables(value):
        if var.split(".")[0] not in ("item", "sample"):
            raise EvalSpecError(f"{at}.{key}: unknown variable {{{{{var}}}}} (use item.* or sample.*)",
                                f"{at}.{key}")
    return value


def _number(spec: dict, key: str, at: str, required: bool) -> float | None:
    value = spec.get(key)
    if value is None:
        if required:
            raise EvalSpecError(f"{at}.{key} is required", f"{at}.{key}")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EvalSpecError(f"{at}.{key} must be a number", f"{at}.{key}")
    return float(value)


def validate_criterion(spec: Any, at: str) -> dict:
    if not isinstance(spec, dict):
        raise EvalSpecError(f"{at} must be an object", at)
    kind = spec.get("type")
    if kind in REFUSED_TYPES:
        raise EvalSpecError(f"{at}.type {kind!r} is not supported by ChatForge (no hosted judge models); "
                            "use string_check, text_similarity or reward_model", f"{at}.type")
    out = copy.deepcopy(spec)
    out["name"] = _string(spec, "name", at)
    if kind == "string_check":
        _template(spec, "input", at)
        _template(spec, "reference", at)
        if spec.get("operation") not in STRING_OPERATIONS:
            raise EvalSpecError(f"{at}.operation must be one of {', '.join(STRING_OPERATIONS)}",
                                f"{at}.operation")
    elif kind == "text_similarity":
        _template(spec, "input", at)
        _template(spec, "reference", at)
        metric = spec.get("evaluation_metric")
        if metric in UNSUPPORTED_METRICS:
            raise EvalSpecError(f"{at}.evaluation_metric {metric!r} is not supported ({UNSUPPORTED_METRICS[metric]}); "
                                f"use one of {', '.join(SUPPORTED_METRICS)}", f"{at}.evaluation_metric")
        if metric not in SUPPORTED_METRICS:
            raise EvalSpecError(f"{at}.evaluation_metric must be one of {', '.join(SUPPORTED_METRICS)}",
                                f"{at}.evaluation_metric")
        threshold = _number(spec, "pass_threshold", at, required=True)
        if not 0.0 <= threshold <= 1.0:
            raise EvalSpecError(f"{at}.pass_threshold must be between 0 and 1", f"{at}.pass_threshold")
    elif kind == "reward_model":
        _string(spec, "model", at)
        mode = out.setdefault("mode", "score")
        if mode not in REWARD_MODES:
            raise EvalSpecError(f"{at}.mode must be one of {', '.join(REWARD_MODES)}", f"{at}.mode")
        _number(spec, "pass_threshold", at, required=False)
    else:
        raise EvalSpecError(f"{at}.type must be one of string_check, text_similarity, reward_model "
                            f"(got {kind!r})", f"{at}.type")
    return out


def validate_criteria(criteria: Any) -> list[dict]:
    """The criteria, checked; raises EvalSpecError naming the first bad field."""
    if not isinstance(criteria, list) or not criteria:
        raise EvalSpecError("testing_criteria must be a non-empty list", "testing_criteria")
    out = [validate_criterion(c, f"testing_criteria[{i}]") for i, c in enumerate(criteria)]
    seen: set[str] = set()
    for i, c in enumerate(out):
        if c["name"] in seen:
            raise EvalSpecError(f"testing_criteria[{i}].name {c['name']!r} is used twice; names must be unique",
                                f"testing_criteria[{i}].name")
        seen.add(c["name"])
    return out


def reward_models(criteria: list[dict]) -> list[str]:
    return sorted({c["model"] for c in criteria if c.get("type") == "reward_model"})


def is_pairwise(criteria: list[dict]) -> bool:
    return any(c.get("type") == "reward_model" and c.get("mode") == "pairwise" for c in criteria)
