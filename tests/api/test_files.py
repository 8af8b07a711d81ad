"""/v1/files over real HTTP with the openai SDK: upload, detection report, preview, errors, delete."""

import gzip
import json

import httpx2 as httpx
import openai
import pytest

from tests.support.data import SAMPLES, preference_rows, sft_rows, write_jsonl

SHARED = SAMPLES


def test_upload_report_and_retrieve(client_a, tmp_path):
    f = client_a.files.create(file=write_jsonl(tmp_path / "chat.jsonl", sft_rows(12)).open("rb"),
                              purpose="fine-tune")
    assert f.id.startswith("file-") and f.object == "file" and f.status == "processed"
    extra = f.model_extra
    assert extra["format"] and extra["kind"] == "sft" and extra["n_examples"] == 12
    assert extra["report"]["token_stats"]["total"] > 0
    got = client_a.files.retrieve(f.id)
    assert got.bytes == (tmp_path / "chat.jsonl").stat().st_size
    assert client_a.files.content(f.id).content == (tmp_path / "chat.jsonl").read_bytes()
    assert f.id in [x.id for x in client_a.files.list().data]


def test_preview_marks_learned_spans(service, key_a, client_a, tmp_path):
    f = client_a.files.create(file=write_jsonl(tmp_path / "p.jsonl", preference_rows(12)).open("rb"),
                              purpose="fine-tune")
    assert f.model_extra["kind"] == "preference"
    r = httpx.get(f"{service.v1}/files/{f.id}/preview?n=2", headers={"Authorization": f"Bearer {key_a}"})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert len(data) == 2
    text = json.dumps(data[0])
    assert "Hello, dear guest 0" in text and "Go away." in text


def test_gzip_upload(client_a, tmp_path):
    p = tmp_path / "chat.jsonl.gz"
    p.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in sft_rows(11)).encode()))
    f = client_a.files.create(file=p.open("rb"), purpose="fine-tune")
    assert f.model_extra["n_examples"] == 11


def test_bad_file_is_400_with_line_number_and_nothing_stored(client_a, service, tmp_path):
    rows = [json.dumps(r) for r in sft_rows(12)]
    rows[6] = rows[6][:-5]  # line 7 is broken JSON
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(rows) + "\n")
    before = client_a.files.list().data
    with pytest.raises(openai.BadRequestError) as e:
        client_a.files.create(file=p.open("rb"), purpose="fine-tune")
    assert "line 7" in str(e.value)
    assert len(client_a.files.list().data) == len(before)
    stored = list((service.data_dir / "storage" / "files").glob("*"))
    assert all((d / "raw").exists() for d in stored)  # no half-stored upload left behind


def test_too_few_examples_and_unknown_purpose(client_a, tmp_path):
    with pytest.raises(openai.BadRequestError) as e:
        client_a.files.create(file=write_jsonl(tmp_path / "few.jsonl", sft_rows(3)).open("rb"), purpose="fine-tune")
    assert "10" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client_a.files.create(file=write_jsonl(tmp_path / "x.jsonl", sft_rows(12)).open("rb"), purpose="batch")
    assert "purpose" in str(e.value)


def test_oversized_upload_is_413(service, key_a, tmp_path):
    from tests.support.service import free_port, spawn, wait_http

    env = dict(service.env, CHATFORGE_MAX_UPLOAD_BYTES="1000")
    port = free_port()
    api = spawn(env, ["serve", "--no-worker", "--skip-model", "--port", str(port)], tmp_path / "api.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/health", api)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key_a, max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:
            c.files.create(file=write_jsonl(tmp_path / "big.jsonl", sft_rows(50)).open("rb"), purpose="fine-tune")
        assert e.value.status_code == 413
    finally:
        api.stop()


def test_filename_is_sanitised(service, key_a, tmp_path):
    body = "".join(json.dumps(r) + "\n" for r in sft_rows(12)).encode()
    r = httpx.post(service.v1 + "/files", headers={"Authorization": f"Bearer {key_a}"},
                   files={"file": ("../../etc/passwd", body)}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    assert r.json()["filename"] == "passwd"


def test_import_from_local_dataset_dir_and_unknown_hub_id(service, key_a, tmp_path):
    import datasets

    d = tmp_path / "ds"
    datasets.Dataset.from_list([{"instruction": f"Say {i}", "input": "", "output": f"{i}"} for i in range(15)]) \
        .save_to_disk(str(d))
    h = {"Authorization": f"Bearer {key_a}"}
    r = httpx.post(service.v1 + "/files/import", headers=h, json={"dataset": str(d), "split": "train"}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["n_examples"] == 15 and r.json()["kind"] == "sft"
    r = httpx.post(service.v1 + "/files/import", headers=h, json={"dataset": "nobody/no-such-dataset"}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "dataset"
    for outside in ("/etc", ".", "~", "../" * 8 + "etc", str(tmp_path / ".." / ".." / ".." / "etc")):
        r = httpx.post(service.v1 + "/files/import", headers=h, json={"dataset": outside}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["code"] == "path_not_allowed", (outside, r.text)
