"""The `chatforge` command: run the service (serve, worker, migrate), manage keys and base models, and mount
the client commands (files, jobs, chat) from chatforge.client. Built on typer: `--help` on every command,
shell completion with `chatforge --install-completion`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from chatforge.client import add_client_commands
from chatforge.client.output import print_rows
from chatforge.settings import get_settings, reset_settings

app = typer.Typer(name="chatforge", help="Run ChatForge (serve, worker, migrate, keys, models) or use a server "
                  "(files, jobs, chat).", no_args_is_help=True,
                  pretty_exceptions_show_locals=False, context_settings={"help_option_names": ["-h", "--help"]})
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
quotas_app = typer.Typer(help="Set and show project quotas (queued jobs, storage).", no_args_is_help=True)
models_app = typer.Typer(help="Manage base models.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(quotas_app, name="quotas")
app.add_typer(models_app, name="models")

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="data directory (overrides CHATFORGE_DATA_DIR)")]


def _env_defaults() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _apply_data_dir(data_dir: Path | None) -> None:
    if data_dir:
        os.environ["CHATFORGE_DATA_DIR"] = str(Path(data_dir).resolve())
        reset_settings()


@app.callback()
def _root(data_dir: DataDir = None) -> None:
    _apply_data_dir(data_dir)


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _migrate_quiet() -> None:
    from chatforge.migrate import upgrade

    upgrade(get_settings().db_url)


@app.command()
def migrate() -> None:
    """Apply database migrations."""
    settings = get_settings()
    _migrate_quiet()
    print(f"database at {_redact(settings.db_url)} is up to date")


# -- keys ---------------------------------------------------------------------------------------------

class Scope(str, Enum):
    full = "full"
    read_only = "read-only"
    inference_only = "inference-only"


def _parsed(parse, text: str | None, option: str):
    """parse(text), or typer's usage error naming the option."""
    if text is None:
        return None
    try:
        return parse(text)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint=option) from None


@keys_app.command("create")
def keys_create(
    project: Annotated[str, typer.Option(help="project name")],
    scope: Annotated[Scope, typer.Option(help="full; read-only (GET only); inference-only (chat, completions, "
                                              "responses, rewards, GET models)")] = Scope.full,
    expires_in: Annotated[str | None, typer.Option(help="lifetime: 90s, 15m, 12h, 30d, 2w (default: never)")] = None,
    rpm: Annotated[int | None, typer.Option(min=1, help="requests per minute (default: no limit)")] = None,
    max_streams: Annotated[int | None, typer.Option(
        min=1, help="concurrent inference requests, streamed or not (default: no limit)")] = None,
) -> None:
    """Create a key for a project (created if new); the key is printed once."""
    from chatforge.db.session import session_scope
    from chatforge.keys import create_key, parse_duration

    lifetime = _parsed(parse_duration, expires_in, "--expires-in")
    _migrate_quiet()
    with session_scope() as s:
        row, plaintext = create_key(s, project, scope=scope.value, expires_in=lifetime, rpm=rpm,
                                    max_streams=max_streams)
        until = f", expires {row.expires_at:%Y-%m-%d %H:%M:%S} UTC" if row.expires_at else ""
        print(f"Created {scope.value} key {row.id} for project '{project}'{until}. "
              "Store it now; it is not shown again:")
        print(plaintext)


def _when(value) -> str:
    return f"{value:%Y-%m-%d %H:%M}" if value else "-"


@keys_app.command("list")
def keys_list() -> None:
    """List keys with scope, expiry, last use and limits (a table on a terminal, tab-separated when piped)."""
    from chatforge.db.session import session_scope
    from chatforge.keys import list_keys, state

    _migrate_quiet()
    with session_scope() as s:
        rows = [[key.id, f"{key.prefix}…", project.name, state(key), _when(key.created_at), key.scope,
                 _when(key.expires_at) if key.expires_at else "never", _when(key.last_used_at),
                 str(key.rpm or "-"), str(key.max_streams or "-")] for key, project in list_keys(s)]
    print_rows(["ID", "PREFIX", "PROJECT", "STATE", "CREATED", "SCOPE", "EXPIRES", "LAST USED", "RPM",
                "STREAMS"], rows)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="key id (key_…) or its printed prefix")]) -> None:
    """Revoke a key."""
    from chatforge.db.session import session_scope
    from chatforge.keys import revoke_key

    _migrate_quiet()
    with session_scope() as s:
        row = revoke_key(s, key_id)
        if row is None:
            print(f"no key {key_id}", file=sys.stderr)
            raise typer.Exit(1)
        print(f"revoked {row.id}")


