"""Evaluation graders and statistics (OpenAI's Evals shapes), as pure functions.

Owns: testing-criteria validation, `{{item.x}}` / `{{sample.output_text}}` templates, eval items and
their input messages, the graders (string_check, text_similarity, reward_model) and the pairwise
win-rate statistics. It does not sample models or load reward models: callers pass a scorer.
"""

from ml.evals.criteria import SUPPORTED_METRICS, EvalSpecError, validate_criteria
from ml.evals.graders import GradeResult, GradeRow, grade_rows
from ml.evals.items import EvalItem, check_item, input_messages, parse_items
from ml.evals.pairwise import PairwiseSummary, pairwise_summary, wilson_interval
from ml.evals.templates import TemplateError, render_template

__all__ = [
    "SUPPORTED_METRICS",
    "EvalItem",
    "EvalSpecError",
    "GradeResult",
    "GradeRow",
    "PairwiseSummary",
    "TemplateError",
    "check_item",
    "grade_rows",
    "input_messages",
    "pairwise_summary",
    "parse_items",
    "render_template",
    "validate_criteria",
    "wilson_interval",
]
