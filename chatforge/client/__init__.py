"""The `chatforge files | jobs | chat` client commands: they talk to a running ChatForge server over HTTP with
an API key and never open the database or the storage. One module per command group; server-side commands
(serve, worker, migrate, keys, models) live in chatforge.cli, which mounts these with add_client_commands().
"""

from __future__ import annotations

import typer


def add_client_commands(app: typer.Typer) -> None:
    """Mount files, jobs and chat on the `chatforge` app."""
    from chatforge.client import chat, files, jobs

    app.add_typer(files.app, name="files")
    app.add_typer(jobs.app, name="jobs")
    app.command("chat")(chat.chat)
