"""The fast validation paths equal the exact ones: msgspec-checked chat lines vs the full converter, the
string ChatML renderer vs Jinja, cached per-word token counts vs the tokenizer; Parquet and zipped/tarred
datasets folders are read row by row with "row N" locations; progress is reported."""

import json
import shutil
import tarfile

import pytest

from ml.data import inspect_file, inspect_rows, pipeline, stats
from ml.data.fastpath import ChatMLRenderer, PieceCounter, decode_plain_chat
from ml.data.stats import render_texts
from ml.records import Conversation, Message, read_canonical
from tests.support.data import SAMPLES


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    from ml.models import load_tokenizer

    return load_tokenizer(tiny_model_path)


def _rows(name, n=None):
    with open(SAMPLES / name) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[:n] if n else rows


def _no_fast_paths(monkeypatch):
    monkeypatch.setattr(pipeline, "PLAIN_FROM_BYTES", {})
    monkeypatch.setattr(pipeline, "PLAIN_FROM_DICT", {})
    monkeypatch.setattr(stats, "ChatMLRenderer", type("NoRenderer", (), {"for_tokenizer": staticmethod(lambda t: None)}))
    monkeypatch.setattr(stats, "PieceCounter", type("NoCounter", (), {"for_tokenizer": staticmethod(lambda t: None)}))


def test_fast_path_matches_the_full_converter(tmp_path, tok, monkeypatch):
    rows = _rows("openai_chat_gsm8k_train.jsonl", 200)
    rows[5] = rows[4]  # a duplicate
    rows[7]["messages"][0]["content"] = "   "  # empty user turn: a warning, taken by the full path
    rows[9]["messages"].append({"role": "user", "content": "more?"})  # trailing user turn: dropped
    p = tmp_path / "a.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    fast = inspect_file(p, out_path=tmp_path / "fast.jsonl", tokenizer=tok)
    fast_rows = inspect_rows(rows, tokenizer=tok)  # parsed dicts: plain_chat_from_dict
    _no_fast_paths(monkeypatch)
    slow = inspect_rows(rows, out_path=tmp_path / "slow.jsonl", tokenizer=tok)  # the full converter and Jinja
    assert fast_rows.token_stats == slow.token_stats and fast_rows.duplicates == slow.duplicates
    assert [str(w) for w in fast_rows.warnings] == [str(w) for w in slow.warnings]
    assert fast.ok and slow.ok and fast.format == slow.format == "openai_chat"
    assert (fast.n_examples, fast.duplicates, fast.n_warnings) == (slow.n_examples, slow.duplicates, slow.n_warnings)
    assert fast.token_stats == slow.token_stats
    # rows are located as "record N", lines as "line N"; the same numbers here (no blank lines)
    assert [str(w) for w in fast.warnings] == [str(w).replace("record ", "line ") for w in slow.warnings]
    assert list(read_canonical(tmp_path / "fast.jsonl", "sft")) == list(read_canonical(tmp_path / "slow.jsonl", "sft"))
    assert "line 6" in fast.summary(5) or any(w.line == 6 for w in fast.warnings)


def test_alpaca_fast_path_matches_the_full_converter(tmp_path, tok, monkeypatch):
    with open(SAMPLES / "sft_tatsu_alpaca_first335.json") as f:
        rows = json.load(f)
    rows[3]["output"] = "<nooutput>"  # skipped with a warning
    rows[4]["input"] = "   "  # blank input: the instruction alone
    rows[5]["instruction"] = ""  # input alone
    rows[6]["system"] = "Be brief."
    rows[7] = rows[8]
    p = tmp_path / "a.json"
    p.write_text(json.dumps(rows, ensure_ascii=False, indent=1))
    fast = inspect_file(p, out_path=tmp_path / "fast.jsonl", tokenizer=tok)
    _no_fast_paths(monkeypatch)
    slow = inspect_file(p, out_path=tmp_path / "slow.jsonl", tokenizer=tok)
    assert fast.ok and fast.format == slow.format == "alpaca"
    assert fast.to_dict() == slow.to_dict()
    assert list(read_canonical(tmp_path / "fast.jsonl", "sft")) == list(read_canonical(tmp_path / "slow.jsonl", "sft"))


def test_plain_chat_decoder_refuses_anything_unusual():
    ok = b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
    assert decode_plain_chat(ok) is not None
    for bad in (ok.replace(b'"user"', b'"bot"'), ok.replace(b'"b"}', b'" "}'), ok[:-3],
                ok.replace(b'"a"}', b'"a", "weight": 1}'), b'{"messages": []}',
                ok.replace(b'"assistant", "content": "b"', b'"user", "content": "b"')):
        assert decode_plain_chat(bad) is None


def test_chatml_renderer_equals_jinja_and_refuses_other_templates(tok):
    r = ChatMLRenderer.for_tokenizer(tok)
    assert r is not None
    for row in _rows("sharegpt_gpt4_zh_first300.jsonl", 30):
        msgs = [Message({"human": "user", "gpt": "assistant"}.get(t["from"], "system"), t["value"])
                for t in row["conversations"]]
        rec = Conversation(tuple(msgs))
        assert [r.render(rec.messages)] == render_texts(tok, rec)

    class Other:
        chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] | trim }}\n{% endfor %}"

        def apply_chat_template(self, *a, **k):
            raise AssertionError("not reached")

    assert ChatMLRenderer.for_tokenizer(Other()) is None


def test_cached_token_counts_equal_the_tokenizer(tok):
    pc = PieceCounter.for_tokenizer(tok)
    assert pc is not None
    pc.verify_first = 0  # check them all below instead
    texts = [json.dumps(r, ensure_ascii=False) for r in _rows("sharegpt_gpt4_zh_first300.jsonl", 60)]
    texts += [m["content"] for r in _rows("openai_chat_gsm8k_train.jsonl", 60) for m in r["messages"]]
    texts += ["a  b", " lead", "trail ", "tab\t x", "x \ny", "<|im_start|>user\nhi<|im_end|>\n", "it's  ok\u00a0 !"]
    exact = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert pc.count(texts) == exact
    assert pc.count(texts) == exact  # second time from the cache
    assert not pc.disabled


def test_parquet_rows_and_row_locations(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = _rows("openai_chat_gsm8k_train.jsonl", 40)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "ok.parquet", row_group_size=16)
    seen = []
    report = inspect_file(tmp_path / "ok.parquet", out_path=tmp_path / "o.jsonl", progress=seen.append)
    assert report.ok and report.container == "parquet" and report.n_examples == 40
    assert seen and seen[-1] == 1.0
    rows[32]["messages"][1]["role"] = "bot"
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet", row_group_size=16)
    report = inspect_file(tmp_path / "bad.parquet")
    assert not report.ok and report.summary(1).startswith('row 33: messages[1].role "bot"')


@pytest.mark.parametrize("kind", ["zip", "gztar"])
def test_datasets_folder_in_an_archive(tmp_path, kind):
    import datasets

    rows = _rows("openai_chat_gsm8k_train.jsonl", 20)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    archive = shutil.make_archive(str(tmp_path / "ds"), kind, tmp_path, "ds")
    report = inspect_file(archive, out_path=tmp_path / "o.jsonl")
    assert report.ok and report.container == "arrow" and report.n_examples == 20


def test_archive_without_a_dataset_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text("{}\n")
    with tarfile.open(tmp_path / "x.tar", "w") as t:
        t.add(tmp_path / "d", arcname="d")
    report = inspect_file(tmp_path / "x.tar")
    assert not report.ok and "zip archives are not supported" in report.summary()
