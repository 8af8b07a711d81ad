"""Graders, templates, item handling and the win-rate interval against hand-computed values."""

import math

import pytest

from ml.evals import (
    EvalItem,
    EvalSpecError,
    GradeRow,
    check_item,
    grade_rows,
    input_messages,
    pairwise_summary,
    parse_items,
    render_template,
    validate_criteria,
    wilson_interval,
)
from ml.evals.templates import TemplateError


def row(output: str, **item) -> GradeRow:
    return GradeRow(item=item, sample={"input": [{"role": "user", "content": "q"}], "output_text": output})


def check(op: str, output: str, reference: str) -> tuple[float, bool]:
    [spec] = validate_criteria([{"type": "string_check", "name": "c", "operation": op,
                                 "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}])
    [[res]] = grade_rows([spec], [row(output, answer=reference)])
    return res.score, res.passed


@pytest.mark.parametrize("op,output,reference,passed", [
    ("eq", "Paris", "Paris", True), ("eq", "paris", "Paris", False),
    ("ne", "Lyon", "Paris", True), ("ne", "Paris", "Paris", False),
    ("like", "It is Paris.", "Paris", True), ("like", "It is paris.", "Paris", False),
    ("ilike", "It is PARIS.", "paris", True), ("ilike", "It is Lyon.", "paris", False),
])
def test_string_check_operations(op, output, reference, passed):
    assert check(op, output, reference) == (1.0 if passed else 0.0, passed)


def similarity(metric: str, output: str, reference: str, threshold: float = 0.5):
    [spec] = validate_criteria([{"type": "text_similarity", "name": "s", "evaluation_metric": metric,
                                 "input": "{{sample.output_text}}", "reference": "{{item.ref}}",
                                 "pass_threshold": threshold}])
    [[res]] = grade_rows([spec], [row(output, ref=reference)])
    return res


def test_fuzzy_match_is_normalised_indel_similarity():
    # kitten -> sitting: 5 insertions/deletions over 6 + 7 characters
    assert similarity("fuzzy_match", "kitten", "sitting").score == pytest.approx(1 - 5 / 13)
    assert similarity("fuzzy_match", "same", "same").score == 1.0


def test_rouge_scores_by_hand():
    # unigrams: 2 of 3 shared -> P = R = F = 2/3; bigrams: 1 of 2 -> 0.5; LCS "the cat" = 2 -> 2/3
    assert similarity("rouge_1", "the cat sat", "the cat ran").score == pytest.approx(2 / 3)
    assert similarity("rouge_2", "the cat sat", "the cat ran").score == pytest.approx(0.5)
    assert similarity("rouge_l", "the cat sat", "the cat ran").score == pytest.approx(2 / 3)
    assert similarity("rouge_l", "sat the cat", "the cat ran").score == pytest.approx(2 / 3)


def test_bleu_and_gleu_extremes_and_threshold():
    text = "the quick brown fox jumps over the lazy dog"
    assert similarity("bleu", text, text).score == pytest.approx(1.0)
    assert similarity("bleu", "completely different words here", text).score == 0.0
    assert similarity("gleu", text, text).score == pytest.approx(1.0)
    res = similarity("rouge_1", "the cat sat", "the cat ran", threshold=0.7)
    assert not res.passed and res.score == pytest.approx(2 / 3)
    assert similarity("rouge_1", "the cat sat", "the cat ran", threshold=0.6).passed


def test_reward_model_scores_and_pairwise_outcomes():
    seen = []

    def scorer(model, convs):  # a real (if simple) scorer: longer replies score higher
        seen.append((model, convs))
        return [float(len(c[-1]["content"])) for c in convs]

    crit = validate_criteria([
        {"type": "reward_model", "name": "rm", "model": "rm-1", "pass_threshold": 3},
        {"type": "reward_model", "name": "vs", "model": "rm-1", "mode": "pairwise"},
    ])
    rows = [GradeRow({}, {"input": [{"role": "user", "content": "hi"}], "output_text": out},
                     {"input": [{"role": "user", "content": "hi"}], "output_text": base})
            for out, base in [("hello", "hi"), ("yo", "hey"), ("abc", "xyz")]]
    res = grade_rows(crit, rows, scorer)
    assert [r[0].score for r in res] == [5.0, 2.0, 3.0]
    assert [r[0].passed for r in res] == [True, False, True]
    assert [r[1].extra["outcome"] for r in res] == ["win", "loss", "tie"]
    assert [r[1].score for r in res] == [1.0, 0.0, 0.5]
    assert seen[0][1][0] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert len(seen[1][1]) == 6  # pairwise scores both answers of every row in one call


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    s = pairwise_summary(["win"] * 6 + ["tie"] * 2 + ["loss"] * 2)
    assert (s.wins, s.ties, s.losses, s.n) == (6, 2, 2, 10)
    assert s.win_rate == pytest.approx(0.7)
    assert (s.ci_low, s.ci_high) == pytest.approx(wilson_interval(7, 10))
    assert s.ci_low < 0.7 < s.ci_high and s.interval == "wilson"


@pytest.mark.parametrize("spec,param", [
    ({"type": "string_check", "name": "a", "operation": "contains", "input": "x", "reference": "y"},
     "testing_criteria[0].operation"),
    ({"type": "string_check", "name": "a", "operation": "eq", "reference": "y"}, "testing_criteria[0].input"),
    ({"type": "text_similarity", "name": "a", "evaluation_metric": "cosine", "input": "x", "reference": "y",
      "pass_threshold": 0.5}, "testing_criteria[0].evaluation_metric"),
    ({"type": "text_similarity", "name": "a", "evaluation_metric": "bleu", "input": "x", "reference": "y"},
     "testing_criteria[0].pass_threshold"),
    ({"type": "label_model", "name": "a"}, "testing_criteria[0].type"),
    ({"type": "reward_model", "name": "a"}, "testing_criteria[0].model"),
    ({"type": "reward_model", "name": "a", "model": "m", "mode": "best"}, "testing_criteria[0].mode"),
    ({"type": "string_check", "operation": "eq", "input": "x", "reference": "y"}, "testing_criteria[0].name"),
    ({"type": "string_check", "name": "a", "operation": "eq", "input": "{{answer}}", "reference": "y"},
     "testing_criteria[0].input"),
])
def test_bad_criteria_name_the_field(spec, param):
    with pytest.raises(EvalSpecError) as e:
        validate_criteria([spec])
    assert e.value.param == param


def test_duplicate_criterion_names_are_refused():
    c = {"type": "string_check", "name": "a", "operation": "eq", "input": "x", "reference": "y"}
    with pytest.raises(EvalSpecError) as e:
        validate_criteria([c, c])
    assert e.value.param == "testing_criteria[1].name"


def test_templates_items_and_messages():
    ns = {"item": {"q": "2+2?", "meta": {"n": 4}, "tags": ["a"]}, "sample": {"output_text": "4"}}
    assert render_template("Q: {{ item.q }} A: {{sample.output_text}} n={{item.meta.n}}", ns) == "Q: 2+2? A: 4 n=4"
    assert render_template("{{item.tags}}", ns) == '["a"]'
    with pytest.raises(TemplateError, match="item.missing"):
        render_template("{{item.missing}}", ns)
    items = parse_items(['{"item": {"q": "a"}}\n', "\n", '{"q": "b"}\n'])
    assert [(i.index, i.item) for i in items] == [(0, {"q": "a"}), (1, {"q": "b"})]
    with pytest.raises(EvalSpecError, match="line 2: invalid JSON"):
        parse_items(['{"item": {}}', "{oops"])
    schema = {"type": "object", "properties": {"q": {"type": "string"}, "n": {"type": "integer"}}, "required": ["q"]}
    check_item({"q": "a", "n": 1}, schema, "item 0")
    with pytest.raises(EvalSpecError, match="required field 'q'"):
        check_item({"n": 1}, schema, "item 3")
    with pytest.raises(EvalSpecError, match="item.n should be integer"):
        check_item({"q": "a", "n": True}, schema, "item 0")
    item = EvalItem(0, {"q": "2+2?", "chat": [{"role": "user", "content": "hi"}]})
    tpl = {"type": "template", "template": [{"role": "developer", "content": "Be brief."},
                                            {"role": "user", "content": {"type": "input_text", "text": "{{item.q}}"}}]}
    assert input_messages(tpl, item) == [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "2+2?"}]
    assert input_messages({"type": "item_reference", "item_reference": "item.chat"}, item) == \
        [{"role": "user", "content": "hi"}]
    assert input_messages({"type": "item_reference", "item_reference": "{{item.q}}"}, item) == \
        [{"role": "user", "content": "2+2?"}]
    assert math.isclose(pairwise_summary([]).n, 0)
