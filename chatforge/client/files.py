"""`chatforge files upload | list`: send a dataset with a live progress bar (advanced as httpx2 reads the file,
in one request or, from 64 MB, through OpenAI's Uploads API in parts), wait for its validation and print
the server's report; list the project's files. Validation itself is the server's.
"""

from __future__ import annotations

import io
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, BinaryIO, TextIO

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from chatforge.client.output import client_command, fmt_int, print_rows, stderr, stdout
from chatforge.client.server import (
    DEFAULT_BASE_URL,
    ApiKey,
    BaseUrl,
    ClientError,
    Server,
    connect,
    openai_errors,
    openai_message,
)

CHUNKED_FROM_MB = 64  # larger files go through /v1/uploads in parts

app = typer.Typer(help="Upload and list training files on a server.", no_args_is_help=True)

OnProgress = Callable[[int], None]  # bytes sent so far


class ReadProgress(io.IOBase):
    """A binary file as httpx2 sees it, calling on_read(position) after each read so a progress bar advances
    with the bytes actually sent (a retry seeks back to 0 and the count follows)."""

    def __init__(self, raw: BinaryIO, on_read: OnProgress, name: str | None = None) -> None:
        self.raw, self.on_read = raw, on_read
        self.name = name or getattr(raw, "name", "upload")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.on_read(self.raw.tell())
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def fileno(self) -> int:
        return self.raw.fileno()


def upload_whole(srv: Server, path: str, extra: dict[str, Any] | None = None,
                 on_progress: OnProgress | None = None):
    """POST /v1/files in one request; the File object."""
    with open(path, "rb") as fh:
        body = ReadProgress(fh, on_progress or (lambda _: None), name=os.path.basename(path))
        return srv.openai.files.create(file=body, purpose="fine-tune", extra_body=extra or None)


def upload_in_parts(srv: Server, path: str, part_mb: int, on_progress: OnProgress | None = None):
    """OpenAI's Uploads API: parts of part_mb MB, cancelled on failure; the File object at the end."""
    report = on_progress or (lambda _: None)
    size, part_size = os.path.getsize(path), part_mb * 1024 * 1024
    up = srv.openai.uploads.create(bytes=size, filename=os.path.basename(path), purpose="fine-tune",
                                   mime_type="application/octet-stream")
    ids = []
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(part_size):
                base = fh.tell() - len(chunk)
                part = ReadProgress(io.BytesIO(chunk), lambda pos, base=base: report(base + pos), name="part")
                ids.append(srv.openai.uploads.parts.create(upload_id=up.id, data=part).id)
        return srv.openai.uploads.complete(upload_id=up.id, part_ids=ids).file
    except KeyboardInterrupt:
        srv.openai.uploads.cancel(upload_id=up.id)
        raise
    except openai_errors():
        try:
            srv.openai.uploads.cancel(upload_id=up.id)
        except openai_errors():
            pass
        raise


