"""`chatforge files | jobs | chat`: client commands that talk to a running ChatForge server over HTTP with an
API key, using the official openai SDK for OpenAI's routes and httpx2 for ChatForge's additions (the live
job event stream, pause and resume). They never open the database or the storage: server-side commands
(serve, worker, keys, models) live in chatforge.cli, which calls add_client_commands().
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

import httpx2 as httpx

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "cancelled")


class ClientError(Exception):
    """A problem to print as `error: ...` with exit code 1 (bad input, server refusal)."""


# -- connection -------------------------------------------------------------------------------------

class Server:
    """One server: base URL and key, an openai client for OpenAI's routes, httpx2 for the rest."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        if not api_key:
            raise ClientError("no API key: pass --api-key or set CHATFORGE_API_KEY")
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.api_key = api_key
        self._openai = None

    @property
    def openai(self):
        if self._openai is None:
            import openai

            self._openai = openai.OpenAI(base_url=self.base_url + "/v1", api_key=self.api_key, max_retries=1,
                                         timeout=httpx.Timeout(600, connect=10))
        return self._openai

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def request(self, method: str, path: str, **kw) -> dict:
        try:
            r = httpx.request(method, self.base_url + "/v1" + path, headers=self.headers, timeout=60, **kw)
        except httpx.HTTPError as e:
            raise ClientError(f"cannot reach {self.base_url}: {e}") from None
        if r.status_code >= 400:
            raise ClientError(_error_message(r))
        return r.json()

    def events(self, job_id: str, after: str | None = None) -> Iterator[tuple[str, dict]]:
        """(event name, data) from the job's server-sent event stream until the server closes it."""
        params = {"stream": "true", **({"after": after} if after else {})}
        timeout = httpx.Timeout(10, read=120)  # the server pings every 10 s
        with httpx.stream("GET", f"{self.base_url}/v1/fine_tuning/jobs/{job_id}/events", params=params,
                          headers={**self.headers, "Accept": "text/event-stream"}, timeout=timeout) as r:
            if r.status_code >= 400:
                r.read()
                raise ClientError(_error_message(r))
            name, data = "message", []
            for line in r.iter_lines():
                if line == "":
                    if data:
                        yield name, json.loads("\n".join(data))
                    name, data = "message", []
                elif line.startswith(":"):
                    continue
                else:
                    field, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if field == "event":
                        name = value
                    elif field == "data":
                        data.append(value)


def _error_message(r) -> str:
    try:
        err = r.json().get("error") or {}
        return err.get("message") or r.text
    except ValueError:
        return f"HTTP {r.status_code}: {r.text[:200]}"


def _openai_errors():
    import openai

    return openai.APIError


