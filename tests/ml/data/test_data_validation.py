"""File-level rules: SFT vs prompts by whole-file majority, forced format, gzip by magic bytes,
duplicates, capped problem lists, atomic output, problem wording, token statistics."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

import pytest

from ml.data import Problem, inspect_file, inspect_rows
from ml.records import read_canonical
from tests.support.data import SAMPLES

DATASETS = SAMPLES


def chat(i, last="assistant"):
    msgs = [{"role": "user", "content": f"Question {i}?"}]
    if last == "assistant":
        msgs.append({"role": "assistant", "content": f"Answer {i}."})
    return {"messages": msgs}


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- SFT or prompts: decided by the whole file ----------------------------------------------------------


def test_prompt_only_messages_file_is_prompts_and_stray_replies_are_errors(tmp_path):
    rows = [chat(i, last="user") for i in range(20)]
    rows[4] = chat(4)
    r = inspect_file(write_jsonl(tmp_path / "p.jsonl", rows))
    assert (r.format, r.kind, r.n_examples) == ("openai_prompts", "prompts", 19)
    expected = (
        "line 5: the last message is from the assistant: a prompt-only example must end with a user message "
        "(the reply is generated during training)"
    )
    assert [str(e) for e in r.errors] == [expected]


def test_sft_file_with_a_prompt_only_line_is_sft_with_an_error(tmp_path):
    rows = [chat(i) for i in range(20)]
    rows[11] = chat(11, last="user")
    r = inspect_file(write_jsonl(tmp_path / "s.jsonl", rows))
    assert (r.format, r.kind) == ("openai_chat", "sft")
    assert [str(e) for e in r.errors] == ["line 12: no assistant message to learn from"]


def test_majority_after_the_sample_overturns_the_first_guess(tmp_path):
    # 250 chats first (the detection sample only sees those), then 400 prompt-only rows
    rows = [chat(i) for i in range(250)] + [chat(i, last="user") for i in range(400)]
    out = tmp_path / "out.jsonl"
    r = inspect_file(write_jsonl(tmp_path / "m.jsonl", rows), out_path=out)
    assert (r.format, r.kind, r.n_examples) == ("openai_prompts", "prompts", 400)
    assert r.n_errors == 250 and str(r.errors[0]).startswith("line 1: the last message is from the assistant")
    assert not out.exists()


def test_trailing_user_turn_after_a_reply_is_trimmed_in_sft(tmp_path):
    rows = [chat(i) for i in range(12)]
    rows[3]["messages"].append({"role": "user", "content": "thanks"})
    out = tmp_path / "o.jsonl"
    r = inspect_file(write_jsonl(tmp_path / "t.jsonl", rows), out_path=out)
    assert r.ok and r.kind == "sft" and r.warnings[0].line == 4
    assert [m.role for m in list(read_canonical(out, "sft"))[3].messages] == ["user", "assistant"]


# -- forced format, gzip, containers ----------------------------------------------------------------


def test_forced_format_overrides_detection(tmp_path):
    r = inspect_file(DATASETS / "sft_belle_open_source_1k.jsonl", forced_format="gpt4all")
    assert r.format == "gpt4all" and not r.ok
    assert str(r.errors[0]) == 'line 1: missing "prompt"'
    out = tmp_path / "o.jsonl"
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(12)])
    r = inspect_file(path, forced_format="prompt_only", out_path=out)
    assert (r.format, r.kind, r.ok) == ("prompt_only", "prompts", True)
    assert next(read_canonical(out, "prompts")).prompt[0].content == "p0"
    with pytest.raises(ValueError, match="unknown format 'nope'"):
        inspect_file(path, forced_format="nope")


@pytest.mark.parametrize(
    "source",
    [
        "sft_tatsu_alpaca_first335.json",
        "openai_dpo_orca_validation.jsonl",
        "sft_flan_cot_gsm8k_train_first300.tsv",
    ],
)
def test_gzip_detected_by_magic_bytes_not_name(tmp_path, source):
    plain = inspect_file(DATASETS / source)
    packed = tmp_path / "upload.txt"  # a misleading name on purpose
    packed.write_bytes(gzip.compress((DATASETS / source).read_bytes()))
    r = inspect_file(packed)
    assert r.compressed and not plain.compressed
    assert (r.format, r.kind, r.n_examples, r.container) == (
        plain.format,
        plain.kind,
        plain.n_examples,
        plain.container,
    )


def test_jsonl_with_bom_crlf_and_blank_lines(tmp_path):
    body = "\r\n".join(json.dumps(chat(i)) for i in range(12))
    path = tmp_path / "w.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + body.replace("\r\n", "\r\n\r\n", 1).encode() + b"\r\n\r\n")
    r = inspect_file(path)
    assert r.ok and r.n_examples == 12


def test_nul_byte_after_the_sniffed_head_is_located(tmp_path):
    lines = [json.dumps(chat(i)) for i in range(12)]
    lines.insert(
        0,
        json.dumps(
            {"messages": [{"role": "user", "content": "x" * 70_000}, {"role": "assistant", "content": "y"}]}
        ),
    )
    lines[9] = lines[9][:20] + "\x00" + lines[9][20:]
    path = tmp_path / "n.jsonl"
    path.write_text("\n".join(lines) + "\n")
    r = inspect_file(path)
    assert (
        str(r.errors[0]) == "line 10: contains a NUL byte (column 21): this looks like binary data, not text"
    )


def test_one_line_json_array_streams_with_record_numbers(tmp_path):
    rows = [{"instruction": f"i{i}", "input": "", "output": f"o{i}"} for i in range(30)]
    rows[20]["output"] = 7
    path = tmp_path / "a.json"
    path.write_text(json.dumps(rows))
    r = inspect_file(path)
    assert str(r.errors[0]) == 'record 21 (line 1): "output" must be a string, got a number'


# -- report contents --------------------------------------------------------------------------------


def test_duplicates_are_counted_and_the_first_is_named(tmp_path):
    rows = [chat(i) for i in range(12)] + [chat(3), chat(5), chat(3)]
    r = inspect_file(write_jsonl(tmp_path / "d.jsonl", rows))
    assert r.ok and r.duplicates == 3 and r.n_examples == 15
    assert str(r.warnings[-1]).startswith("line 13: exact duplicate of line 4 (3 duplicate examples")


def test_problem_lists_are_capped_but_totals_are_exact(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        "".join("{oops\n" for _ in range(50)) + "".join(json.dumps(chat(i)) + "\n" for i in range(10))
    )
    r = inspect_file(path, max_errors=5)
    assert r.n_errors == 50 and len(r.errors) == 5
    assert r.summary(2).endswith("... and 48 more errors")
    d = r.to_dict(max_problems=2)
    assert len(d["errors"]) == 2 and d["n_errors"] == 50 and d["ok"] is False


def test_min_examples_is_a_parameter(tmp_path):
    path = write_jsonl(tmp_path / "few.jsonl", [chat(i) for i in range(3)])
    assert not inspect_file(path).ok
    r = inspect_file(path, min_examples=3)
    assert r.ok and r.summary() == "3 sft examples in openai_chat format; no problems found"


def test_out_path_written_only_when_ok_and_replaced_atomically(tmp_path):
    out = tmp_path / "canon.jsonl"
    out.write_text("stale\n")
    good = write_jsonl(tmp_path / "g.jsonl", [chat(i) for i in range(10)])
    assert inspect_file(good, out_path=out).ok
    assert out.read_text().count("\n") == 10 and "stale" not in out.read_text()
    bad = write_jsonl(tmp_path / "b.jsonl", [chat(i) for i in range(9)])
    out2 = tmp_path / "sub" / "canon.jsonl"
    assert not inspect_file(bad, out_path=out2).ok
    assert not out2.exists() and list(out2.parent.iterdir()) == []


def test_problem_locations():
    assert str(Problem(7, None, "x", "invalid JSON (Expecting ',' delimiter, column 41)")) == (
        "line 7: invalid JSON (Expecting ',' delimiter, column 41)"
    )
    assert str(Problem(12, 4, None, "m")) == "record 4 (line 12): m"
    assert str(Problem(None, 4, None, "no assistant message to learn from")) == (
        "record 4: no assistant message to learn from"
    )
    assert str(Problem(None, None, None, "the file is empty")) == "the file is empty"


# -- token statistics -----------------------------------------------------------------------------


def test_token_stats_match_the_chat_template(tmp_path, tok):
    r = inspect_file(DATASETS / "openai_chat_gsm8k_train.jsonl", tokenizer=tok, max_length=160)
    stats = r.token_stats
    first = json.loads((DATASETS / "openai_chat_gsm8k_train.jsonl").open().readline())["messages"]
    n0 = len(tok.apply_chat_template(first, tokenize=True, return_dict=True)["input_ids"])
    assert stats["min"] <= n0 <= stats["max"] and stats["n"] == 449
    assert sum(stats["histogram"]["counts"]) == 449 and len(stats["histogram"]["edges"]) == 21
    assert stats["p50"] <= stats["p95"] <= stats["max"] and stats["total"] > 449 * stats["min"]
    assert 0 < stats["over_max_length"] < 449
    assert stats["over_max_length_share"] == round(stats["over_max_length"] / 449, 4)
    assert any("longer than max_length=160 tokens" in w.message for w in r.warnings)
    assert r.ok  # long examples are a warning: they are truncated, not refused
    json.dumps(r.to_dict())


def test_preference_token_length_is_the_longer_side(tok):
    short, long_ = "ok", "word " * 200
    row = {"prompt": "Say something.", "chosen": short, "rejected": long_}
    r = inspect_rows([row], tokenizer=tok, min_examples=1)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Say something."}, {"role": "assistant", "content": long_}],
        tokenize=False,
    )
    assert r.token_stats["max"] == len(tok(text, add_special_tokens=False)["input_ids"])


def test_examples_the_chat_template_cannot_render_are_errors(tok):
    strict = copy.deepcopy(tok)
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    rows = [chat(i) for i in range(10)]
    rows[6]["messages"].insert(0, {"role": "system", "content": "be nice"})
    r = inspect_rows(rows, tokenizer=strict)
    assert not r.ok
    assert str(r.errors[0]).startswith("record 7: the base model's chat template cannot render this example")
    assert "System role not supported" in str(r.errors[0])


def test_tokenizer_may_be_given_as_a_path(tiny_model_path):
    r = inspect_rows([chat(i) for i in range(10)], tokenizer=tiny_model_path)
    assert r.ok and r.token_stats["n"] == 10


def test_tool_calls_the_template_drops_are_flagged(tok):
    # SmolLM2's template has no tools section: the ChatForge tool format renders the calls (no warning)
    r = inspect_file(DATASETS / "openai_chat_toolcall_train.jsonl", tokenizer=tok)
    assert r.ok and not r.warnings
    # a template that takes `tools` but drops the assistant's tool_calls is flagged
    drops = copy.deepcopy(tok)
    drops.chat_template = (
        "{% if tools %}<|im_start|>system\nYou may call {{ tools | length }} tools.<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] or '' }}<|im_end|>\n{% endfor %}"
    )
    r = inspect_file(DATASETS / "openai_chat_toolcall_train.jsonl", tokenizer=drops)
    assert r.ok
    assert str(r.warnings[-1]).startswith(
        "line 1: the base model's chat template does not render tool calls: in 36 examples"
    )
    with_tools = copy.deepcopy(tok)
    with_tools.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% for c in m.get('tool_calls') or [] %}<call>{{ c['function']['name'] }}({{ c['function']['arguments'] }})"
        "</call>{% endfor %}<|im_end|>\n{% endfor %}"
    )
    r = inspect_file(DATASETS / "openai_chat_toolcall_train.jsonl", tokenizer=with_tools)
    assert r.ok and not r.warnings
