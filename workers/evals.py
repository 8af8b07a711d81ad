"""Runs one eval run: claim its lease, sample the model on every item not yet graded, grade, store each
output item, and keep the run's progress and summary current. Thin: the graders are ml.evals, the
engines are workers.eval_sampling.

Safe to run twice and to resume: items already stored for the run are never redone (a unique
(run, item) key backs that up), sampling seeds are per item (seed + item index), so a resumed run
samples what the first attempt would have. A worker killed mid-run loses its lease; the reconciler
requeues the run. Bad input (a missing field, a model deleted meanwhile) fails the run, never retries.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Any, Self

from sqlalchemy import select

from chatforge.db.models import Eval, EvalOutputItem, EvalRun, StoredFile, utcnow
from chatforge.db.session import session_scope
from chatforge.settings import Settings
from chatforge.storage import get_storage
from ml.evals import (
    EvalItem,
    EvalSpecError,
    GradeRow,
    grade_rows,
    input_messages,
    pairwise_summary,
    parse_items,
)
from ml.evals.items import items_from_content
from workers import lease
from workers.capabilities import worker_id
from workers.eval_sampling import SamplingParams, get_sampler

log = logging.getLogger("chatforge.worker")
SUMMARY_EVERY_S = 2.0  # how often a running run's counts are refreshed (progress is every batch)


def load_items(project_id: str, data_source: dict[str, Any]) -> list[EvalItem]:
    source = data_source.get("source") or {}
    if source.get("type") == "file_content":
        return items_from_content(source.get("content"), "data_source.source.content")
    with session_scope() as s:
        f = s.get(StoredFile, source.get("id"))
        if f is None or f.project_id != project_id:
            raise EvalSpecError(f"file {source.get('id')!r} no longer exists", "data_source.source.id")
        key = f.storage_key
    with get_storage().open(key) as fh:
        return parse_items(fh)


def _item_status(sample: dict, results: list[dict]) -> str:
    if sample.get("error") or any(r.get("error") for r in results):
        return "error"
    return "pass" if all(r["passed"] for r in results) else "fail"


def summarize(session, run: EvalRun, criteria: list[dict]) -> dict[str, Any]:
    """result_counts, per_testing_criteria_results, per_model_usage and pairwise, from stored items."""
    rows = session.execute(select(EvalOutputItem.status, EvalOutputItem.results, EvalOutputItem.sample,
                                  EvalOutputItem.baseline_sample).where(EvalOutputItem.run_id == run.id)).all()
    counts = {"total": len(rows), "passed": 0, "failed": 0, "errored": 0}
    per = {c["name"]: {"testing_criteria": c["name"], "passed": 0, "failed": 0} for c in criteria}
    usage: dict[str, dict] = defaultdict(lambda: {"invocation_count": 0, "prompt_tokens": 0,
                                                  "completion_tokens": 0, "total_tokens": 0, "cached_tokens": 0})
    outcomes: dict[str, list[str]] = defaultdict(list)
    for status, results, sample, baseline in rows:
        counts[{"pass": "passed", "fail": "failed", "error": "errored"}[status]] += 1
        for r in results:
            if r["name"] in per and not r.get("error"):
                per[r["name"]]["passed" if r["passed"] else "failed"] += 1
            if r.get("outcome"):
                outcomes[r["name"]].append(r["outcome"])
        for s in (sample, baseline):
            if s and s.get("model") and s.get("usage"):
                u = usage[s["model"]]
                u["invocation_count"] += 1
                for k in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens"):
                    u[k] += s["usage"].get(k, 0)
    ds = run.data_source
    pairwise = [{"testing_criteria": c["name"], "judge": c["model"], "model": run.model,
                 "baseline_model": ds.get("baseline_model"), **pairwise_summary(outcomes[c["name"]]).to_dict()}
                for c in criteria if c["type"] == "reward_model" and c.get("mode") == "pairwise"]
    return {"result_counts": counts, "per_testing_criteria_results": list(per.values()),
            "per_model_usage": [{"model_name": m, **u} for m, u in usage.items()], "pairwise": pairwise}


class _Heartbeat:
    """Renews the run's lease every lease/4 seconds; `lost` is set if another worker took it."""

    def __init__(self, run_id: str, owner: str, lease_s: int) -> None:
        self.run_id, self.owner, self.lease_s = run_id, owner, lease_s
        self.lost, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{run_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(max(1.0, self.lease_s / 4)):
            try:
                with session_scope() as s:
                    if not lease.renew(s, self.run_id, self.owner, self.lease_s, table=EvalRun):
                        self.lost.set()
                        return
            except Exception:
                log.warning("could not renew the lease on %s", self.run_id, exc_info=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_eval_run(run_id: str, settings: Settings) -> str:
    owner = worker_id()
    with session_scope() as s:
        if not lease.claim(s, run_id, owner, settings.job_lease_seconds, table=EvalRun):
            return "not claimed (another worker holds it)"
        run = s.get(EvalRun, run_id)
        if run.attempts > settings.max_job_attempts:
            run.status, run.finished_at = "failed", utcnow()
            run.error = {"code": "worker_crashed",
                         "message": f"The eval run's worker crashed {run.attempts - 1} times; giving up."}
            lease.release(s, run_id, owner, table=EvalRun)
            return "failed (too many attempts)"
        if run.requested == "cancel":
            run.status, run.finished_at, run.requested = "canceled", utcnow(), None
            lease.release(s, run_id, owner, table=EvalRun)
            return "canceled"
        run.status = "in_progress"
        run.started_at = run.started_at or utcnow()
    try:
        with _Heartbeat(run_id, owner, settings.job_lease_seconds) as beat:
            outcome = _execute(run_id, settings, beat)
    except EvalSpecError as e:
        outcome = _fail(run_id, "invalid_data_source", f"{e.param}: {e.message}")
    except Exception as e:  # a bug or a broken model folder: fail visibly rather than retry forever
        log.exception("eval run %s failed", run_id)
        outcome = _fail(run_id, "internal_error", f"{type(e).__name__}: {e}")
    with session_scope() as s:
        lease.release(s, run_id, owner, table=EvalRun)
    return outcome


def _fail(run_id: str, code: str, message: str) -> str:
    with session_scope() as s:
        run = s.get(EvalRun, run_id)
        if run is not None and run.status == "in_progress":
            run.status, run.finished_at, run.error = "failed", utcnow(), {"code": code, "message": message}
    return f"failed ({code})"


def _execute(run_id: str, settings: Settings, beat: _Heartbeat) -> str:
    with session_scope() as s:
        run = s.get(EvalRun, run_id)
        ev = s.get(Eval, run.eval_id)
        criteria, project_id, ds = list(ev.testing_criteria), run.project_id, dict(run.data_source)
        eval_id, model, baseline = ev.id, run.model, ds.get("baseline_model")
        done = set(s.scalars(select(EvalOutputItem.datasource_item_id).where(EvalOutputItem.run_id == run_id)))
    items = load_items(project_id, ds)
    with session_scope() as s:
        s.get(EvalRun, run_id).total_items = len(items)
    pending = [it for it in items if it.index not in done]
    sampler = get_sampler(settings, get_storage())
    params = SamplingParams.from_dict(ds.get("sampling_params"))
    batch_size = max(1, 2 * settings.serve_max_batch)
    summarized = 0.0
    for start in range(0, len(pending), batch_size):
        if beat.lost.is_set():
            return "lease lost"
        with session_scope() as s:
            run = s.get(EvalRun, run_id)
            if run is None:
                return "deleted"
            if run.requested == "cancel":
                run.status, run.finished_at, run.requested = "canceled", utcnow(), None
                return "canceled"
        batch = pending[start:start + batch_size]
        stored = _grade_batch(batch, ds, criteria, model, baseline, params, sampler)
        with session_scope() as s:
            run = s.get(EvalRun, run_id)
            if run is None:
                return "deleted"
            for it, sample, base, results in stored:
                s.add(EvalOutputItem(run_id=run_id, eval_id=eval_id, datasource_item_id=it.index,
                                     datasource_item=it.item, sample=sample, baseline_sample=base,
                                     results=results, status=_item_status(sample, results)))
            s.flush()
            run.completed_items = len(done) + start + len(batch)
            if time.monotonic() - summarized >= SUMMARY_EVERY_S:  # re-reads every stored item: throttled
                run.summary, summarized = summarize(s, run, criteria), time.monotonic()
    with session_scope() as s:
        run = s.get(EvalRun, run_id)
        if run is None:
            return "deleted"
        run.summary = summarize(s, run, criteria)
        run.completed_items = run.summary["result_counts"]["total"]
        run.status, run.finished_at = "completed", utcnow()
    return "completed"


def _grade_batch(batch: list[EvalItem], ds: dict, criteria: list[dict], model: str, baseline: str | None,
                 params: SamplingParams, sampler) -> list[tuple[EvalItem, dict, dict | None, list[dict]]]:
    sampling = {"seed": params.seed, "temperature": params.temperature, "top_p": params.top_p,
                "max_completion_tokens": params.max_completion_tokens}
    if ds["type"] == "jsonl":
        samples = [{"input": [], "output": [{"role": "assistant", "content": (it.sample or {}).get("output_text", "")}],
                    "output_text": (it.sample or {}).get("output_text", ""), "model": None, "error": None,
                    "finish_reason": "stop", "usage": None, **sampling} for it in batch]
        bases: list[dict | None] = [None] * len(batch)
    else:
        convs = [input_messages(ds["input_messages"], it) for it in batch]
        seeds = [params.seed + it.index for it in batch]

        def as_samples(name: str) -> list[dict]:
            answers = sampler.sample(name, convs, params, seeds)
            return [{"input": conv, "output": [{"role": "assistant", "content": a["output_text"]}],
                     "model": name, **a, **sampling, "seed": seed}  # the seed this item was sampled with
                    for conv, a, seed in zip(convs, answers, seeds)]

        samples = as_samples(model)
        bases = as_samples(baseline) if baseline else [None] * len(batch)
    ok = [i for i, smp in enumerate(samples) if not smp.get("error") and not (bases[i] or {}).get("error")]
    rows = [GradeRow(batch[i].item, samples[i], bases[i]) for i in ok]
    graded = grade_rows(criteria, rows, sampler.reward_scores) if rows else []
    results: list[list[dict]] = [[] for _ in batch]
    for i, res in zip(ok, graded):
        results[i] = [r.to_dict() for r in res]
    return [(it, samples[i], bases[i], results[i]) for i, it in enumerate(batch)]
