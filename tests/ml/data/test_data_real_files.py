"""Every real public sample in tests/fixtures/samples: detected format, kind and exact example count,
plus spot checks that the conversion kept what matters (history, tool calls, newlines).

Counts were established independently (see tests/fixtures/samples/MANIFEST.md): tatsu alpaca has one "<nooutput>"
and one empty output (skipped), the hfcols copy of its first 100 has the "<nooutput>" one, hh-rlhf
line 87 has an empty chosen reply (skipped), the MedicalGPT ShareGPT line 119 ends on a human turn
(trimmed with a warning, still counted). KTO is recognised but refused as not trainable yet.
"""

from __future__ import annotations

import json

import pytest

from ml.data import inspect_file
from ml.records import Conversation, PreferenceExample, read_canonical
from tests.support.data import SAMPLES

DATASETS = SAMPLES

# file -> (format, kind, n_examples, n_skipped, ok)
EXPECTED = {
    "sft_tatsu_alpaca_first335.json": ("alpaca", "sft", 333, 2, True),
    "sft_tatsu_alpaca_hfcols_first100.json": ("alpaca", "sft", 99, 1, True),
    "sft_alpaca_cleaned_first1000.json": ("alpaca", "sft", 1000, 0, True),
    "sft_alpaca_zh_llamafactory_demo.json": ("alpaca", "sft", 1000, 0, True),
    "sft_belle_open_source_1k.jsonl": ("alpaca", "sft", 1000, 0, True),
    "sft_belle_school_math_first1000.jsonl": ("alpaca", "sft", 1000, 0, True),
    "sft_gpteacher_codegen_first300.json": ("gpteacher", "sft", 300, 0, True),
    "sft_flan_cot_gsm8k_train_first300.tsv": ("flan_cot", "sft", 300, 0, True),
    "sft_flan_cot_aqua_train_first300.tsv": ("flan_cot", "sft", 300, 0, True),
    "sft_alpaca_cot_flan_strategyqa_first300.json": ("alpaca", "sft", 300, 0, True),
    "sharegpt_fastchat_dummy_conversation.json": ("sharegpt", "sft", 500, 0, True),
    "sharegpt_gpt4_zh_first300.jsonl": ("sharegpt", "sft", 300, 0, True),
    "openai_chat_gsm8k_train.jsonl": ("openai_chat", "sft", 449, 0, True),
    "openai_chat_toolcall_train.jsonl": ("openai_chat", "sft", 86, 0, True),
    "openai_dpo_orca_validation.jsonl": ("openai_dpo", "preference", 284, 0, True),
    "pref_hh_rlhf_harmless_base_test_first500.jsonl": ("hh_rlhf", "preference", 499, 1, True),
    "llamafactory_dpo_en_demo.json": ("sharegpt_preference", "preference", 300, 0, True),
    "llamafactory_kto_en_demo.json": ("kto", None, 300, 0, False),
    "llamafactory_glaive_toolcall_en_demo.json": ("sharegpt_tools", "sft", 300, 0, True),
    "llamafactory_identity.json": ("alpaca", "sft", 91, 0, True),
}
# exact duplicates (canonical JSON), counted independently of the converter
DUPLICATES = {
    "sft_alpaca_zh_llamafactory_demo.json": 8,
    "llamafactory_glaive_toolcall_en_demo.json": 35,
    "llamafactory_dpo_en_demo.json": 5,
}


def test_all_twenty_files_are_covered():
    files = {p.name for p in DATASETS.iterdir() if p.suffix != ".md"}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_file_detected_and_counted(name, tmp_path):
    fmt, kind, n, skipped, ok = EXPECTED[name]
    out = tmp_path / "out.jsonl"
    r = inspect_file(DATASETS / name, out_path=out)
    assert (r.format, r.kind, r.n_examples, r.n_skipped, r.ok) == (fmt, kind, n, skipped, ok), r.summary()
    assert r.duplicates == DUPLICATES.get(name, 0)
    if ok:
        assert r.n_errors == 0
        assert sum(1 for _ in read_canonical(out, kind)) == n
    else:
        assert not out.exists()  # a refused upload leaves no canonical file behind


def _records(tmp_path, name, kind):
    out = tmp_path / "out.jsonl"
    assert inspect_file(DATASETS / name, out_path=out).ok
    return list(read_canonical(out, kind))


