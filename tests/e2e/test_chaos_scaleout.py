"""Chaos in scale-out mode: an API process and two worker processes on their own PostgreSQL server, their
own Redis server and a size-limited data disk, each of which this module restarts, kills or fills while
jobs run.

Every scenario checks the same promises: the job succeeds exactly once (one "succeeded" event), its loss
curve (the metrics file and the metrics events) has every step from 1 to N once, no checkpoint or model is
half-written (the fine-tuned model and its newest checkpoint answer a chat completion), and the API answers
again without anybody restarting it (except where the API itself is the process that was killed)."""

from __future__ import annotations

import csv
import io
import itertools
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from tests.conftest import FAST_JOBS
from tests.support.data import sft_rows, write_jsonl
from tests.support.service import free_port, spawn, start_service, wait_http
from tests.workers.test_chaos import method, wait_until

PG_BIN = Path("/usr/local/bin")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
DISK_MB = 160  # the data disk: room for the uploads and checkpoints of this module's jobs, not much more
# No scenario here relies on a lease lapsing (none kills a worker); a long lease keeps a database outage
# on a loaded machine (seconds) well inside it, so the PostgreSQL scenario measures riding out the outage,
# not the reconciler's requeue.
LEASE_S = "40"


# -- our own PostgreSQL, Redis and data disk ----------------------------------------------------------------


