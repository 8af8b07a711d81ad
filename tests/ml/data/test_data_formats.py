"""Record conversions for formats without a real sample (tests/fixtures/datasets/valid) and the rules
of individual converters: hh transcripts, ties, labels, rankings, Alpaca's one rendering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml.data import FORMATS, detect_record, inspect_file, inspect_rows
from ml.records import read_canonical

VALID = Path(__file__).parents[2] / "fixtures" / "datasets" / "valid"

# file -> (format, kind, n_examples, n_skipped)
VALID_EXPECTED = {
    "alpaca.csv": ("alpaca", "sft", 12, 0),
    "alpaca_history.json": ("alpaca", "sft", 12, 0),
    "alpaca_ranked.json": ("alpaca_ranked", "preference", 12, 0),
    "gpt4all.jsonl": ("gpt4all", "sft", 12, 0),
    "gpt4llm_comparison.json": ("gpt4llm_comparison", "preference", 12, 0),
    "gpt4llm_ranked.json": ("gpt4llm_ranked", "preference", 12, 0),
    "gptj_pairwise.jsonl": ("prompt_chosen_rejected", "preference", 12, 0),
    "hc3.jsonl": ("hc3", "sft", 24, 0),
    "openai_completion.jsonl": ("openai_completion", "sft", 12, 0),
    "openai_prompts.jsonl": ("openai_prompts", "prompts", 12, 0),
    "prompt_completion.tsv": ("openai_completion", "sft", 12, 0),
    "prompt_only.jsonl": ("prompt_only", "prompts", 12, 0),
    "rm_static.jsonl": ("rm_static", "preference", 12, 0),
    "shp.jsonl": ("shp", "preference", 12, 0),
    "webgpt.jsonl": ("webgpt", "preference", 12, 1),
}


def convert(tmp_path, name_or_path, kind=None, **kw):
    path = name_or_path if isinstance(name_or_path, Path) else VALID / name_or_path
    out = tmp_path / "out.jsonl"
    report = inspect_file(path, out_path=out, **kw)
    recs = list(read_canonical(out, kind or report.kind)) if report.ok else []
    return report, recs


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_valid_fixtures_cover_every_registered_format():
    real = {
        "alpaca",
        "gpteacher",
        "flan_cot",
        "sharegpt",
        "sharegpt_tools",
        "openai_chat",
        "openai_dpo",
        "hh_rlhf",
        "sharegpt_preference",
        "kto",
    }
    assert set(FORMATS) == real | {v[0] for v in VALID_EXPECTED.values()}


@pytest.mark.parametrize("name", sorted(VALID_EXPECTED))
def test_valid_fixture(name, tmp_path):
    report, recs = convert(tmp_path, name)
    assert (report.format, report.kind, report.n_examples, report.n_skipped) == VALID_EXPECTED[name], (
        report.summary()
    )
    assert report.ok and len(recs) == report.n_examples


def test_webgpt_higher_score_wins_and_ties_are_dropped(tmp_path):
    report, recs = convert(tmp_path, "webgpt.jsonl")
    assert all(r.chosen.content.startswith("good") and r.rejected.content.startswith("bad") for r in recs)
    assert (
        str(report.warnings[0])
        == "line 13: score_0 equals score_1 (0): a tie has no preferred answer; record skipped"
    )


def test_shp_label_one_prefers_a(tmp_path):
    _, recs = convert(tmp_path, "shp.jsonl")
    assert all(r.chosen.content.startswith("preferred") for r in recs)
    assert recs[0].prompt[0].content == "Post 0"


def test_gpt4llm_ranked_pairs_best_with_worst(tmp_path):
    _, recs = convert(tmp_path, "gpt4llm_ranked.json")
    assert (recs[3].chosen.content, recs[3].rejected.content) == ("best 3", "worst 3")


def test_rm_static_prompt_transcript_and_leading_space(tmp_path):
    _, recs = convert(tmp_path, "rm_static.jsonl")
    assert [m.role for m in recs[5].prompt] == ["user", "assistant", "user"]
    assert recs[5].prompt[-1].content == "Number 5?" and recs[5].chosen.content == "5"


def test_hc3_one_example_per_non_empty_answer(tmp_path):
    _, recs = convert(tmp_path, "hc3.jsonl")
    assert [r.messages[1].content for r in recs[:2]] == ["Because 0.", "It is 0."]


def test_alpaca_history_and_system(tmp_path):
    _, recs = convert(tmp_path, "alpaca_history.json")
    assert [(m.role, m.content) for m in recs[1].messages] == [
        ("system", "Be terse."),
        ("user", "Hi"),
        ("assistant", "Hello"),
        ("user", "Count"),
        ("assistant", "1 2 3"),
        ("user", "And 1?"),
        ("assistant", "1"),
    ]


def test_csv_quoted_fields_and_tsv_escapes(tmp_path):
    _, recs = convert(tmp_path, "alpaca.csv")
    assert recs[2].messages[0].content == "Double 2, please"
    assert recs[2].messages[1].content == '4, "quoted", and\na second line'
    _, recs = convert(tmp_path, "prompt_completion.tsv")
    assert recs[0].messages[0].content == "Say 0\nplease"


HH_PROMPT = "\n\nHuman: Hi there\n\nAssistant: Hello! What can I do?\n\nHuman: Name a fruit.\n\nAssistant: Apple.\n\nHuman: Another one?"


def test_hh_three_turn_transcript_keeps_history_and_splits_at_last_assistant(tmp_path):
    rows = [
        {
            "chosen": HH_PROMPT + f"\n\nAssistant: Sure, banana number {i}.",
            "rejected": HH_PROMPT + "\n\nAssistant: Sure, no.",
        }
        for i in range(12)
    ]
    report, recs = convert(tmp_path, write_jsonl(tmp_path / "hh.jsonl", rows))
    assert report.format == "hh_rlhf" and report.ok
    ex = recs[4]
    assert [(m.role, m.content) for m in ex.prompt] == [
        ("user", "Hi there"),
        ("assistant", "Hello! What can I do?"),
        ("user", "Name a fruit."),
        ("assistant", "Apple."),
        ("user", "Another one?"),
    ]
    # both replies share "Sure," -- the split is at the last Assistant marker, not a common prefix
    assert (ex.chosen.content, ex.rejected.content) == ("Sure, banana number 4.", "Sure, no.")


def test_pairs_with_transcript_prompt_and_trl_conversational_lists(tmp_path):
    rows = [{"prompt": "\n\nHuman: What is 2+2?\n\nAssistant:", "chosen": " 4", "rejected": " 5"}] * 2 + [
        {
            "prompt": [{"role": "user", "content": "Hi"}],
            "chosen": [{"role": "assistant", "content": "Hello"}],
            "rejected": [{"role": "assistant", "content": "Bye"}],
        }
    ]
    report = inspect_rows(rows, min_examples=1, out_path=tmp_path / "o.jsonl")
    assert report.format == "prompt_chosen_rejected" and report.ok and report.duplicates == 1
    recs = list(read_canonical(tmp_path / "o.jsonl", "preference"))
    assert recs[0].prompt[0].content == "What is 2+2?" and recs[0].chosen.content == "4"
    assert recs[2].chosen.content == "Hello"


def test_openai_dpo_identical_replies_are_skipped(tmp_path):
    row = {
        "input": {"messages": [{"role": "user", "content": "x"}]},
        "preferred_output": [{"role": "assistant", "content": "same"}],
        "non_preferred_output": [{"role": "assistant", "content": "same"}],
    }
    report = inspect_rows([row], min_examples=0)
    assert report.n_skipped == 1 and report.n_examples == 0
    assert "identical" in report.warnings[0].message


def test_detect_record_prefers_the_most_specific_format():
    assert detect_record({"prompt": "p", "response": "r", "chosen": "c", "rejected": "x"}).name == "rm_static"
    assert detect_record({"prompt": "p", "chosen": "c", "rejected": "x"}).name == "prompt_chosen_rejected"
    assert detect_record({"prompt": "p", "response": "r"}).name == "gpt4all"
    assert detect_record({"prompt": "p"}).name == "prompt_only"
    assert detect_record({"messages": [], "label": True}).name == "kto"
    assert detect_record({"conversations": [], "chosen": {}, "rejected": {}}).name == "sharegpt_preference"
    assert detect_record({"instruction": "i", "output": ["a", "b"]}).name == "alpaca_ranked"
    assert detect_record({"instruction": "i", "input": "", "output": "a", "history": None}).name == "alpaca"
    assert detect_record({"foo": 1}) is None and detect_record(["a"]) is None


def test_arrow_style_rows_with_null_optional_fields():
    # datasets.Dataset fills absent struct fields with None: weight/tool_calls/name must read as absent
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"q{i}", "weight": None, "tool_calls": None, "name": None},
                {"role": "assistant", "content": f"a{i}", "weight": None, "tool_calls": None, "name": None},
            ],
            "tools": None,
        }
        for i in range(10)
    ]
    report = inspect_rows(rows)
    assert report.ok and report.format == "openai_chat" and report.container == "rows"


def test_empty_user_turn_is_a_warning_not_an_error():
    rows = [{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "hi"}]}] + [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(10)
    ]
    report = inspect_rows(rows)
    assert report.ok and str(report.warnings[0]) == "record 1: messages[0].content is empty"
