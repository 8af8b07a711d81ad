"""The `chatforge files | jobs | chat` client commands as a user runs them: real subprocesses talking to the
session's service (API server, Celery worker, PostgreSQL, Redis, the tiny test model) by URL and key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.support.data import sft_rows, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cli_env(service):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATFORGE_")}
    env.update(CHATFORGE_BASE_URL=service.base_url, CHATFORGE_API_KEY=service.key("cli"), PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1")
    return env


def run(env, *args, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chatforge.cli", *args], env=env, cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=timeout, check=False)


def job_status(service, env, job_id) -> dict:
    r = httpx.get(f"{service.v1}/fine_tuning/jobs/{job_id}", headers={"Authorization": f"Bearer {env['CHATFORGE_API_KEY']}"})
    r.raise_for_status()
    return r.json()


@pytest.fixture(scope="module")
def sft_file(cli_env, tmp_path_factory):
    rows = sft_rows(24)
    rows.append(rows[3])  # one exact duplicate, reported with its line
    path = write_jsonl(tmp_path_factory.mktemp("cli") / "adder.jsonl", rows)
    p = run(cli_env, "files", "upload", str(path))
    assert p.returncode == 0, p.stderr
    return p


def test_files_upload_prints_the_report(sft_file):
    out = sft_file.stdout
    file_id = re.search(r"adder\.jsonl -> (file-\w+)", out)
    assert file_id, out
    assert "format: openai_chat   kind: sft   examples: 25 (from 25 records, 0 skipped)" in out
    stats = re.search(r"tokens: total ([\d,]+)\s+mean ([\d.]+)\s+p50 (\d+)\s+p95 (\d+)\s+max (\d+)", out)
    assert stats, out
    assert int(stats.group(1).replace(",", "")) > 25 * 20 and int(stats.group(5)) >= int(stats.group(3))
    assert "over 2048 tokens: 0 (0.0%)" in out
    assert "duplicates: 1" in out and "line 25: exact duplicate of line 4" in out
    assert "errors: none" in out
    assert "token length histogram:" in out and "█" in out


def test_files_upload_passes_format_and_max_length(cli_env, tmp_path):
    path = write_jsonl(tmp_path / "forced.jsonl", sft_rows(12))
    p = run(cli_env, "files", "upload", str(path), "--format", "openai_chat", "--max-length", "40")
    assert p.returncode == 0, p.stderr
    assert "format: openai_chat" in p.stdout
    assert "over 40 tokens: 12 (100.0%)" in p.stdout  # every "What is i plus i?" example is ~50 tokens
    wrong = run(cli_env, "files", "upload", str(path), "--format", "hh_rlhf")
    assert wrong.returncode == 1 and "the file was not accepted" in wrong.stderr


def test_files_upload_of_a_bad_file_names_the_lines(cli_env, tmp_path):
    good = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    path = tmp_path / "bad.jsonl"
    path.write_text(good * 12 + '{"messages": [{"role": "robot", "content": "x"}]}\n' + good + "{not json\n")
    p = run(cli_env, "files", "upload", str(path))
    assert p.returncode == 1
    assert "the file was not accepted" in p.stderr
    assert re.search(r"^  bad\.jsonl: line 13: messages\[0\]\.role", p.stderr, re.MULTILINE), p.stderr
    assert re.search(r"^  line 15: invalid JSON", p.stderr, re.MULTILINE), p.stderr
    assert "Error code" not in p.stderr  # the server's words, not the SDK's wrapper


def _file_id(upload: subprocess.CompletedProcess) -> str:
    return re.search(r"-> (file-\w+)", upload.stdout).group(1)


def _create(env, file_id, *extra) -> str:
    p = run(env, "jobs", "create", "--model", "tiny-llama", "--training-file", file_id, "--batch-size", "4",
            "--set", "max_seq_length=64", "--set", "lora.r=8", *extra)
    assert p.returncode == 0, p.stderr
    m = re.match(r"created (ftjob-\w+) \(queued\): supervised on tiny-llama", p.stdout)
    assert m, p.stdout
    return m.group(1)


def _watch(env, job_id) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "chatforge.cli", "jobs", "watch", job_id], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


PROGRESS = re.compile(r"^step (\d+)/(\d+)\s+\[[█░]+\]\s+\d+%\s+loss (\d+\.\d{4})\s+\d+ tok/s\s+"
                      r"ETA (\d+:\d\d:\d\d|-)\s+lr [\d.e+-]+$")


def test_jobs_watch_follows_a_running_job_to_its_end(service, cli_env, sft_file):
    job_id = _create(cli_env, _file_id(sft_file), "--suffix", "watched", "--set", "max_steps=20")
    watcher = _watch(cli_env, job_id)
    lines, status_at_first_step = [], None
    try:
        for line in watcher.stdout:
            lines.append(line.rstrip("\n"))
            if status_at_first_step is None and PROGRESS.match(lines[-1]):
                status_at_first_step = job_status(service, cli_env, job_id)["status"]
        rc = watcher.wait(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    out = "\n".join(lines)
    assert rc == 0, out + watcher.stderr.read()
    # the watcher was following live: when the first progress line came the job was still training
    assert status_at_first_step == "running", out
    steps = [PROGRESS.match(x) for x in lines if x.startswith("step ")]
    assert all(steps), out
    assert [int(m.group(1)) for m in steps] == list(range(1, 21)) and {m.group(2) for m in steps} == {"20"}
    assert all(float(m.group(3)) > 0 for m in steps)
    assert any(x.startswith("· Checkpoint saved at step") for x in lines)
    assert lines[-1] == f"job {job_id} succeeded -> ft:tiny-llama:watched:{job_id}"

    listed = run(cli_env, "jobs", "list")
    assert listed.returncode == 0
    row = next(x for x in listed.stdout.splitlines() if x.startswith(job_id))
    assert row.split("\t")[1:5] == ["succeeded", "supervised", "tiny-llama", "20/20"]


def test_jobs_watch_exits_nonzero_when_the_job_is_cancelled(service, cli_env, sft_file):
    job_id = _create(cli_env, _file_id(sft_file), "--set", "max_steps=500", "--set", "checkpoint_interval=1000")
    watcher = _watch(cli_env, job_id)
    try:
        for line in watcher.stdout:
            if PROGRESS.match(line.rstrip("\n")):
                break
        cancel = run(cli_env, "jobs", "cancel", job_id)
        assert cancel.returncode == 0 and "cancel requested" in cancel.stdout, cancel.stdout + cancel.stderr
        rest = watcher.stdout.read()
        rc = watcher.wait(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert rc == 1
    assert rest.rstrip().splitlines()[-1] == f"job {job_id} cancelled"


def test_jobs_create_reports_bad_settings_by_name(cli_env, sft_file):
    p = run(cli_env, "jobs", "create", "--model", "tiny-llama", "--training-file", _file_id(sft_file),
            "--set", "lora.r=0")
    assert p.returncode == 1
    assert "method.supervised.lora.r" in p.stderr and "must be an integer" in p.stderr


def _chat_requests(service) -> float:
    text = httpx.get(service.base_url + "/metrics").text
    return sum(float(v) for v in re.findall(
        r'^chatforge_http_requests_total\{method="POST",route="/v1/chat/completions",status="200"\} (\S+)$', text, re.MULTILINE))


def test_chat_reads_piped_turns_until_exit(service, cli_env):
    before = _chat_requests(service)
    p = run(cli_env, "chat", "tiny-llama", "--max-tokens", "6", stdin="Hello there\n\nWhat is 2 plus 2?\n/exit\nnot sent\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip()
    assert _chat_requests(service) - before == 2  # blank lines are skipped, /exit stops before "not sent"

    bad = run(cli_env, "chat", "no-such-model", stdin="hi\n")
    assert bad.returncode == 1 and "does not exist" in bad.stderr


def test_chat_session_keeps_the_conversation(service, cli_env):
    import io

    from chatforge.client.chat import ChatSession
    from chatforge.client.server import Server

    chat = ChatSession(Server(service.base_url, cli_env["CHATFORGE_API_KEY"]), "tiny-llama", system="Be brief.",
                       max_tokens=5)
    out = io.StringIO()
    first = chat.ask("What is 3 plus 3?", out)
    u1 = chat.last_usage
    chat.ask("And 4 plus 4?", out)
    u2 = chat.last_usage
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert chat.messages[2]["content"] == first and out.getvalue().startswith(first)
    # the second request carried the first exchange
    assert u2["prompt_tokens"] > u1["prompt_tokens"] + u1["completion_tokens"]
    chat.reset()
    assert chat.messages == [{"role": "system", "content": "Be brief."}]