def _as_postgres(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """initdb and postgres refuse to run as root; run them as the postgres account when we are root."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kw)


class OwnPostgres:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="chatforge-chaos-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.dir.chmod(0o755)
        self.data, self.port = self.dir / "data", free_port()
        out = _as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                            "--no-sync"])
        assert out.returncode == 0, out.stderr
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/chatforge"

    def ctl(self, *args: str) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        out = _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "pg.log"),
                            "-o", opts, "-w", "-t", "60", *args])
        assert out.returncode == 0, (args, out.stdout, out.stderr, self.log())

    def log(self) -> str:
        try:
            return (self.dir / "pg.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def create_database(self) -> None:
        from sqlalchemy import create_engine, text

        admin = create_engine(self.url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text("CREATE DATABASE chatforge"))
        admin.dispose()


@contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    pg = OwnPostgres()
    try:
        pg.ctl("start")
        pg.create_database()
        yield pg
    finally:
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(pg.data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(pg.dir, ignore_errors=True)


class OwnRedis:
    """A Redis server that keeps nothing on disk: a restart comes back empty, as after losing its host."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.folder / "redis.log", "ab") as log:
            self.proc = subprocess.Popen([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                                          "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
                                         stdout=log, stderr=subprocess.STDOUT)
        import redis

        r = redis.Redis(port=self.port)
        wait_until(lambda: _pings(r), what="redis-server to start", timeout=20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # no chance to save anything
            self.proc.wait()


def _pings(r) -> bool:
    import redis

    try:
        return bool(r.ping())
    except redis.RedisError:
        return False


@contextmanager
def own_redis(folder: Path) -> Iterator[OwnRedis]:
    r = OwnRedis(folder)
    r.start()
    try:
        yield r
    finally:
        r.stop()


@contextmanager
def small_disk(folder: Path, mb: int) -> Iterator[bool]:
    """`folder` becomes a tmpfs of `mb` MiB (a full disk gives ENOSPC, like a real one); yields whether the
    mount worked (it needs CAP_SYS_ADMIN)."""
    folder.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(folder)],
                        capture_output=True, check=False).returncode == 0
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


# -- the service --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scaleout(tmp_path_factory, tiny_model_path):
    root = tmp_path_factory.mktemp("chaos-scaleout")
    with own_postgres() as pg, own_redis(root) as rd, small_disk(root / "data", DISK_MB) as mounted:
        svc = start_service(root / "data", pg.url, rd.url, workers=2, models={"tiny-llama": tiny_model_path},
                            **{**FAST_JOBS, "CHATFORGE_JOB_LEASE_SECONDS": LEASE_S})
        svc.pg, svc.redis, svc.disk_mounted = pg, rd, mounted
        try:
            yield svc
        finally:
            svc.stop()


@pytest.fixture(scope="module")
def key(scaleout):
    return scaleout.key("chaos-scaleout")


def _client(svc, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=svc.v1, api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def client(scaleout, key):
    return _client(scaleout, key)


@pytest.fixture(scope="module")
def train_file(client, tmp_path_factory):
    p = write_jsonl(tmp_path_factory.mktemp("d") / "t.jsonl", sft_rows(24))
    return client.files.create(file=p.open("rb"), purpose="fine-tune")


# -- polling that tolerates the outage itself ---------------------------------------------------------------


def _retrieve(client, job_id):
    """The job, or None while the API cannot answer (the outage being tested)."""
    try:
        return client.fine_tuning.jobs.retrieve(job_id)
    except (openai.APIConnectionError, openai.InternalServerError, openai.APIStatusError):
        return None


def wait_job(client, job_id, cond, what: str, timeout: float = 240):
    end = time.monotonic() + timeout
    job = None
    while time.monotonic() < end:
        job = _retrieve(client, job_id) or job
        if job is not None and (cond(job) or job.status in ("succeeded", "failed", "cancelled")):
            return job
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {job}")


def finished(client, job_id, timeout: float = 300):
    return wait_job(client, job_id, lambda j: False, "the job to finish", timeout)


def step_of(job) -> int:
    return (job.model_extra or {}).get("step") or 0


def api_answers_within(client, seconds: float) -> float:
    """Seconds until the API answers a plain read again (it must, without anybody restarting it)."""
    t0 = time.monotonic()
    while True:
        try:
            client.models.list()
            return time.monotonic() - t0
        except (openai.APIConnectionError, openai.APIStatusError):
            if time.monotonic() - t0 > seconds:
                raise
            time.sleep(0.2)


# -- what every scenario checks -----------------------------------------------------------------------------


def assert_succeeded_once_with_whole_curve(client, job, steps: int) -> list[int]:
    """The job succeeded exactly once, its loss curve has steps 1..N once each, its model and newest
    checkpoint serve. Returns the metric steps of the events, oldest first (attempts may replay steps
    after the checkpoint they resume from; the curve keeps each step once)."""
    assert job.status == "succeeded", job.error
    events = list(reversed(client.fine_tuning.jobs.list_events(job.id, limit=1000).data))  # oldest first
    succeeded = [e for e in events if e.message.startswith("The job has successfully completed")]
    assert len(succeeded) == 1, [e.message for e in events]
    assert sum(e.message.startswith("Job failed") for e in events) == 0, [e.message for e in events]

    metric_steps = [e.data["step"] for e in events if e.type == "metrics"]
    assert set(metric_steps) == set(range(1, steps + 1)), metric_steps
    # the loss curve a user downloads: one row per step, 1..N, none missing, none twice, a number each
    assert len(job.result_files) == 1
    rows = list(csv.DictReader(io.StringIO(client.files.content(job.result_files[0]).read().decode())))
    assert [int(r["step"]) for r in rows] == list(range(1, steps + 1)), [r["step"] for r in rows]
    assert all(float(r["train_loss"]) > 0 for r in rows)

    # no half-written model: the fine-tuned model and its newest checkpoint load and answer
    assert len([m for m in client.models.list().data if m.id == job.fine_tuned_model]) == 1
    for model in (job.fine_tuned_model, client.fine_tuning.jobs.checkpoints.list(job.id).data[0]
                  .fine_tuned_model_checkpoint):
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "What is 2 plus 2?"}],
                                           max_tokens=4, temperature=0)
        assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens >= 1
    return metric_steps


def assert_contiguous_attempts(metric_steps: list[int], every: int) -> None:
    """Within an attempt the steps go up one at a time; a later attempt starts right after a checkpoint."""
    for prev, cur in itertools.pairwise(metric_steps):
        assert cur == prev + 1 or (cur <= prev and (cur - 1) % every == 0), metric_steps


