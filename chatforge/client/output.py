"""Terminal output shared by every `chatforge` command: the stdout/stderr consoles, lists as rich tables on
a terminal and tab-separated rows when piped (stable for scripts), number and duration formats, and the
wrapper that turns a client command's failures into `error: ...` and an exit code.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from chatforge.client.server import ClientError


def stdout() -> Console:
    """A console on the current sys.stdout (a terminal, or a pipe when it is not one)."""
    return Console(file=sys.stdout, highlight=False)


def stderr() -> Console:
    return Console(file=sys.stderr, highlight=False)


def fmt_int(n: Any) -> str:
    return "–" if n is None else f"{n:,}"


def duration(seconds: float) -> str:
    """`h:mm:ss`, never negative."""
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def print_rows(headers: Sequence[str], rows: Sequence[Sequence[str]], console: Console | None = None) -> None:
    """A table on a terminal; one tab-separated line per row (no header) when piped."""
    console = console or stdout()
    if not console.is_terminal:
        for row in rows:
            console.file.write("\t".join(row) + "\n")
        console.file.flush()
        return
    table = Table(*headers, box=None, header_style="bold", pad_edge=False)
    for col in table.columns:
        col.overflow = "fold"
    for row in rows:
        table.add_row(*row)
    console.print(table, markup=False)


def client_command(fn: Callable[..., int | None]) -> Callable[..., None]:
    """Run a command: ClientError -> `error: ...` on stderr and exit 1; Ctrl-C -> 130; a nonzero return -> that
    exit code; a closed pipe (`chatforge jobs list | head`) stops quietly, as Unix tools do."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs) -> None:
        try:
            rc = fn(*args, **kwargs) or 0
        except ClientError as e:
            print(f"error: {e}", file=sys.stderr)
            rc = 1
        except KeyboardInterrupt:
            print(file=sys.stderr)
            rc = 130
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            rc = 1
        if rc:
            raise typer.Exit(rc)

    return wrapped
