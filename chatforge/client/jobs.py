"""`chatforge jobs create | list | watch | cancel | pause | resume`: fine-tuning jobs on a server. The request
body is OpenAI's (`method.<type>` holds the settings, `--set` reaches any of them by dotted name); the
server validates it. Following a job lives in chatforge.client.watch.
"""

from __future__ import annotations

import json
import time
from enum import Enum
from typing import Annotated, Any

import typer

from chatforge.client.output import client_command, print_rows, stdout
from chatforge.client.server import DEFAULT_BASE_URL, ApiKey, BaseUrl, ClientError, connect
from chatforge.client.watch import watch

app = typer.Typer(help="Create, list and watch fine-tuning jobs on a server.", no_args_is_help=True)

JobId = Annotated[str, typer.Argument(metavar="JOB_ID", help="ftjob-...")]


class Method(str, Enum):
    supervised = "supervised"
    dpo = "dpo"
    reward_model = "reward_model"
    ppo = "ppo"
    rloo = "rloo"
    grpo = "grpo"


class Adapter(str, Enum):
    lora = "lora"
    qlora = "qlora"
    full = "full"


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


def build_job_request(model: str, training_file: str, method: str = "supervised", *, sets: list[str] | None = None,
                      hyperparameters: dict[str, Any] | None = None, adapter: str | None = None,
                      reward_model: str | None = None, **top: Any) -> dict[str, Any]:
    """The POST /v1/fine_tuning/jobs body; `top` holds validation_file, suffix, seed (None ones are left out)."""
    settings = parse_set(sets or [])
    hyper = {k: v for k, v in (hyperparameters or {}).items() if v is not None}
    if hyper:
        settings["hyperparameters"] = {**settings.get("hyperparameters", {}), **hyper}
    if adapter:
        settings["adapter"] = adapter
    if reward_model:
        settings["reward_model"] = reward_model
    body: dict[str, Any] = {"model": model, "training_file": training_file,
                            "method": {"type": method, method: settings}}
    body.update({k: v for k, v in top.items() if v is not None})
    return body


@app.command()
@client_command
def create(
    model: Annotated[str, typer.Option(help="base or fine-tuned model id")],
    training_file: Annotated[str, typer.Option(help="file id (file-...)")],
    validation_file: Annotated[str | None, typer.Option(help="file id (file-...)")] = None,
    method: Annotated[Method, typer.Option()] = Method.supervised,
    n_epochs: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    learning_rate_multiplier: Annotated[float | None, typer.Option()] = None,
    adapter: Annotated[Adapter | None, typer.Option()] = None,
    reward_model: Annotated[str | None, typer.Option(help="reward model id (ppo, rloo, grpo)")] = None,
    suffix: Annotated[str | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help=(
        "any method setting, dotted for groups: --set lora.r=8 --set max_steps=20"))] = None,
    watch_: Annotated[bool, typer.Option("--watch", help="then follow it like `jobs watch`")] = False,
    base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None,
) -> int:
    """Start a fine-tuning job."""
    srv = connect(base_url, api_key)
    body = build_job_request(
        model, training_file, method.value, sets=set_, adapter=adapter.value if adapter else None,
        reward_model=reward_model, validation_file=validation_file, suffix=suffix, seed=seed,
        hyperparameters={"n_epochs": n_epochs, "batch_size": batch_size,
                         "learning_rate_multiplier": learning_rate_multiplier})
    job = srv.request("POST", "/fine_tuning/jobs", json=body)
    print(f"created {job['id']} ({job['status']}): {job['method']['type']} on {job['model']}", flush=True)
    return watch(srv, job["id"]) if watch_ else 0


def _progress(job: dict) -> str:
    if job.get("total_steps"):
        return f"{job.get('step') or 0}/{job['total_steps']}"
    return str(job.get("step") or "-")


@app.command("list")
@client_command
def list_jobs(limit: Annotated[int, typer.Option()] = 20,
              base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None) -> int:
    """List the project's jobs, newest first (a table on a terminal, tab-separated when piped)."""
    jobs = connect(base_url, api_key).request("GET", "/fine_tuning/jobs", params={"limit": limit})["data"]
    if not jobs:
        print("no jobs")
        return 0
    rows = [[j["id"], j["status"], (j.get("method") or {}).get("type", "supervised"), j["model"], _progress(j),
             j.get("fine_tuned_model") or "-", time.strftime("%Y-%m-%d %H:%M", time.localtime(j["created_at"]))]
            for j in jobs]
    print_rows(["ID", "STATUS", "METHOD", "MODEL", "STEP", "FINE-TUNED MODEL", "CREATED"], rows, stdout())
    return 0


@app.command("watch")
@client_command
def watch_job(job_id: JobId, base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None) -> int:
    """Live progress until the job ends (exit 0 if it succeeded)."""
    return watch(connect(base_url, api_key), job_id)


def _control(verb: str):
    @client_command
    def command(job_id: JobId, base_url: BaseUrl = DEFAULT_BASE_URL, api_key: ApiKey = None) -> int:
        job = connect(base_url, api_key).request("POST", f"/fine_tuning/jobs/{job_id}/{verb}")
        print(f"{job['id']}: {job['status']}" + (f" ({job['requested']} requested)" if job.get("requested") else ""))
        return 0

    command.__doc__ = f"{verb.capitalize()} a job."
    return command


for _verb in ("cancel", "pause", "resume"):
    app.command(_verb)(_control(_verb))