# -- scenarios ----------------------------------------------------------------------------------------------


def test_postgres_restarted_mid_job(scaleout, client, train_file):
    steps, every = 30, 5
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id, method=method(steps, every))
    job = wait_job(client, job.id, lambda j: step_of(j) >= 8, "step 8")
    assert job.status == "running" and step_of(job) < steps
    t0 = time.monotonic()
    scaleout.pg.ctl("-m", "immediate", "stop")  # a crash: every open connection is cut
    time.sleep(3)
    assert _retrieve(client, job.id) is None  # the outage is real: the API cannot read the job
    scaleout.pg.ctl("start")
    down = time.monotonic() - t0
    recovered = api_answers_within(client, 30)
    job = finished(client, job.id)
    metric_steps = assert_succeeded_once_with_whole_curve(client, job, steps)
    # a few seconds of database downtime cost the run nothing: the training process waited for the
    # database and carried on, one attempt, every step reported once
    assert job.model_extra["attempts"] == 1, job.model_extra
    assert metric_steps == list(range(1, steps + 1)), metric_steps
    assert all(p.popen.poll() is None for p in (scaleout.api, *scaleout.workers))  # nobody restarted by hand
    print(f"postgres down {down:.1f}s; API answered {recovered:.1f}s after; attempts {job.model_extra['attempts']};"
          f" metric events {len(metric_steps)} for {steps} steps")


def test_redis_restarted_empty_while_jobs_queued_and_running(scaleout, client, train_file):
    import redis

    # long enough that a and b both still train when Redis dies, on a slow CPU too (where b's training child
    # can start several of a's steps later)
    steps = {"a": 30, "b": 30, "c": 6}
    jobs = {name: client.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id,
                                                 method=method(n, 4)) for name, n in steps.items()}
    # two workers, one job each: a and b run (in that order of wake-ups), c waits in Redis for a free worker.
    # Gate on both training at once with steps left: had a finished before b started, a's worker would
    # have taken c and there would be no queued job to lose.
    end = time.monotonic() + 240
    while True:
        ab = [_retrieve(client, jobs[name].id) for name in ("a", "b")]
        if all(j is not None and j.status == "running" and 2 <= step_of(j) <= steps["a"] - 4 for j in ab):
            break
        assert all(j is None or (j.status in ("queued", "running") and step_of(j) <= steps["a"] - 4)
                   for j in ab), ("a and b to train at the same time with steps left", ab)
        assert time.monotonic() < end, ("a and b to train", ab)
        time.sleep(0.1)
    broker = redis.Redis.from_url(scaleout.redis.url)
    assert broker.llen("jobs") >= 1  # c's wake-up (and maybe a reconciler's duplicate) is queued
    assert _retrieve(client, jobs["c"].id).status == "queued"

    scaleout.redis.stop()  # Redis dies with everything in memory: c's wake-up, a's and b's unacked ones
    time.sleep(2)
    scaleout.redis.start()
    assert broker.llen("jobs") == 0 and not broker.keys("*")  # it came back empty
    recovered = api_answers_within(client, 30)

    done = {name: finished(client, job.id, timeout=300) for name, job in jobs.items()}
    for name, job in done.items():
        metric_steps = assert_succeeded_once_with_whole_curve(client, job, steps[name])
        # the database is the truth: running jobs never needed Redis, the queued one was sent again by a
        # worker's reconciler; nobody ran a job twice
        assert job.model_extra["attempts"] == 1, (name, job.model_extra)
        assert metric_steps == list(range(1, steps[name] + 1)), (name, metric_steps)
    assert all(p.popen.poll() is None for p in (scaleout.api, *scaleout.workers))
    # a job created now is woken up through the new Redis at once
    fresh = client.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id, method=method(2, 10))
    assert finished(client, fresh.id, timeout=120).status == "succeeded"
    print(f"API answered {recovered:.1f}s after Redis came back")