def _openai_message(e: Exception) -> str:
    """The server's own message from an openai SDK error (without the SDK's "Error code: 400 - " prefix)."""
    body = getattr(e, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return getattr(e, "message", None) or str(e)


def _server(args) -> Server:
    return Server(args.base_url, args.api_key)


# -- files --------------------------------------------------------------------------------------------

def _fmt_int(n: Any) -> str:
    return "–" if n is None else f"{n:,}"


def print_report(f: dict, out: TextIO = sys.stdout) -> None:
    r = f.get("report") or {}
    ts = r.get("token_stats")

    def p(*a) -> None:
        print(*a, file=out)

    p(f"{f['filename']} -> {f['id']} ({_fmt_int(f.get('bytes'))} bytes)")
    p(f"format: {f.get('format')}   kind: {f.get('kind')}   examples: {_fmt_int(f.get('n_examples'))}"
      f" (from {_fmt_int(r.get('n_records'))} records, {_fmt_int(r.get('n_skipped', 0))} skipped)")
    if ts:
        p(f"tokens: total {_fmt_int(ts['total'])}  mean {ts['mean']}  p50 {ts['p50']}  p95 {ts['p95']}"
          f"  max {ts['max']}")
        p(f"over {ts['max_length']} tokens: {ts['over_max_length']} ({ts['over_max_length_share'] * 100:.1f}%)")
    p(f"duplicates: {_fmt_int(r.get('duplicates', 0))}")
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


def split_problems(message: str) -> list[str]:
    """A 400's message joins its located problems with "; ": one per line for printing."""
    return re.split(r"; (?=(?:line|record) \d|\.\.\. and )", message)


CHUNKED_FROM_MB = 64  # larger files go through /v1/uploads in parts


def upload_in_parts(srv: Server, path: str, part_mb: int, out: TextIO = sys.stderr):
    """OpenAI's Uploads API: parts of part_mb MB with a progress bar; the File object at the end."""
    from tqdm import tqdm

    size = os.path.getsize(path)
    part_size = part_mb * 1024 * 1024
    up = srv.openai.uploads.create(bytes=size, filename=os.path.basename(path), purpose="fine-tune",
                                   mime_type="application/octet-stream")
    ids = []
    try:
        with open(path, "rb") as fh, tqdm(total=size, unit="B", unit_scale=True, file=out,
                                          desc=f"uploading {os.path.basename(path)}") as bar:
            while chunk := fh.read(part_size):
                ids.append(srv.openai.uploads.parts.create(upload_id=up.id, data=chunk).id)
                bar.update(len(chunk))
        done = srv.openai.uploads.complete(upload_id=up.id, part_ids=ids)
    except KeyboardInterrupt:
        srv.openai.uploads.cancel(upload_id=up.id)
        raise
    except _openai_errors():
        try:
            srv.openai.uploads.cancel(upload_id=up.id)
        except _openai_errors():
            pass
        raise
    return done.file


def wait_processed(srv: Server, file_id: str, out: TextIO = sys.stderr, poll_s: float = 1.0) -> dict:
    """Poll a file validated on a worker until it is processed or in error, showing its progress."""
    while True:
        f = srv.request("GET", f"/files/{file_id}")
        if f["status"] != "uploaded":
            if out.isatty():
                out.write("\r\033[K")
            return f
        if out.isatty():
            out.write(f"\r\033[Kvalidating {file_id}: {100 * (f.get('progress') or 0):.0f}%")
            out.flush()
        time.sleep(poll_s)


def cmd_files(args) -> int:
    srv = _server(args)
    if args.files_cmd == "upload":
        extra = {k: v for k, v in (("format", args.format), ("max_length", args.max_length)) if v is not None}
        try:
            if os.path.getsize(args.path) >= CHUNKED_FROM_MB * 1024 * 1024 and not extra:
                f = upload_in_parts(srv, args.path, args.part_size).model_dump()
            else:
                with open(args.path, "rb") as fh:
                    f = srv.openai.files.create(file=fh, purpose="fine-tune", extra_body=extra or None).model_dump()
        except FileNotFoundError:
            raise ClientError(f"no such file: {args.path}") from None
        except _openai_errors() as e:
            lines = split_problems(_openai_message(e))
            print("error: the file was not accepted:", file=sys.stderr)
            for line in lines:
                print(f"  {line}", file=sys.stderr)
            return 1
        if f["status"] == "uploaded":
            if args.no_wait:
                print(f"{f['id']}: stored; validating on a worker (chatforge files list shows its status)")
                return 0
            f = wait_processed(srv, f["id"])
        if f["status"] == "error":
            print(f"error: the file was not accepted ({f['id']}):", file=sys.stderr)
            for line in split_problems(f.get("status_details") or ""):
                print(f"  {line}", file=sys.stderr)
            return 1
        print_report(f)
    elif args.files_cmd == "list":
        for f in srv.openai.files.list().data:
            d = f.model_dump()
            print(f"{d['id']}\t{d.get('kind') or '-'}\t{d.get('format') or '-'}\t{_fmt_int(d.get('n_examples'))}\t"
                  f"{d['filename']}")
    return 0


# -- jobs ---------------------------------------------------------------------------------------------

def parse_set(items: list[str]) -> dict[str, Any]:
    """["lora.r=8", "packing=false"] -> {"lora": {"r": 8}, "packing": False}; values are JSON if they parse."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ClientError(f"--set expects key=value, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ClientError(f"--set {key}: {p} is not a group")
        node[parts[-1]] = value
    return out


def build_job_request(args) -> dict[str, Any]:
    settings = parse_set(args.set or [])
    hyper = {k: v for k, v in (("n_epochs", args.n_epochs), ("batch_size", args.batch_size),
                               ("learning_rate_multiplier", args.learning_rate_multiplier)) if v is not None}
    if hyper:
        settings["hyperparameters"] = {**settings.get("hyperparameters", {}), **hyper}
    if args.adapter:
        settings["adapter"] = args.adapter
    if args.reward_model:
        settings["reward_model"] = args.reward_model
    body: dict[str, Any] = {"model": args.model, "training_file": args.training_file,
                            "method": {"type": args.method, args.method: settings}}
    for key in ("validation_file", "suffix", "seed"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    return body


def _progress(job: dict) -> str:
    if job.get("total_steps"):
        return f"{job.get('step') or 0}/{job['total_steps']}"
    return str(job.get("step") or "-")


def cmd_jobs(args) -> int:
    srv = _server(args)
    if args.jobs_cmd == "create":
        job = srv.request("POST", "/fine_tuning/jobs", json=build_job_request(args))
        print(f"created {job['id']} ({job['status']}): {job['method']['type']} on {job['model']}")
        return watch(srv, job["id"]) if args.watch else 0
    if args.jobs_cmd == "list":
        jobs = srv.request("GET", "/fine_tuning/jobs", params={"limit": args.limit})["data"]
        for j in jobs:
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(j["created_at"]))
            print(f"{j['id']}\t{j['status']}\t{(j.get('method') or {}).get('type', 'supervised')}\t{j['model']}\t"
                  f"{_progress(j)}\t{j.get('fine_tuned_model') or '-'}\t{created}")
        if not jobs:
            print("no jobs")
        return 0
    if args.jobs_cmd == "watch":
        return watch(srv, args.job_id)
    job = srv.request("POST", f"/fine_tuning/jobs/{args.job_id}/{args.jobs_cmd}")  # cancel / pause / resume
    print(f"{job['id']}: {job['status']}" + (f" ({job['requested']} requested)" if job.get("requested") else ""))
    return 0


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _bar(step: int, total: int | None, width: int = 20) -> str:
    if not total:
        return ""
    done = min(width, round(width * step / total))
    return f"[{'█' * done}{'░' * (width - done)}] {100 * step / total:3.0f}% "


def progress_line(data: dict, eta: float | None) -> str:
    """`step 12/20 [████░░] 60%  loss 1.2345  val 1.3012  305 tok/s  ETA 0:00:14  lr 1.20e-04`"""
    step, total = data.get("step"), data.get("total_steps")
    parts = [f"step {step}/{total or '?'}", _bar(step, total).rstrip()]
    loss = data.get("train_loss", data.get("policy_loss"))
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    if data.get("valid_loss") is not None:
        parts.append(f"val {data['valid_loss']:.4f}")
    if data.get("tokens_per_second") is not None:
        parts.append(f"{data['tokens_per_second']:.0f} tok/s")
    parts.append(f"ETA {_duration(eta)}" if eta is not None else "ETA -")
    if data.get("learning_rate") is not None:  # last: the first thing cut on a narrow terminal
        parts.append(f"lr {data['learning_rate']:.2e}")
    return "  ".join(p for p in parts if p)


def watch(srv: Server, job_id: str, out: TextIO = sys.stdout) -> int:
    """Follow a job's events until it stops; 0 when it succeeded, 1 otherwise."""
    live = out.isatty()
    job = srv.request("GET", f"/fine_tuning/jobs/{job_id}")
    fetched = time.monotonic()
    last_id, retries, dirty = None, 0, False

    def emit(line: str, progress: bool = False) -> None:
        nonlocal dirty
        if live:
            if progress:  # one terminal row, redrawn in place: a wrapped line could not be
                line = line[: shutil.get_terminal_size().columns - 1]
            out.write("\r\033[K" + line + ("" if progress else "\n"))
            dirty = progress
        else:
            out.write(line + "\n")
        out.flush()

    while True:
        try:
            for name, data in srv.events(job_id, after=last_id):
                if name == "done":
                    break
                last_id = data["id"]
                if data.get("type") == "metrics" and data.get("data", {}).get("step") is not None:
                    if time.monotonic() - fetched > 2:  # ETA and status come from the job row
                        job, fetched = srv.request("GET", f"/fine_tuning/jobs/{job_id}"), time.monotonic()
                    eta = job["estimated_finish"] - time.time() if job.get("estimated_finish") else None
                    emit(progress_line(data["data"], eta if job["status"] == "running" else None), progress=True)
                else:
                    emit(f"· {data['message']}")
        except (httpx.HTTPError, ClientError) as e:
            retries += 1
            if retries > 5:
                raise ClientError(f"lost the event stream: {e}") from None
            time.sleep(2)
            continue
        job = srv.request("GET", f"/fine_tuning/jobs/{job_id}")
        if job["status"] in TERMINAL or job["status"] == "paused":
            break
    if dirty:
        out.write("\n")
    result = f" -> {job['fine_tuned_model']}" if job.get("fine_tuned_model") else ""
    error = f": {job['error'].get('message')}" if job.get("error") and job["error"].get("message") else ""
    out.write(f"job {job_id} {job['status']}{result}{error}\n")
    out.flush()
    return 0 if job["status"] == "succeeded" else 1


# -- chat ---------------------------------------------------------------------------------------------

class ChatSession:
    """One conversation with a model: each ask() streams the reply and keeps both turns in `messages`."""

    def __init__(self, srv: Server, model: str, *, system: str | None = None, temperature: float = 0.7,
                 top_p: float = 1.0, max_tokens: int = 512) -> None:
        self.srv, self.model, self.system = srv, model, system
        self.sampling = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
        self.messages: list[dict[str, str]] = []
        self.last_usage: dict[str, int] | None = None
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def ask(self, text: str, out: TextIO = sys.stdout) -> str:
        """Send one user turn, write the reply to `out` as it streams, return it."""
        self.messages.append({"role": "user", "content": text})
        parts: list[str] = []
        try:
            stream = self.srv.openai.chat.completions.create(
                model=self.model, messages=self.messages, stream=True, stream_options={"include_usage": True},
                **self.sampling)
            for chunk in stream:
                if chunk.usage is not None:
                    self.last_usage = chunk.usage.model_dump()
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
                    out.write(parts[-1])
                    out.flush()
        except BaseException:
            self.messages.pop()  # the turn did not happen; the user may ask again
            raise
        finally:
            out.write("\n")
            out.flush()
        reply = "".join(parts)
        self.messages.append({"role": "assistant", "content": reply})
        return reply


def cmd_chat(args) -> int:
    chat = ChatSession(_server(args), args.model, system=args.system, temperature=args.temperature,
                       top_p=args.top_p, max_tokens=args.max_tokens)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Chatting with {args.model}. /exit quits, /reset starts over.")
    while True:
        try:
            text = input("you> " if interactive else "").strip()
        except EOFError:
            break
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            chat.reset()
            continue
        if interactive:
            sys.stdout.write(f"{args.model}> ")
        try:
            chat.ask(text)
        except _openai_errors() as e:
            print(f"error: {_openai_message(e)}", file=sys.stderr)
            if not interactive:
                return 1
    return 0


# -- argparse -----------------------------------------------------------------------------------------

def _run(fn):
    def wrapped(args) -> int:
        try:
            return fn(args)
        except ClientError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 130
        except BrokenPipeError:  # `chatforge ... | head`: stop quietly, as Unix tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
    return wrapped


def add_client_commands(sub) -> None:
    """Add files / jobs / chat to the `chatforge` subcommands."""
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--base-url", default=os.environ.get("CHATFORGE_BASE_URL", DEFAULT_BASE_URL),
                      help="server URL (env CHATFORGE_BASE_URL; default %(default)s)")
    conn.add_argument("--api-key", default=os.environ.get("CHATFORGE_API_KEY"),
                      help="API key (env CHATFORGE_API_KEY)")

    fp = sub.add_parser("files", help="upload and list training files on a server")
    fs = fp.add_subparsers(dest="files_cmd", required=True)
    fu = fs.add_parser("upload", parents=[conn], help="upload a dataset and print its validation report")
    fu.add_argument("path")
    fu.add_argument("--format", help="force a format instead of detecting it")
    fu.add_argument("--max-length", type=int, help="length for the over-length share (default 2048)")
    fu.add_argument("--part-size", type=int, default=64, metavar="MB",
                    help=f"files of {CHUNKED_FROM_MB} MB or more go up in parts of this size (default %(default)s)")
    fu.add_argument("--no-wait", action="store_true", help="do not wait for a large file's background validation")
    fs.add_parser("list", parents=[conn], help="list the project's files")
    fp.set_defaults(fn=_run(cmd_files))

    jp = sub.add_parser("jobs", help="create, list and watch fine-tuning jobs on a server")
    js = jp.add_subparsers(dest="jobs_cmd", required=True)
    jc = js.add_parser("create", parents=[conn], help="start a fine-tuning job")
    jc.add_argument("--model", required=True, help="base or fine-tuned model id")
    jc.add_argument("--training-file", required=True, help="file id (file-...)")
    jc.add_argument("--validation-file")
    jc.add_argument("--method", default="supervised",
                    choices=["supervised", "dpo", "reward_model", "ppo", "rloo", "grpo"])
    jc.add_argument("--n-epochs", type=int)
    jc.add_argument("--batch-size", type=int)
    jc.add_argument("--learning-rate-multiplier", type=float)
    jc.add_argument("--adapter", choices=["lora", "qlora", "full"])
    jc.add_argument("--reward-model", help="reward model id (ppo, rloo, grpo)")
    jc.add_argument("--suffix")
    jc.add_argument("--seed", type=int)
    jc.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="any method setting, dotted for groups: --set lora.r=8 --set max_steps=20")
    jc.add_argument("--watch", action="store_true", help="then follow it like `jobs watch`")
    jl = js.add_parser("list", parents=[conn], help="list the project's jobs, newest first")
    jl.add_argument("--limit", type=int, default=20)
    jw = js.add_parser("watch", parents=[conn], help="live progress until the job ends (exit 0 if it succeeded)")
    jw.add_argument("job_id")
    for verb in ("cancel", "pause", "resume"):
        js.add_parser(verb, parents=[conn], help=f"{verb} a job").add_argument("job_id")
    jp.set_defaults(fn=_run(cmd_jobs))

    cp = sub.add_parser("chat", parents=[conn], help="interactive streaming chat with a model (/exit quits)")
    cp.add_argument("model")
    cp.add_argument("--system", help="system prompt")
    cp.add_argument("--temperature", type=float, default=0.7)
    cp.add_argument("--top-p", type=float, default=1.0)
    cp.add_argument("--max-tokens", type=int, default=512)
    cp.set_defaults(fn=_run(cmd_chat))
