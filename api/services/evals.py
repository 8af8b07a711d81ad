"""The logic behind /v1/evals: check eval and run bodies (every error names its field), write the rows,
queue runs for the worker, and render OpenAI's eval, run and output-item objects.

Sampling and grading happen in the worker (workers/evals.py); this never loads a model. Items are
parsed and checked here already, so a bad item is a 400 at once rather than a failed run later.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from api.errors import BadRequest, NotFound
from chatforge.db.models import Eval, EvalOutputItem, EvalRun, Project, StoredFile, new_id, utcnow
from chatforge.queue import RUN_EVAL, enqueue_after_commit
from chatforge.routing import is_reward_model
from chatforge.storage import Storage
from ml.evals import EvalItem, EvalSpecError, check_item, input_messages, parse_items, validate_criteria
from ml.evals.criteria import is_pairwise
from ml.evals.items import items_from_content, validate_template

MAX_INLINE_ITEMS = 10_000
RUN_STATUSES = ("queued", "in_progress", "completed", "canceled", "failed")


def _bad(e: EvalSpecError, prefix: str = "") -> BadRequest:
    param = f"{prefix}.{e.param}" if prefix and not e.param.startswith(prefix) else e.param
    return BadRequest(e.message if e.message.startswith(param) else f"{param}: {e.message}", param=param,
                      code="invalid_value")


def check_metadata(metadata: Any, param: str = "metadata") -> dict | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > 16:
        raise BadRequest(f"{param} must be an object with at most 16 keys", param=param)
    for k, v in metadata.items():
        if len(k) > 64 or not isinstance(v, str) or len(v) > 512:
            raise BadRequest(f"{param}.{k}: keys are at most 64 characters, values strings of at most 512",
                             param=f"{param}.{k}")
    return metadata


# ---- evals -------------------------------------------------------------------------------------------


def _data_source_config(cfg: Any) -> dict:
    if not isinstance(cfg, dict):
        raise BadRequest("data_source_config must be an object", param="data_source_config")
    kind = cfg.get("type")
    if kind in ("logs", "stored_completions"):
        raise BadRequest(f"data_source_config.type {kind!r} is not supported: ChatForge does not store chat "
                         "completions. Use {\"type\": \"custom\", \"item_schema\": {...}} with a file of items.",
                         param="data_source_config.type", code="unsupported_data_source")
    if kind != "custom":
        raise BadRequest("data_source_config.type must be \"custom\"", param="data_source_config.type")
    schema = cfg.get("item_schema")
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise BadRequest("data_source_config.item_schema must be a JSON schema of type object",
                         param="data_source_config.item_schema")
    with_sample = cfg.get("include_sample_schema", False)
    if not isinstance(with_sample, bool):
        raise BadRequest("data_source_config.include_sample_schema must be a boolean",
                         param="data_source_config.include_sample_schema")
    properties: dict[str, Any] = {"item": schema}
    required = ["item"]
    if with_sample:
        properties["sample"] = {"type": "object", "properties": {
            "model": {"type": "string"}, "choices": {"type": "array"}, "output_text": {"type": "string"},
            "output_json": {"type": "object"}}, "required": ["model", "choices"]}
        required.append("sample")
    return {"type": "custom", "schema": {"type": "object", "properties": properties, "required": required},
            "include_sample_schema": with_sample}


def _chat_model(session: Session, project: Project, model_id: Any, param: str):
    from chatforge.db.models import Model

    if not isinstance(model_id, str) or not model_id:
        raise BadRequest(f"{param} must be a model id", param=param)
    row = session.get(Model, model_id)
    if row is None or (row.project_id is not None and row.project_id != project.id):
        raise NotFound(f"The model '{model_id}' does not exist or you do not have access to it.", param=param,
                       code="model_not_found")
    return row


def create_eval(session: Session, project: Project, body: dict) -> Eval:
    cfg = _data_source_config(body.get("data_source_config"))
    try:
        criteria = validate_criteria(body.get("testing_criteria"))
    except EvalSpecError as e:
        raise _bad(e) from None
    for i, c in enumerate(criteria):
        if c["type"] == "reward_model":
            row = _chat_model(session, project, c["model"], f"testing_criteria[{i}].model")
            if not is_reward_model(row):
                raise BadRequest(f"testing_criteria[{i}].model: {c['model']} is not a reward model",
                                 param=f"testing_criteria[{i}].model", code="not_a_reward_model")
    name = body.get("name") or ""
    if not isinstance(name, str) or len(name) > 255:
        raise BadRequest("name must be a string of at most 255 characters", param="name")
    ev = Eval(project_id=project.id, name=name, data_source_config=cfg, testing_criteria=criteria,
              user_metadata=check_metadata(body.get("metadata")))
    session.add(ev)
    session.flush()
    return ev


def owned_eval(session: Session, project: Project, eval_id: str) -> Eval:
    ev = session.get(Eval, eval_id)
    if ev is None or ev.project_id != project.id:
        raise NotFound(f"No such eval: {eval_id}", param="eval_id", code="eval_not_found")
    return ev


def delete_eval(session: Session, ev: Eval) -> None:
    run_ids = list(session.scalars(select(EvalRun.id).where(EvalRun.eval_id == ev.id)))
    if run_ids:
        session.execute(delete(EvalOutputItem).where(EvalOutputItem.run_id.in_(run_ids)))
        session.execute(delete(EvalRun).where(EvalRun.id.in_(run_ids)))
    session.delete(ev)


def eval_object(ev: Eval) -> dict:
    cfg = {k: v for k, v in ev.data_source_config.items() if k != "include_sample_schema"}
    return {"id": ev.id, "object": "eval", "created_at": int(ev.created_at.timestamp()), "name": ev.name,
            "data_source_config": cfg, "testing_criteria": ev.testing_criteria, "metadata": ev.user_metadata}


# ---- runs --------------------------------------------------------------------------------------------


def _items(session: Session, storage: Storage, project: Project, source: Any) -> list[EvalItem]:
    if not isinstance(source, dict):
        raise BadRequest("data_source.source must be an object", param="data_source.source")
    kind = source.get("type")
    try:
        if kind == "file_content":
            content = source.get("content")
            if isinstance(content, list) and len(content) > MAX_INLINE_ITEMS:
                raise BadRequest(f"data_source.source.content has more than {MAX_INLINE_ITEMS} items; upload a "
                                 "file with purpose \"evals\"", param="data_source.source.content")
            return items_from_content(content, "data_source.source.content")
        if kind == "file_id":
            f = session.get(StoredFile, source.get("id"))
            if f is None or f.project_id != project.id:
                raise NotFound(f"No such File object: {source.get('id')}", param="data_source.source.id",
                               code="file_not_found")
            with storage.open(f.storage_key) as fh:
                return parse_items(fh)
    except EvalSpecError as e:
        prefix = "data_source.source" if e.param == "source" else ""
        raise BadRequest(f"{prefix or e.param}: {e.message}", param=prefix or e.param, code="invalid_value") from None
    if kind in ("stored_completions", "responses"):
        raise BadRequest(f"data_source.source.type {kind!r} is not supported: ChatForge does not store "
                         "completions; use file_id or file_content", param="data_source.source.type",
                         code="unsupported_data_source")
    raise BadRequest("data_source.source.type must be file_id or file_content", param="data_source.source.type")


def _sampling_params(sp: Any) -> dict:
    if sp is None:
        return {}
    if not isinstance(sp, dict):
        raise BadRequest("data_source.sampling_params must be an object", param="data_source.sampling_params")
    at = "data_source.sampling_params"
    for key in ("response_format", "tools", "reasoning_effort"):
        if sp.get(key) is not None and not (key == "response_format" and sp[key].get("type") == "text"):
            raise BadRequest(f"{at}.{key} is not supported in eval runs (sampling_params takes temperature, "
                             "top_p, max_completion_tokens and seed)", param=f"{at}.{key}",
                             code="unsupported_parameter")
    checks = {"temperature": (0.0, 2.0, (int, float)), "top_p": (1e-9, 1.0, (int, float)),
              "max_completion_tokens": (1, 32_768, int), "seed": (0, 2**31 - 1, int)}
    out = {}
    for key, (lo, hi, kinds) in checks.items():
        v = sp.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, kinds) or not lo <= v <= hi:
            raise BadRequest(f"{at}.{key} must be a number between {lo} and {hi}", param=f"{at}.{key}")
        out[key] = v
    return out


def create_run(session: Session, storage: Storage, project: Project, ev: Eval, body: dict) -> EvalRun:
    ds = body.get("data_source")
    if not isinstance(ds, dict):
        raise BadRequest("data_source must be an object", param="data_source")
    kind = ds.get("type")
    if kind == "responses":
        raise BadRequest("data_source.type \"responses\" is not supported; use \"completions\" (ChatForge "
                         "samples through its chat engine) or \"jsonl\"", param="data_source.type",
                         code="unsupported_data_source")
    if kind not in ("completions", "jsonl"):
        raise BadRequest("data_source.type must be completions or jsonl", param="data_source.type")
    criteria = ev.testing_criteria
    items = _items(session, storage, project, ds.get("source"))
    schema = ev.data_source_config.get("schema", {}).get("properties", {}).get("item")
    model, stored = "", {"type": kind, "source": ds["source"]}
    try:
        for it in items:
            check_item(it.item, schema, f"item {it.index}")
    except EvalSpecError as e:
        raise BadRequest(f"data_source.source: {e.message}", param="data_source.source", code="invalid_value") from None
    if kind == "completions":
        model = ds.get("model")
        for param, model_id in (("data_source.model", model), ("data_source.baseline_model", ds.get("baseline_model"))):
            if param.endswith("baseline_model") and model_id is None:
                continue
            row = _chat_model(session, project, model_id, param)
            if is_reward_model(row):
                raise BadRequest(f"{param}: {model_id} is a reward model; it cannot generate answers", param=param,
                                 code="not_a_chat_model")
        spec = ds.get("input_messages")
        at = "data_source.input_messages"
        if not isinstance(spec, dict) or spec.get("type") not in ("template", "item_reference"):
            raise BadRequest(f"{at} must be {{\"type\": \"template\", \"template\": [...]}} or "
                             "{\"type\": \"item_reference\", \"item_reference\": \"item.<field>\"}", param=at)
        try:
            if spec["type"] == "template":
                validate_template(spec.get("template"), f"{at}.template")
            elif not isinstance(spec.get("item_reference"), str):
                raise EvalSpecError(f"{at}.item_reference must be a string", f"{at}.item_reference")
            for it in items:
                input_messages(spec, it)
        except EvalSpecError as e:
            param = e.param if e.param.startswith(at) else at
            raise BadRequest(e.message if e.message.startswith(at) else f"{param}: {e.message}", param=param,
                             code="invalid_value") from None
        stored.update(model=model, input_messages=spec, sampling_params=_sampling_params(ds.get("sampling_params")))
        if ds.get("baseline_model") is not None:
            stored["baseline_model"] = ds["baseline_model"]
        if is_pairwise(criteria) and "baseline_model" not in stored:
            raise BadRequest("data_source.baseline_model is required: the eval has a pairwise reward_model "
                             "criterion", param="data_source.baseline_model")
    else:
        if is_pairwise(criteria):
            raise BadRequest("pairwise reward_model criteria need a completions data source with a baseline_model",
                             param="data_source.type")
        for it in items:
            if not isinstance((it.sample or {}).get("output_text"), str):
                raise BadRequest(f"data_source.source: item {it.index} has no sample.output_text (jsonl runs grade "
                                 "answers given in the file)", param="data_source.source")
    name = body.get("name") or f"{model or 'jsonl'} run"
    if not isinstance(name, str):
        raise BadRequest("name must be a string", param="name")
    run = EvalRun(id=new_id("evalrun_"), eval_id=ev.id, project_id=project.id, name=name, model=model or "",
                  data_source=stored, user_metadata=check_metadata(body.get("metadata")), status="queued",
                  total_items=len(items), requires="cpu", enqueued_at=utcnow())
    session.add(run)
    session.flush()
    enqueue_after_commit(session, run.id, "cpu", RUN_EVAL)
    return run


def owned_run(session: Session, project: Project, eval_id: str, run_id: str) -> EvalRun:
    owned_eval(session, project, eval_id)
    run = session.get(EvalRun, run_id)
    if run is None or run.eval_id != eval_id or run.project_id != project.id:
        raise NotFound(f"No such eval run: {run_id}", param="run_id", code="run_not_found")
    return run


def cancel_run(run: EvalRun) -> None:
    if run.status == "queued":
        run.status, run.finished_at = "canceled", utcnow()
    elif run.status == "in_progress":
        run.requested = "cancel"  # the worker stops before its next batch


def delete_run(session: Session, run: EvalRun) -> None:
    session.execute(delete(EvalOutputItem).where(EvalOutputItem.run_id == run.id))
    session.delete(run)


def run_object(run: EvalRun, base_url: str) -> dict:
    summary = run.summary or {}
    counts = dict(summary.get("result_counts") or {"passed": 0, "failed": 0, "errored": 0, "total": 0})
    counts["total"] = max(counts.get("total", 0), run.total_items or 0)
    return {
        "id": run.id, "object": "eval.run", "created_at": int(run.created_at.timestamp()),
        "eval_id": run.eval_id, "name": run.name, "model": run.model, "status": run.status,
        "data_source": run.data_source, "metadata": run.user_metadata, "error": run.error,
        "result_counts": counts,
        "per_testing_criteria_results": summary.get("per_testing_criteria_results") or [],
        "per_model_usage": summary.get("per_model_usage") or [],
        "report_url": f"{base_url.rstrip('/')}/#/evals/{run.eval_id}/runs/{run.id}",
        # ChatForge additions
        "progress": {"completed": run.completed_items, "total": run.total_items},
        "pairwise": summary.get("pairwise") or None,
        "requested": run.requested, "attempts": run.attempts,
        "started_at": int(run.started_at.timestamp()) if run.started_at else None,
        "finished_at": int(run.finished_at.timestamp()) if run.finished_at else None,
    }


def output_item_object(o: EvalOutputItem) -> dict:
    sample = {k: v for k, v in o.sample.items() if k != "output_text"}
    out = {"id": o.id, "object": "eval.run.output_item", "created_at": int(o.created_at.timestamp()),
           "eval_id": o.eval_id, "run_id": o.run_id, "datasource_item_id": o.datasource_item_id,
           "datasource_item": o.datasource_item, "results": o.results, "sample": sample, "status": o.status}
    if o.baseline_sample is not None:
        out["baseline_sample"] = {k: v for k, v in o.baseline_sample.items() if k != "output_text"}
    return out


def store_eval_file(session: Session, storage: Storage, project: Project, file_id: str, raw_key: str,
                    filename: str, nbytes: int) -> StoredFile:
    """An uploaded items file (purpose "evals"): JSONL of {"item": {...}}, checked and kept as uploaded."""
    try:
        with storage.open(raw_key) as fh:
            items = parse_items(fh)
    except EvalSpecError as e:
        raise BadRequest(f"{filename}: {e.message}", param="file", code="invalid_file") from None
    row = StoredFile(id=file_id, project_id=project.id, filename=filename, purpose="evals", bytes=nbytes,
                     status="processed", format="jsonl", kind="eval_items", n_examples=len(items),
                     report=None, storage_key=raw_key, canonical_key=None)
    session.add(row)
    session.flush()
    return row