# -- quotas -------------------------------------------------------------------------------------------

def _limit(parse):
    """A quota value: a number (parsed), or 'none' to remove the quota."""
    return lambda text: None if text.strip().lower() in ("none", "unlimited") else parse(text)


def _count(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError(f"not a whole number: {text!r}")
    return int(text)


@quotas_app.command("set")
def quotas_set(
    project: Annotated[str, typer.Argument(help="project name (created if new)")],
    max_queued_jobs: Annotated[str | None, typer.Option(
        help="fine-tuning jobs waiting to run (validating or queued); 'none' removes the quota")] = None,
    storage_bytes: Annotated[str | None, typer.Option(
        help="bytes of files and pending uploads: 5000000, 500M, 10G; 'none' removes the quota")] = None,
) -> None:
    """Set a project's quotas; past one the API answers 429 insufficient_quota."""
    from chatforge.db.session import session_scope
    from chatforge.keys import parse_size, set_quotas

    changes = {}
    if max_queued_jobs is not None:
        changes["max_queued_jobs"] = _parsed(_limit(_count), max_queued_jobs, "--max-queued-jobs")
    if storage_bytes is not None:
        changes["max_storage_bytes"] = _parsed(_limit(parse_size), storage_bytes, "--storage-bytes")
    if not changes:
        raise typer.BadParameter("give --max-queued-jobs and/or --storage-bytes")
    _migrate_quiet()
    with session_scope() as s:
        row = set_quotas(s, project, **changes)
        print(f"project '{row.name}': max queued jobs {_or_none(row.max_queued_jobs)}, "
              f"storage bytes {_or_none(row.max_storage_bytes)}")


def _or_none(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


@quotas_app.command("list")
def quotas_list() -> None:
    """Every project's quotas and what it uses now."""
    from chatforge.db.session import session_scope
    from chatforge.keys import list_projects, queued_jobs, storage_used

    _migrate_quiet()
    with session_scope() as s:
        rows = []
        for p in list_projects(s):
            rows.append([p.name, str(queued_jobs(s, p.id)), _or_none(p.max_queued_jobs),
                         str(storage_used(s, p.id)), _or_none(p.max_storage_bytes)])
    print_rows(["PROJECT", "QUEUED JOBS", "MAX QUEUED JOBS", "STORAGE BYTES", "MAX STORAGE BYTES"], rows)


# -- models -------------------------------------------------------------------------------------------

class Dtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Quantization(str, Enum):
    none = "none"
    q8 = "8bit"
    q4 = "4bit"


def _models(action) -> None:
    """Run action(session, storage) on a migrated database; a ModelSourceError is `error: ...`, exit 2."""
    from chatforge.basemodels import ModelSourceError
    from chatforge.db.session import session_scope
    from chatforge.storage import get_storage

    _migrate_quiet()
    storage = get_storage()
    try:
        with session_scope() as s:
            action(s, storage)
    except ModelSourceError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None


def _say(message: str) -> None:
    print(message, flush=True)


@models_app.command("pull")
def models_pull(name: Annotated[str, typer.Argument(help="a bundled model: smollm2-135m-instruct")]) -> None:
    """Install a bundled model."""
    from chatforge.basemodels import pull_bundled

    _models(lambda s, storage: _say(f"installed {pull_bundled(s, storage, name, progress=_say).id}"))


@models_app.command("add")
def models_add(
    name: Annotated[str, typer.Argument(help="the model id clients will use")],
    source: Annotated[str, typer.Argument(help="a local Hugging Face folder or a hub id")],
    link: Annotated[bool, typer.Option("--link", help="use the folder in place instead of copying it")] = False,
    dtype: Annotated[Dtype | None, typer.Option()] = None,
    quantization: Annotated[Quantization, typer.Option()] = Quantization.none,
) -> None:
    """Register a local Hugging Face folder or a hub id."""
    from chatforge.basemodels import add_model

    def add(s, storage) -> None:
        row = add_model(s, storage, name, source, link=link, dtype=dtype.value if dtype else None,
                        quantization=quantization.value, progress=_say)
        _say(f"registered {row.id}")

    _models(add)


@models_app.command("list")
def models_list() -> None:
    """List the installed base models (a table on a terminal, tab-separated when piped)."""
    from chatforge.basemodels import list_base, model_location

    rows: list[list[str]] = []  # where each model is stored; listing fetches nothing from an object store
    _models(lambda s, storage: rows.extend([m.id, m.source, model_location(storage, m), str(m.settings)]
                                           for m in list_base(s)))
    print_rows(["ID", "SOURCE", "LOCATION", "SETTINGS"], rows)


# -- serve and worker ---------------------------------------------------------------------------------

def ensure_default_model(progress=print) -> None:
    from chatforge.basemodels import BUNDLED, is_installed, pull_bundled
    from chatforge.db.session import session_scope
    from chatforge.storage import get_storage

    settings = get_settings()
    storage = get_storage()
    with session_scope() as s:
        if is_installed(s, storage, settings.default_base_model):
            return
        if settings.default_base_model not in BUNDLED:
            progress(f"warning: default base model {settings.default_base_model!r} is not installed; "
                     "add it with `chatforge models add`")
            return
        progress(f"installing the default base model {settings.default_base_model} (once)")
        pull_bundled(s, storage, settings.default_base_model, progress=progress)


def ensure_first_key() -> str | None:
    """On first start without CHATFORGE_API_KEY, create a key for the default project and return it."""
    from chatforge.db.session import session_scope
    from chatforge.keys import DEFAULT_PROJECT, any_keys, create_key

    if get_settings().api_key:
        return None
    with session_scope() as s:
        if any_keys(s):
            return None
        _, plaintext = create_key(s, DEFAULT_PROJECT)
        return plaintext


@app.command()
def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    data_dir: DataDir = None,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="run the API only")] = False,
    skip_model: Annotated[bool, typer.Option("--skip-model", help="do not install the default base model")] = False,
) -> None:
    """Migrate, install the default model, run the API and a worker."""
    from chatforge import malloc
    from chatforge.httpserver import serve as serve_http
    from chatforge.logs import setup_logging

    malloc.tune()  # before any thread allocates (see chatforge.malloc)

    _apply_data_dir(data_dir)
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    print(f"ChatForge: data in {settings.data_dir.resolve()}", flush=True)
    _migrate_quiet()
    if not skip_model:
        ensure_default_model(progress=_say)
    key = ensure_first_key()
    if key:
        print("\nCreated an API key for the default project. It is shown only this once:\n"
              f"\n    {key}\n", flush=True)
    worker = None
    # uvicorn handles SIGINT itself; SIGTERM is turned into the same clean stop.
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    if not no_worker:
        worker = subprocess.Popen([sys.executable, "-m", "chatforge.cli", "worker"], env=os.environ.copy())
    setup_logging(settings.log_format)
    # the API's engines only (the worker, started above, keeps the defaults its training runs were measured with)
    malloc.bound_kernel_caches()

    def _stop_worker() -> None:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()

    print(f"API on http://{host}:{port}/v1 (console at http://{host}:{port}/)", flush=True)
    try:
        # limits against hostile clients (docs/api.md, "Operations"): head size and time, connections, keep-alive
        serve_http(host, port, head_timeout=settings.http_header_timeout_seconds,
                   keep_alive=settings.http_keep_alive_seconds)
    except KeyboardInterrupt:
        pass
    finally:
        _stop_worker()
    print("ChatForge stopped.", flush=True)


