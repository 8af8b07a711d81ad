"""Real processes for tests: a PostgreSQL database and Redis db per test session, a uvicorn API server
and a Celery worker, each started as its own process exactly as in production."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN = os.environ.get("CHATFORGE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("CHATFORGE_TEST_REDIS", "redis://127.0.0.1:6379")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_database() -> Iterator[str]:
    """A brand-new database for this test session, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"chatforge_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        from chatforge.db.session import get_engine

        try:
            get_engine(url).dispose()
        except Exception:  # noqa: BLE001, S110 - best effort before dropping the database
            pass
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def redis_database(offset: int = 0) -> Iterator[str]:
    import redis

    db = 1 + ((os.getpid() + offset) % 15)
    url = f"{REDIS}/{db}"
    r = redis.Redis.from_url(url)
    r.flushdb()
    try:
        yield url
    finally:
        r.flushdb()


@contextmanager
def s3_server(log_dir: Path) -> Iterator[dict[str, str]]:
    """moto's standalone S3 server (a real HTTP endpoint, as MinIO would be) with one bucket; yields the
    environment that points ChatForge at it (CHATFORGE_STORAGE_URL and the standard AWS variables)."""
    import boto3

    port = free_port()
    with open(log_dir / "moto.log", "ab") as log:
        cmd = [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)]
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "CHATFORGE_STORAGE_URL": "s3://chatforge-test/artifacts"}
    try:
        end = time.monotonic() + 60
        while True:
            try:
                httpx.get(env["AWS_ENDPOINT_URL"], timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > end or p.poll() is not None:
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.2)
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="test",
                     aws_secret_access_key="test", region_name="us-east-1").create_bucket(Bucket="chatforge-test")
        yield env
    finally:
        p.terminate()
        p.wait(timeout=30)


def base_env(data_dir: Path, db_url: str | None, broker_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATFORGE_")}
    env.update({
        "CHATFORGE_DATA_DIR": str(data_dir),
        "CHATFORGE_LOG_FORMAT": "text",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    })
    if db_url:
        env["CHATFORGE_DATABASE_URL"] = db_url
    if broker_url:
        env["CHATFORGE_BROKER_URL"] = broker_url
    env.update(extra)
    return env


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chatforge.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=check, timeout=600)


def create_key(env: dict[str, str], project: str) -> str:
    out = cli(env, "keys", "create", "--project", project).stdout.strip().splitlines()
    return out[-1].strip()


@dataclass
class Proc:
    popen: subprocess.Popen
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def kill9(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


def _is_runner(pid: int) -> bool:
    try:
        return b"workers.runner" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


def spawn(env: dict[str, str], args: list[str], log: Path) -> Proc:
    f = open(log, "ab")  # noqa: SIM115 - the child writes to it for its whole life
    p = subprocess.Popen([sys.executable, "-m", "chatforge.cli", *args], env=env, cwd=ROOT,
                         stdout=f, stderr=subprocess.STDOUT)
    return Proc(p, log)


def wait_http(url: str, proc: Proc, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"process exited early:\n{proc.tail()}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not up after {timeout}s:\n{proc.tail()}")


@dataclass
class Service:
    base_url: str
    env: dict[str, str]
    data_dir: Path
    api: Proc
    workers: list[Proc] = field(default_factory=list)

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def start_worker(self, data_dir: Path | None = None, **extra_env: str) -> Proc:
        """A worker; with `data_dir`, one that shares no folder with the API (another host)."""
        env = dict(self.env, **extra_env)
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
            env["CHATFORGE_DATA_DIR"] = str(data_dir)
        n = len(self.workers)
        w = spawn(env, ["worker"], (data_dir or self.data_dir) / f"worker{n}.log")
        self.workers.append(w)
        return w

    def key(self, project: str) -> str:
        return create_key(self.env, project)

    def training_pids(self, job_id: str) -> list[int]:
        """Live training processes of a job, as its workers logged them (a warm runner's command line
        does not name its job: it was started before the job was known)."""
        pids = set()
        for w in self.workers:
            try:
                text = w.log.read_text(errors="replace")
            except FileNotFoundError:
                continue
            pids.update(int(m) for m in re.findall(rf"training {re.escape(job_id)} in a (?:warm|new) child (\d+)",
                                                   text))
        return [p for p in pids if _is_runner(p)]

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        self.api.stop()


def start_service(data_dir: Path, db_url: str | None, broker_url: str | None, *, workers: int = 1,
                  models: dict[str, Path] | None = None, link_models: bool = True, **extra_env: str) -> Service:
    data_dir.mkdir(parents=True, exist_ok=True)
    env = base_env(data_dir, db_url, broker_url, **extra_env)
    cli(env, "migrate")
    for name, path in (models or {}).items():
        cli(env, "models", "add", name, str(path), *(["--link"] if link_models else []))
    port = free_port()
    api = spawn(env, ["serve", "--no-worker", "--skip-model", "--port", str(port)], data_dir / "api.log")
    svc = Service(f"http://127.0.0.1:{port}", env, data_dir, api)
    wait_http(svc.base_url + "/health", api)
    for _ in range(workers):
        svc.start_worker()
    return svc