def test_tatsu_alpaca_skips_nooutput_and_empty_output_with_warnings():
    r = inspect_file(DATASETS / "sft_tatsu_alpaca_first335.json")
    texts = [str(w) for w in r.warnings]
    assert texts[0].startswith("record 9 (line 42): ") and "<nooutput>" in texts[0]
    assert texts[1].startswith("record 285 (line 1422): ") and '"output" is empty' in texts[1]


def test_alpaca_single_rendering_joins_instruction_and_input(tmp_path):
    recs = _records(tmp_path, "sft_tatsu_alpaca_first335.json", "sft")
    src = json.loads((DATASETS / "sft_tatsu_alpaca_first335.json").read_text())
    with_input = next(i for i, r in enumerate(src) if r["input"])
    conv = next(c for c in recs if c.messages[-1].content == src[with_input]["output"])
    assert [m.role for m in conv.messages] == ["user", "assistant"]
    assert conv.messages[0].content == src[with_input]["instruction"] + "\n\n" + src[with_input]["input"]
    no_input = next(c for c in recs if c.messages[-1].content == src[0]["output"])
    assert no_input.messages[0].content == src[0]["instruction"]


def test_hh_rlhf_keeps_multi_turn_history(tmp_path):
    recs = _records(tmp_path, "pref_hh_rlhf_harmless_base_test_first500.jsonl", "preference")
    first = json.loads((DATASETS / "pref_hh_rlhf_harmless_base_test_first500.jsonl").open().readline())
    ex = recs[0]
    assert isinstance(ex, PreferenceExample)
    assert [m.role for m in ex.prompt] == ["user", "assistant", "user", "assistant", "user"]
    assert ex.prompt[0].content == "what are some pranks with a pen i can do?"
    assert first["chosen"].endswith(ex.chosen.content) and not ex.chosen.content.startswith(" ")
    assert first["rejected"].endswith(ex.rejected.content)
    assert max(sum(m.role == "user" for m in e.prompt) for e in recs) >= 8


def test_sharegpt_trailing_human_turn_is_trimmed_with_warning(tmp_path):
    r = inspect_file(DATASETS / "sharegpt_gpt4_zh_first300.jsonl")
    trimmed = [w for w in r.warnings if "after the last assistant reply" in w.message]
    assert [w.line for w in trimmed] == [119]
    recs = _records(tmp_path, "sharegpt_gpt4_zh_first300.jsonl", "sft")
    assert all(c.messages[-1].role == "assistant" for c in recs)
    assert len(recs[118].messages) == 2


def test_glaive_function_calls_become_tool_calls(tmp_path):
    recs = _records(tmp_path, "llamafactory_glaive_toolcall_en_demo.json", "sft")
    conv = recs[0]
    call = next(m for m in conv.messages if m.tool_calls)
    assert call.role == "assistant"
    fn = call.tool_calls[0]["function"]
    assert fn["name"] == "search_recipes" and json.loads(fn["arguments"]) == {
        "ingredients": ["chicken", "bell peppers", "rice"]
    }
    assert [m.role for m in conv.messages][3:6] == ["assistant", "tool", "assistant"]
    assert conv.tools[0]["type"] == "function" and conv.tools[0]["function"]["name"] == "search_recipes"
    assert any(c.tools is None for c in recs)  # tools "" or "[]" mean no tools


def test_openai_tool_call_messages_without_content(tmp_path):
    recs = _records(tmp_path, "openai_chat_toolcall_train.jsonl", "sft")
    last = recs[0].messages[-1]
    assert last.role == "assistant" and last.content == "" and last.tool_calls[0]["id"] == "call_1"
    assert recs[0].tools and len(recs[0].tools) == 2


def test_flan_aqua_literal_backslash_n_becomes_newline(tmp_path):
    recs = _records(tmp_path, "sft_flan_cot_aqua_train_first300.tsv", "sft")
    user, reply = recs[0].messages
    assert "\\n" not in user.content and "\nOptions:\n(A) 300\n" in user.content
    assert reply.content == "1/7:1/7:1/14 = 2:2:1\n1/5*5600 = 1120\n2240-1120 = 1120\nSo the answer is (C)."


def test_sft_records_are_conversations(tmp_path):
    recs = _records(tmp_path, "sft_gpteacher_codegen_first300.json", "sft")
    assert all(isinstance(c, Conversation) for c in recs)
    assert recs[0].messages[0].content.endswith("\n\nwidth: 5, height: 8")