@contextmanager
def upload_bar(console: Console, name: str, total: int) -> Iterator[OnProgress]:
    """A rich progress bar (bytes, speed, time left) for one upload; yields its on_progress callback."""
    columns = (TextColumn("uploading {task.description}", markup=False), BarColumn(), TaskProgressColumn(),
               DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(name, total=total)
        yield lambda done: progress.update(task, completed=done)


def wait_processed(srv: Server, file_id: str, console: Console, poll_s: float = 1.0) -> dict:
    """Poll a file validated on a worker until it is processed or in error; a bar on a terminal."""
    with Progress(TextColumn("validating {task.description}", markup=False), BarColumn(), TaskProgressColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(file_id, total=1.0)
        while True:
            f = srv.request("GET", f"/files/{file_id}")
            if f["status"] != "uploaded":
                return f
            progress.update(task, completed=f.get("progress") or 0)
            time.sleep(poll_s)


def split_problems(message: str) -> list[str]:
    """A 400's message joins its located problems with "; ": one per line for printing."""
    return re.split(r"; (?=(?:line|record) \d|\.\.\. and )", message)


def print_report(f: dict, out: TextIO | None = None) -> None:
    """The validation report of a processed file, as plain lines."""
    out = out or sys.stdout
    r = f.get("report") or {}
    ts = r.get("token_stats")

    def p(*a) -> None:
        print(*a, file=out)

    p(f"{f['filename']} -> {f['id']} ({fmt_int(f.get('bytes'))} bytes)")
    p(f"format: {f.get('format')}   kind: {f.get('kind')}   examples: {fmt_int(f.get('n_examples'))}"
      f" (from {fmt_int(r.get('n_records'))} records, {fmt_int(r.get('n_skipped', 0))} skipped)")
    if ts:
        p(f"tokens: total {fmt_int(ts['total'])}  mean {ts['mean']}  p50 {ts['p50']}  p95 {ts['p95']}"
          f"  max {ts['max']}")
        p(f"over {ts['max_length']} tokens: {ts['over_max_length']} ({ts['over_max_length_share'] * 100:.1f}%)")
    p(f"duplicates: {fmt_int(r.get('duplicates', 0))}")
    for kind in ("errors", "warnings"):
        items, total = r.get(kind) or [], r.get(f"n_{kind}", 0)
        p(f"{kind}: {total or 'none'}")
        for item in items:
            p(f"  {item['text']}")
        if total > len(items):
            p(f"  ... and {total - len(items)} more")
    if ts and ts.get("histogram"):
        p("token length histogram:")
        edges, counts = ts["histogram"]["edges"], ts["histogram"]["counts"]
        top = max(counts) or 1
        for i, c in enumerate(counts):
            if c:
                p(f"  {edges[i]:>6}-{edges[i + 1]:<6} {'█' * max(1, round(30 * c / top))} {c}")


def _print_refusal(title: str, message: str) -> None:
    print(f"error: {title}:", file=sys.stderr)
    for line in split_problems(message):
        print(f"  {line}", file=sys.stderr)


@app.command()
@client_command
def upload(
    path: Annotated[str, typer.Argument(help="a JSONL, JSON, CSV or Parquet dataset")],
    format: Annotated[str | None, typer.Option(help="force a format instead of detecting it")] = None,
    max_length: Annotated[int | None, typer.Option(help="length for the over-length share (default 2048)")] = None,
    part_size: Annotated[int, typer.Option(metavar="MB", help=f"files of {CHUNKED_FROM_MB} MB or more go up "
                                                             "in parts of this size")] = 64,
    no_wait: Annotated[bool, typer.Option(help="do not wait for a large file's background validation")] = False,
    base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None,
) -> int:
    """Upload a dataset with a progress bar and print its validation report (exit 1 if it is refused)."""
    srv = connect(base_url, api_key)
    extra = {k: v for k, v in (("format", format), ("max_length", max_length)) if v is not None}
    try:
        size = os.path.getsize(path)
    except OSError:
        raise ClientError(f"no such file: {path}") from None
    try:
        with upload_bar(stderr(), os.path.basename(path), size) as on_progress:
            if size >= CHUNKED_FROM_MB * 1024 * 1024 and not extra:
                f = upload_in_parts(srv, path, part_size, on_progress).model_dump()
            else:
                f = upload_whole(srv, path, extra, on_progress).model_dump()
    except openai_errors() as e:
        _print_refusal("the file was not accepted", openai_message(e))
        return 1
    if f["status"] == "uploaded":
        if no_wait:
            print(f"{f['id']}: stored; validating on a worker (chatforge files list shows its status)")
            return 0
        f = wait_processed(srv, f["id"], stderr())
    if f["status"] == "error":
        _print_refusal(f"the file was not accepted ({f['id']})", f.get("status_details") or "")
        return 1
    print_report(f)
    return 0


@app.command("list")
@client_command
def list_files(base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None) -> int:
    """List the project's files (a table on a terminal, tab-separated when piped)."""
    rows = []
    for f in connect(base_url, api_key).openai.files.list().data:
        d = f.model_dump()
        rows.append([d["id"], d.get("kind") or "-", d.get("format") or "-", fmt_int(d.get("n_examples")),
                     d["filename"], d.get("status") or "-"])
    print_rows(["ID", "KIND", "FORMAT", "EXAMPLES", "FILENAME", "STATUS"], rows, stdout())
    return 0