def _read_stream(url: str, key: str, body: dict | None, out: dict) -> None:
    """Read an SSE response (a chat stream with `body`, else a job's events) line by line and note how it
    ended: "done" (the server ended it), or the transport error the client saw."""
    method_, params = ("POST", None) if body is not None else ("GET", {"stream": "true"})
    out["lines"] = 0
    try:
        with httpx.stream(method_, url, json=body, params=params, headers={"Authorization": f"Bearer {key}"},
                          timeout=httpx.Timeout(10, read=30)) as r:
            out["status"] = r.status_code
            for line in r.iter_lines():
                if line.startswith("data:"):
                    out["lines"] += 1
                    if line.strip() in ("data: [DONE]",) or '"status": "succeeded"' in line:
                        out["end"] = "done"
        out.setdefault("end", "closed")
    except httpx.HTTPError as e:
        out["end"] = type(e).__name__
    out["at"] = time.monotonic()


def test_api_killed_with_a_chat_stream_and_an_event_stream_open(scaleout, client, key, train_file):
    steps = 20
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id, method=method(steps, 5))
    wait_job(client, job.id, lambda j: step_of(j) >= 2, "the job to train")
    events: dict = {}
    chat: dict = {}
    threads = [
        threading.Thread(target=_read_stream, args=(f"{scaleout.v1}/fine_tuning/jobs/{job.id}/events", key, None,
                                                    events), daemon=True),
        threading.Thread(target=_read_stream, args=(f"{scaleout.v1}/chat/completions", key, {
            "model": "tiny-llama", "stream": True, "max_tokens": 1900, "temperature": 1.0,
            "messages": [{"role": "user", "content": "Tell me a very long story."}]}, chat), daemon=True),
    ]
    for t in threads:
        t.start()
    end = time.monotonic() + 60
    while not (events.get("lines", 0) >= 1 and chat.get("lines", 0) >= 3):
        assert time.monotonic() < end, ("both streams to flow", events, chat, scaleout.api.tail(20))
        time.sleep(0.05)
    assert "end" not in events and "end" not in chat  # both streams are open when the API dies

    killed_at = time.monotonic()
    scaleout.api.kill9()
    for t in threads:
        t.join(15)
    # each client saw its stream end (a cut connection), promptly, rather than hanging on a dead server
    for name, s in (("events", events), ("chat", chat)):
        assert s.get("end") not in (None, "done"), (name, s)
        assert s["at"] - killed_at < 10, (name, s)

    # the training is not the API's business: it goes on while no API runs
    _, step_at_kill = _db_job(scaleout, job.id)
    wait_until(lambda: _db_job(scaleout, job.id)[1] > step_at_kill or _db_job(scaleout, job.id)[0] != "running",
               "the job to train on while no API runs", 60)
    step_while_down = _db_job(scaleout, job.id)[1]
    # a new API process on the same data, database and broker (what a process supervisor would start)
    port = int(scaleout.base_url.rsplit(":", 1)[1])
    scaleout.api = spawn(scaleout.env, ["serve", "--no-worker", "--skip-model", "--port", str(port)],
                         scaleout.data_dir / "api-restarted.log")
    wait_http(scaleout.base_url + "/health", scaleout.api)
    resumed: dict = {}
    threading.Thread(target=_read_stream, args=(f"{scaleout.v1}/fine_tuning/jobs/{job.id}/events", key, None,
                                                resumed), daemon=True).start()
    job = finished(client, job.id)
    metric_steps = assert_succeeded_once_with_whole_curve(client, job, steps)
    assert job.model_extra["attempts"] == 1 and metric_steps == list(range(1, steps + 1)), metric_steps
    wait_until(lambda: "end" in resumed, "the new API's event stream to end", 30)
    assert resumed["end"] == "done", resumed  # an event stream opened on the new API runs to the end
    print(f"job at step {step_while_down} while no API ran; streams ended: events {events['end']}, chat {chat['end']}")



