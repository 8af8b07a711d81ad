"""The client commands on a real terminal (a pseudo-terminal of a fixed width): lists are tables, `files upload`
draws an upload bar that follows the bytes httpx2 sends, and `jobs watch` draws a progress bar with loss,
tokens/s and ETA for a real tiny job, against the session's service (API, worker, PostgreSQL, Redis)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import httpx2 as httpx
import pytest

from tests.support.data import sft_rows, write_jsonl
from tests.support.service import ROOT

COLUMNS = 160
STYLE = re.compile(r"\x1b\[[0-9;]*m|\x1b\][^\x07]*\x07")  # colours and links: dropped
MOVE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # cursor moves and erases: a redraw starts a new line


@pytest.fixture(scope="module")
def env(service):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CHATFORGE_") and k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE")}
    env.update(CHATFORGE_BASE_URL=service.base_url, CHATFORGE_API_KEY=service.key("terminal"), TERM="xterm-256color",
               COLUMNS=str(COLUMNS), OMP_NUM_THREADS="1")
    return env


def in_terminal(env: dict[str, str], *args: str, timeout: float = 300) -> tuple[int, str, list[str]]:
    """Run `chatforge ARGS` with stdin, stdout and stderr on a pseudo-terminal COLUMNS wide: the exit code,
    the raw output and its screen lines (escape codes removed, each redraw its own line)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, COLUMNS, 0, 0))
    p = subprocess.Popen([sys.executable, "-m", "chatforge.cli", *args], stdin=slave, stdout=slave, stderr=slave,
                         env=env, cwd=ROOT, close_fds=True)
    os.close(slave)
    chunks, end = [], time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            if select.select([master], [], [], 1)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer of the terminal has closed it
                    break
                if not data:
                    break
                chunks.append(data)
        else:
            raise AssertionError(f"`chatforge {' '.join(args)}` still running after {timeout}s")
        rc = p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
        os.close(master)
    raw = b"".join(chunks).decode(errors="replace")
    lines = [x.strip() for x in re.split(r"[\r\n]+", MOVE.sub("\n", STYLE.sub("", raw))) if x.strip()]
    return rc, raw, lines


def big_sft_file(path, mb: float):
    rows = sft_rows(24)
    filler = " filler text" * int(mb * 1024 * 1024 / 24 / 12)
    for r in rows:
        r["messages"][1]["content"] += filler
    return write_jsonl(path, rows)


def test_files_upload_draws_a_progress_bar(service, env, tmp_path):
    path = big_sft_file(tmp_path / "big.jsonl", 6)
    size = path.stat().st_size
    rc, raw, lines = in_terminal(env, "files", "upload", str(path))
    assert rc == 0, raw
    bars = [x for x in lines if x.startswith("uploading big.jsonl")]
    assert bars, raw
    final = bars[-1]
    assert re.search(r"100%\s+" + re.escape(f"{size / 1e6:.1f}/{size / 1e6:.1f} MB"), final), final
    assert any(re.match(r"big\.jsonl -> file-\w+ \(" + re.escape(f"{size:,}") + r" bytes\)", x) for x in lines), raw
    assert "examples: 24 (from 24 records, 0 skipped)" in raw


def test_upload_progress_follows_the_bytes_sent(service, env, tmp_path):
    from chatforge.client.files import upload_whole
    from chatforge.client.server import Server

    path = big_sft_file(tmp_path / "counted.jsonl", 4)
    size = path.stat().st_size
    seen: list[int] = []
    f = upload_whole(Server(service.base_url, env["CHATFORGE_API_KEY"]), str(path), on_progress=seen.append)
    assert f.bytes == size
    # httpx2 reads the file 64 KiB at a time while it sends it: the bar moves with every read, up to the end
    assert len(seen) >= size // (64 * 1024)
    assert seen == sorted(seen) and seen[-1] == size


def test_lists_are_tables_on_a_terminal(service, env, tmp_path):
    upload = in_terminal(env, "files", "upload", str(write_jsonl(tmp_path / "listed.jsonl", sft_rows(12))))
    file_id = re.search(r"listed\.jsonl -> (file-\w+)", upload[1]).group(1)
    rc, raw, lines = in_terminal(env, "files", "list")
    assert rc == 0, raw
    assert re.match(r"ID\s+KIND\s+FORMAT\s+EXAMPLES\s+FILENAME\s+STATUS$", lines[0]), raw
    assert any(re.match(rf"{file_id}\s+sft\s+openai_chat\s+12\s+listed\.jsonl\s+processed$", x) for x in lines), raw
    assert "\t" not in raw

    piped = subprocess.run([sys.executable, "-m", "chatforge.cli", "files", "list"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=120, check=True)
    assert f"{file_id}\tsft\topenai_chat\t12\tlisted.jsonl\tprocessed" in piped.stdout.splitlines()

    rc, raw, lines = in_terminal({**service.env, "TERM": "xterm", "COLUMNS": str(COLUMNS)}, "keys", "list")
    assert rc == 0, raw
    assert re.match(r"ID\s+PREFIX\s+PROJECT\s+STATE\s+CREATED\s+SCOPE\s+EXPIRES\s+LAST USED\s+RPM\s+STREAMS$",
                    lines[0]), raw
    assert any(re.match(r"key_\S+\s+cf-\S+…\s+terminal\s+active\s+\d{4}-", x) for x in lines), raw


def test_jobs_watch_draws_loss_speed_and_eta(service, env, tmp_path):
    headers = {"Authorization": f"Bearer {env['CHATFORGE_API_KEY']}"}
    with open(write_jsonl(tmp_path / "watch.jsonl", sft_rows(24)), "rb") as fh:
        r = httpx.post(f"{service.v1}/files", headers=headers, files={"file": fh}, data={"purpose": "fine-tune"})
    r.raise_for_status()
    job = httpx.post(f"{service.v1}/fine_tuning/jobs", headers=headers, json={
        "model": "tiny-llama", "training_file": r.json()["id"], "suffix": "bar",
        "method": {"type": "supervised", "supervised": {
            "hyperparameters": {"batch_size": 4}, "max_seq_length": 64, "lora": {"r": 8}, "max_steps": 20}}})
    job.raise_for_status()
    job_id = job.json()["id"]
    rc, raw, lines = in_terminal(env, "jobs", "watch", job_id)
    assert rc == 0, raw
    frames = [re.match(r"step (\d+)/20\s+\S+\s+(\d+)%\s+loss (\d+\.\d{4})\s+(\d+) tok/s\s+ETA (\d+:\d\d:\d\d|-)"
                       r"\s+lr [\d.e+-]+$", x) for x in lines if re.match(r"step \d", x)]
    assert frames and all(frames), raw
    assert any(m.group(5) != "-" for m in frames), raw  # the worker's estimate, counting down
    assert frames[-1].group(1) == "20" and frames[-1].group(2) == "100"
    assert len({m.group(1) for m in frames}) >= 2, raw  # the bar was redrawn while the job trained
    assert all(float(m.group(3)) > 0 and int(m.group(4)) > 0 for m in frames)
    assert any(x.startswith("· Checkpoint saved at step") for x in lines), raw
    assert lines[-1] == f"job {job_id} succeeded -> ft:tiny-llama:bar:{job_id}"
