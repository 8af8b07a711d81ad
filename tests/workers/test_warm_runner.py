"""The training process started ahead (settings.warm_runner): each job still runs in a process of its own,
started before the job was known with torch and the recipes imported; a dead one is replaced; it dies with
its worker; and the retain_base replay set computed by one job is read back by the next on the same base.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import openai
import pytest

from tests.api.test_jobs import TERMINAL, wait_status
from tests.conftest import FAST_JOBS
from tests.support.data import sft_rows, write_jsonl
from tests.support.service import start_service
from tests.workers.test_chaos import wait_until


@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_model_path):
    s = start_service(tmp_path_factory.mktemp("warm"), None, None, workers=1,
                      models={"tiny-llama": tiny_model_path}, **FAST_JOBS)  # the embedded default
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def client(svc):
    return openai.OpenAI(base_url=svc.v1, api_key=svc.key("warm"), max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def train_file(client, tmp_path_factory):
    p = write_jsonl(tmp_path_factory.mktemp("d") / "t.jsonl", sft_rows(16))
    return client.files.create(file=p.open("rb"), purpose="fine-tune")


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def spares(worker_pid: int) -> list[int]:
    """Waiting training processes (`workers.runner --spare`) under the worker process."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"workers.runner" in argv and b"--spare" in argv:
            pid, up = int(d.name), _parent(int(d.name))
            while up not in (None, 0, 1, worker_pid):
                up = _parent(up)
            if up == worker_pid:
                out.append(pid)
    return out


def one_spare(svc, worker: int = -1) -> int:
    wait_until(lambda: len(spares(svc.workers[worker].popen.pid)) == 1,
               what="one training process waiting under the worker", timeout=60)
    (pid,) = spares(svc.workers[worker].popen.pid)
    return pid


def started_in(svc, job_id: str) -> tuple[str, int]:
    """How the worker says it started the job's training process: ("warm" | "new", pid)."""
    text = "".join(w.log.read_text(errors="replace") for w in svc.workers)
    (m,) = re.findall(rf"training {re.escape(job_id)} in a (warm|new) child (\d+)", text)
    return m[0], int(m[1])


def run(svc, client, train_file) -> openai.types.fine_tuning.FineTuningJob:
    """A short job, to its end and its training process's exit (a process running a job still reads
    `--spare` on its command line: it was started as one)."""
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id, method={
        "type": "supervised", "supervised": {"hyperparameters": {"batch_size": 4, "n_epochs": 1},
                                             "max_seq_length": 96}})
    job = wait_status(client, job.id, TERMINAL, timeout=300)
    assert job.status == "succeeded", job.error
    pid = started_in(svc, job.id)[1]
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), what="the job's process to exit after its one job")
    return job


def replay_event(client, job_id: str) -> str:
    (msg,) = [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=200).data
              if e.message.startswith("Base-model answers")]
    return msg


def test_each_job_runs_in_a_process_started_ahead_and_the_next_reads_the_replay_set_back(svc, client, train_file):
    spare = one_spare(svc)  # started when the worker became ready, before any job existed
    first = run(svc, client, train_file)
    assert started_in(svc, first.id) == ("warm", spare)
    assert "recorded" in replay_event(client, first.id)

    following = one_spare(svc)  # the next job's process, started when the first job ended
    assert following != spare
    second = run(svc, client, train_file)
    assert started_in(svc, second.id) == ("warm", following)
    assert "read from the cache" in replay_event(client, second.id)
    cache = list((svc.data_dir / "cache").glob("retain-*.pt"))
    assert len(cache) == 1


def test_a_dead_waiting_process_is_replaced_by_a_new_one(svc, client, train_file):
    spare = one_spare(svc)
    os.kill(spare, signal.SIGKILL)  # say the OOM killer chose it while it waited
    job = run(svc, client, train_file)
    assert started_in(svc, job.id)[0] == "new"
    assert one_spare(svc) != spare  # and the worker keeps one ready again


def test_the_waiting_process_dies_with_its_worker_and_the_setting_turns_it_off(svc, client, train_file):
    spare = one_spare(svc)
    svc.workers[-1].kill9()
    wait_until(lambda: not Path(f"/proc/{spare}").exists(), what="the waiting process to die with its worker")
    svc.start_worker(CHATFORGE_WARM_RUNNER="0")
    job = run(svc, client, train_file)
    assert started_in(svc, job.id)[0] == "new"
    assert spares(svc.workers[-1].popen.pid) == []


def test_an_idle_worker_prepares_the_default_base_models_replay_set_for_the_first_job(svc, client, train_file):
    import shutil

    svc.workers[-1].kill9()
    shutil.rmtree(svc.data_dir / "cache", ignore_errors=True)  # no job has run on this base model yet
    w = svc.start_worker(CHATFORGE_DEFAULT_BASE_MODEL="tiny-llama")
    wait_until(lambda: "replay set of" in w.log.read_text(errors="replace"),
               what="the waiting process to prepare the default base model's replay set", timeout=120)
    assert re.search(r"replay set of \S+ prepared in", w.log.read_text(errors="replace"))
    job = run(svc, client, train_file)  # the first job on it
    assert started_in(svc, job.id)[0] == "warm"
    assert "read from the cache" in replay_event(client, job.id)
    # the next waiting process finds the work done (the folder's note) and prepares nothing more
    one_spare(svc)
    assert len(re.findall(r"replay set of \S+ prepared", w.log.read_text(errors="replace"))) == 1
    assert len(list((svc.data_dir / "cache").glob("retain-*.pt"))) == 1