@app.command()
def worker(queues: Annotated[str | None, typer.Option(
        help="comma-separated queues (default: from the worker's capabilities)")] = None) -> None:
    """A Celery worker (scale-out hosts)."""
    from chatforge.logs import setup_logging
    from workers.capabilities import detect, queues_for, worker_id

    settings = get_settings()
    setup_logging(settings.log_format)
    _migrate_quiet()
    caps, _ = detect(settings.worker_capabilities)
    queues = queues or ",".join(queues_for(caps))
    from workers.app import app as celery

    argv = ["worker", "--pool=solo", f"--queues={queues}", "--loglevel=INFO", f"--hostname={worker_id()}",
            "--without-gossip", "--without-mingle"]
    celery.worker_main(argv)


add_client_commands(app)


def parse(argv: list[str]) -> list[str]:
    """The command path that argv names (["models", "pull"]) without running it; typer's usage error if it is
    not a valid command line (checks the compose file and the Dockerfile)."""
    cmd = typer.main.get_command(app)
    ctx = cmd.make_context("chatforge", list(argv))
    path: list[str] = []
    while hasattr(cmd, "resolve_command"):  # a group: its first leftover argument names the subcommand
        rest = [*(getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])), *ctx.args]
        if not rest:
            ctx.fail("missing command")
        name, cmd, rest = cmd.resolve_command(ctx, rest)
        ctx = cmd.make_context(name, rest, parent=ctx)
        path.append(name)
    return path


def main(argv: list[str] | None = None) -> int:
    """Run `chatforge`; the exit code."""
    _env_defaults()
    try:
        app(args=argv, prog_name="chatforge")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
