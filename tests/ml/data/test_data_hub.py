"""Hub import through `datasets`: local save_to_disk folders and data-file folders work offline; an
unknown hub id fails fast and clearly in offline mode instead of hanging."""

from __future__ import annotations

import json
import time

import pytest

from ml.data import DatasetSourceError, inspect_hub_dataset, load_hub_dataset
from ml.records import read_canonical


def alpaca_rows(n=12):
    return [
        {"instruction": f"Double {i}", "input": "" if i % 2 else f"n={i}", "output": str(2 * i)}
        for i in range(n)
    ]


def test_save_to_disk_dataset_dict(tmp_path):
    import datasets

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(alpaca_rows()),
            "test": datasets.Dataset.from_list(alpaca_rows(3)),
        }
    )
    dd.save_to_disk(str(tmp_path / "ds"))
    rows = list(load_hub_dataset(str(tmp_path / "ds"), split="train"))
    assert rows == alpaca_rows()
    out = tmp_path / "canon.jsonl"
    report = inspect_hub_dataset(str(tmp_path / "ds"), split="train", out_path=out)
    assert (report.format, report.kind, report.n_examples, report.ok, report.container) == (
        "alpaca",
        "sft",
        12,
        True,
        "rows",
    )
    first = next(read_canonical(out, "sft"))
    assert first.messages[0].content == "Double 0\n\nn=0"
    with pytest.raises(DatasetSourceError, match="split 'validation' not found"):
        load_hub_dataset(str(tmp_path / "ds"), split="validation")


def test_local_folder_of_json_files_and_problems_name_records(tmp_path):
    d = tmp_path / "repo" / "data"
    d.mkdir(parents=True)
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(12)
    ]
    rows[7]["messages"][1]["role"] = "robot"
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = inspect_hub_dataset(str(tmp_path / "repo"), split="train")
    assert report.format == "openai_chat" and not report.ok
    assert (
        str(report.errors[0])
        == 'record 8: messages[1].role "robot" is not one of system, user, assistant, tool'
    )


def test_prompt_majority_can_reopen_hub_rows(tmp_path):
    import datasets

    chats = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(210)
    ]
    prompts = [{"messages": [{"role": "user", "content": f"p{i}"}]} for i in range(300)]
    datasets.Dataset.from_list(chats + prompts).save_to_disk(str(tmp_path / "ds"))
    report = inspect_hub_dataset(str(tmp_path / "ds"))
    assert (report.kind, report.n_examples, report.n_errors) == ("prompts", 300, 210)


def test_unknown_hub_id_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.monotonic()
    with pytest.raises(DatasetSourceError, match="not available offline"):
        load_hub_dataset("chatforge-tests/definitely-not-a-dataset", timeout_s=30)
    assert time.monotonic() - t < 10


def test_garbage_name_is_refused():
    with pytest.raises(DatasetSourceError, match="neither a local dataset path nor a hub id"):
        load_hub_dataset("../../etc/passwd not a name")