def _db_job(svc, job_id: str) -> tuple[str, int]:
    """A job's status and step straight from the database (for when no API runs)."""
    from sqlalchemy import create_engine, text

    e = create_engine(svc.env["CHATFORGE_DATABASE_URL"])
    try:
        with e.connect() as c:
            status, step = c.execute(text("SELECT status, step FROM fine_tuning_jobs WHERE id = :i"),
                                     {"i": job_id}).one()
    finally:
        e.dispose()
    return status, step or 0


def _fill(folder: Path, leave: int) -> Path:
    """Fill the filesystem under `folder` until `leave` bytes are free (or it refuses more)."""
    filler = folder / "filler.bin"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb") as f:
        try:
            while (free := shutil.disk_usage(folder).free) > leave:
                f.write(chunk[: max(4096, min(len(chunk), free - leave))])
                f.flush()
        except OSError:
            pass
    return filler


def _complete(checkpoint: Path) -> bool:
    return checkpoint.is_dir() and any(checkpoint.glob("*.safetensors")) and (checkpoint / "trainer_state.json").is_file()


def test_data_disk_full_during_a_checkpoint_write(scaleout, client, train_file):
    if not scaleout.disk_mounted:
        pytest.skip("cannot mount a size-limited tmpfs here (needs CAP_SYS_ADMIN)")
    steps, every = 20, 5
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=train_file.id, method=method(steps, every))
    ckpts = scaleout.data_dir / "storage" / "jobs" / job.id / "checkpoints"
    wait_until(lambda: _complete(ckpts / f"checkpoint-{every}"), "the first checkpoint", 120)
    # training goes on while the disk fills (~100 ms a step), so the next checkpoint may still complete
    # before the disk is full: what follows is relative to the newest complete checkpoint, not to the first
    filler = _fill(scaleout.data_dir, leave=16 * 1024)  # a later checkpoint starts writing and runs out
    try:
        job = wait_job(client, job.id, lambda j: j.status == "paused", "the disk to fill up", timeout=120)
    finally:
        filler.unlink()
    # the job paused, saying why and where, rather than failing (a failed job could not be continued)
    assert job.status == "paused", job.error
    events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
    full = [e for e in events if (e.data or {}).get("code") == "disk_full"]
    # (the cause is ENOSPC's "No space left on device", or torch.save's zip writer's errno-less "unexpected
    # pos" when the disk fills inside it; the event names the disk either way)
    assert len(full) == 1 and "is full" in full[0].message and str(ckpts.parent) in full[0].message, full
    assert full[0].level == "error"
    paused_at = full[0].data["step"]
    # nothing half-written was published: every checkpoint folder is complete, the one being written when
    # the disk filled is not among them, and the API lists only complete ones
    on_disk = sorted(int(c.name.split("-")[1]) for c in ckpts.glob("checkpoint-*"))
    assert on_disk and all(_complete(ckpts / f"checkpoint-{n}") for n in on_disk), on_disk
    newest = on_disk[-1]
    assert newest % every == 0 and newest < paused_at <= newest + every, (on_disk, paused_at)
    listed = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data]
    assert newest in listed and max(listed) == newest, (listed, on_disk)

    # space is freed (the filler is gone); the user resumes; the run continues from the newest checkpoint
    client.fine_tuning.jobs.resume(job.id)
    job = finished(client, job.id)
    metric_steps = assert_succeeded_once_with_whole_curve(client, job, steps)
    assert_contiguous_attempts(metric_steps, every)
    resumed = list(reversed(client.fine_tuning.jobs.list_events(job.id, limit=1000).data))
    assert any("Resuming from the last checkpoint" in e.message for e in resumed)
    second = metric_steps[metric_steps.index(paused_at) + 1:]
    assert second[0] == newest + 1, metric_steps  # from the complete checkpoint, not the half-written one
    assert not list(ckpts.glob(".staging/*")), list(ckpts.glob(".staging/*"))  # its leftovers are gone
