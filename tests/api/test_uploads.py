"""OpenAI's Uploads API through the official SDK (upload_file_chunked, cancel), and Parquet uploads that
train. Real API server, PostgreSQL, Redis and Celery worker."""

import io
import json
import time

import httpx2 as httpx
import openai
import pytest
from sqlalchemy import create_engine, text

from tests.api.test_jobs import TERMINAL, lora, wait_status
from tests.support.data import SAMPLES, sft_rows, write_jsonl


def test_chunked_upload_of_several_parts_trains(client_a, service, tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", sft_rows(24))
    size = path.stat().st_size
    up = client_a.uploads.upload_file_chunked(file=path, mime_type="application/jsonl", purpose="fine-tune",
                                              part_size=size // 4 + 1)
    assert up.status == "completed" and up.bytes == size and up.file is not None
    assert up.file.status == "processed"
    assert client_a.files.content(up.file.id).content == path.read_bytes()
    assert not (service.data_dir / "storage" / "uploads" / up.id).exists()  # parts deleted once assembled
    job = client_a.fine_tuning.jobs.create(model="tiny-llama", training_file=up.file.id, method=lora())
    job = wait_status(client_a, job.id, TERMINAL)
    assert job.status == "succeeded", job.error


def test_interrupted_upload_completes_later_and_cancelled_leaves_nothing(client_a, service, tmp_path):
    body = path_bytes = write_jsonl(tmp_path / "c.jsonl", sft_rows(12)).read_bytes()
    up = client_a.uploads.create(bytes=len(body), filename="c.jsonl", mime_type="application/jsonl",
                                 purpose="fine-tune")
    first = client_a.uploads.parts.create(upload_id=up.id, data=body[:100])
    # ... the client goes away; later it sends the rest and completes
    second = client_a.uploads.parts.create(upload_id=up.id, data=body[100:])
    done = client_a.uploads.complete(upload_id=up.id, part_ids=[first.id, second.id])
    assert done.status == "completed" and client_a.files.content(done.file.id).content == path_bytes

    up = client_a.uploads.create(bytes=len(body), filename="x.jsonl", mime_type="application/jsonl",
                                 purpose="fine-tune")
    client_a.uploads.parts.create(upload_id=up.id, data=body[:50])
    assert (service.data_dir / "storage" / "uploads" / up.id).exists()
    assert client_a.uploads.cancel(upload_id=up.id).status == "cancelled"
    assert not (service.data_dir / "storage" / "uploads" / up.id).exists()
    engine = create_engine(service.env["CHATFORGE_DATABASE_URL"])
    with engine.connect() as c:
        n = c.execute(text("SELECT count(*) FROM upload_parts WHERE upload_id = :u"), {"u": up.id}).scalar()
    engine.dispose()
    assert n == 0
    with pytest.raises(openai.BadRequestError):
        client_a.uploads.parts.create(upload_id=up.id, data=b"more")


def test_complete_checks_the_declared_size(client_a):
    up = client_a.uploads.create(bytes=10, filename="s.jsonl", mime_type="application/jsonl", purpose="fine-tune")
    part = client_a.uploads.parts.create(upload_id=up.id, data=b"12345")
    with pytest.raises(openai.BadRequestError) as e:
        client_a.uploads.complete(upload_id=up.id, part_ids=[part.id])
    assert "10" in str(e.value)


def test_parquet_of_a_real_sample_trains(client_a, service, key_a, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    with open(SAMPLES / "openai_chat_gsm8k_train.jsonl") as f:
        rows = [json.loads(line) for line in f][:24]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "gsm8k.parquet", row_group_size=8)
    f = client_a.files.create(file=(tmp_path / "gsm8k.parquet").open("rb"), purpose="fine-tune")
    assert f.status == "processed" and f.model_extra["format"] == "openai_chat"
    assert f.model_extra["report"]["container"] == "parquet" and f.model_extra["n_examples"] == 24
    job = client_a.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id, method=lora(max_steps=3))
    assert wait_status(client_a, job.id, TERMINAL).status == "succeeded"

    rows[20]["messages"][0]["role"] = "robot"
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    r = httpx.post(service.v1 + "/files", headers={"Authorization": f"Bearer {key_a}"},
                   files={"file": ("bad.parquet", (tmp_path / "bad.parquet").read_bytes())},
                   data={"purpose": "fine-tune"})
    assert r.status_code == 400 and "row 21" in r.json()["error"]["message"]


def test_cli_uploads_big_files_in_parts(service, key_a, tmp_path):
    from rich.console import Console

    from chatforge.client.files import print_report, upload_bar, upload_in_parts
    from chatforge.client.server import Server

    rows = sft_rows(24)
    for r in rows:  # about 2.5 MB: three parts of 1 MB
        r["messages"][1]["content"] += " " + "filler text " * 9000
    path = write_jsonl(tmp_path / "big.jsonl", rows)
    srv = Server(service.base_url, key_a)
    bar = io.StringIO()
    with upload_bar(Console(file=bar, width=100), "big.jsonl", path.stat().st_size) as on_progress:
        f = upload_in_parts(srv, str(path), 1, on_progress)
    assert f.status == "processed" and f.bytes == path.stat().st_size
    assert "100%" in bar.getvalue()
    out = io.StringIO()
    print_report(f.model_dump(), out)
    assert "24" in out.getvalue()


def test_expired_upload_loses_its_parts(client_a, service):
    up = client_a.uploads.create(bytes=100, filename="e.jsonl", mime_type="application/jsonl", purpose="fine-tune")
    client_a.uploads.parts.create(upload_id=up.id, data=b"x" * 40)
    parts_dir = service.data_dir / "storage" / "uploads" / up.id
    assert parts_dir.exists()
    engine = create_engine(service.env["CHATFORGE_DATABASE_URL"])
    try:
        with engine.begin() as c:  # as if its hour had passed
            c.execute(text("UPDATE uploads SET expires_at = now() - interval '1 minute' WHERE id = :u"), {"u": up.id})
        end = time.monotonic() + 120
        while parts_dir.exists():  # the worker's janitor expires it
            assert time.monotonic() < end, "the expired upload's parts are still stored"
            time.sleep(0.3)
        with engine.connect() as c:
            status = c.execute(text("SELECT status FROM uploads WHERE id = :u"), {"u": up.id}).scalar()
            n = c.execute(text("SELECT count(*) FROM upload_parts WHERE upload_id = :u"), {"u": up.id}).scalar()
    finally:
        engine.dispose()
    assert status == "expired" and n == 0
    with pytest.raises(openai.BadRequestError):
        client_a.uploads.parts.create(upload_id=up.id, data=b"late")
