"""/v1/evals: OpenAI's Evals API (evals, runs, output items), so `client.evals.*` works unmodified.

Parses and authorises; api.services.evals does the work, the worker samples and grades. Bodies are
taken as JSON objects and checked field by field, so a bad one is a 400 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request
from sqlalchemy import select

from api.deps import ProjectDep, SessionDep, StorageDep
from api.errors import BadRequest
from api.pagination import paginate
from api.services import evals as svc
from chatforge.db.models import Eval, EvalOutputItem, EvalRun

router = APIRouter(prefix="/v1", tags=["evals"])
JSONBody = Annotated[dict[str, Any], Body()]
Order = Literal["asc", "desc"]


def _base(request: Request) -> str:
    return str(request.base_url)


@router.post("/evals")
def create_eval(body: JSONBody, session: SessionDep, project: ProjectDep) -> dict:
    return svc.eval_object(svc.create_eval(session, project, body))


@router.get("/evals")
def list_evals(session: SessionDep, project: ProjectDep, after: str | None = None,
               limit: Annotated[int, Query()] = 20, order: Order = "asc",
               order_by: Literal["created_at", "updated_at"] = "created_at") -> dict:
    q = select(Eval).where(Eval.project_id == project.id)
    if after is not None:
        svc.owned_eval(session, project, after)
    return paginate(session, q, Eval, after, limit, svc.eval_object, newest_first=order == "desc")


@router.get("/evals/{eval_id}")
def get_eval(eval_id: str, session: SessionDep, project: ProjectDep) -> dict:
    return svc.eval_object(svc.owned_eval(session, project, eval_id))


@router.post("/evals/{eval_id}")
def update_eval(eval_id: str, body: JSONBody, session: SessionDep, project: ProjectDep) -> dict:
    ev = svc.owned_eval(session, project, eval_id)
    unknown = set(body) - {"name", "metadata"}
    if unknown:
        field = min(unknown)
        raise BadRequest(f"{field}: only name and metadata can be updated", param=field)
    if body.get("name") is not None:
        if not isinstance(body["name"], str):
            raise BadRequest("name must be a string", param="name")
        ev.name = body["name"]
    if "metadata" in body:
        ev.user_metadata = svc.check_metadata(body["metadata"])
    return svc.eval_object(ev)


@router.delete("/evals/{eval_id}")
def delete_eval(eval_id: str, session: SessionDep, project: ProjectDep) -> dict:
    svc.delete_eval(session, svc.owned_eval(session, project, eval_id))
    return {"object": "eval.deleted", "deleted": True, "eval_id": eval_id}


@router.post("/evals/{eval_id}/runs")
def create_run(eval_id: str, body: JSONBody, request: Request, session: SessionDep, project: ProjectDep,
               storage: StorageDep) -> dict:
    ev = svc.owned_eval(session, project, eval_id)
    return svc.run_object(svc.create_run(session, storage, project, ev, body), _base(request))


@router.get("/evals/{eval_id}/runs")
def list_runs(eval_id: str, request: Request, session: SessionDep, project: ProjectDep, after: str | None = None,
              limit: Annotated[int, Query()] = 20, order: Order = "asc", status: str | None = None) -> dict:
    svc.owned_eval(session, project, eval_id)
    q = select(EvalRun).where(EvalRun.eval_id == eval_id, EvalRun.project_id == project.id)
    if status is not None:
        if status not in svc.RUN_STATUSES:
            raise BadRequest(f"status must be one of {', '.join(svc.RUN_STATUSES)}", param="status")
        q = q.where(EvalRun.status == status)
    if after is not None:
        svc.owned_run(session, project, eval_id, after)
    base = _base(request)
    return paginate(session, q, EvalRun, after, limit, lambda r: svc.run_object(r, base),
                    newest_first=order == "desc")


@router.get("/evals/{eval_id}/runs/{run_id}")
def get_run(eval_id: str, run_id: str, request: Request, session: SessionDep, project: ProjectDep) -> dict:
    return svc.run_object(svc.owned_run(session, project, eval_id, run_id), _base(request))


@router.post("/evals/{eval_id}/runs/{run_id}/cancel")
@router.post("/evals/{eval_id}/runs/{run_id}")  # the SDK's cancel posts here
def cancel_run(eval_id: str, run_id: str, request: Request, session: SessionDep, project: ProjectDep) -> dict:
    run = svc.owned_run(session, project, eval_id, run_id)
    svc.cancel_run(run)
    return svc.run_object(run, _base(request))


@router.delete("/evals/{eval_id}/runs/{run_id}")
def delete_run(eval_id: str, run_id: str, session: SessionDep, project: ProjectDep) -> dict:
    svc.delete_run(session, svc.owned_run(session, project, eval_id, run_id))
    return {"object": "eval.run.deleted", "deleted": True, "run_id": run_id}


@router.get("/evals/{eval_id}/runs/{run_id}/output_items")
def list_output_items(eval_id: str, run_id: str, session: SessionDep, project: ProjectDep,
                      after: str | None = None, limit: Annotated[int, Query()] = 20, order: Order = "asc",
                      status: str | None = None) -> dict:
    svc.owned_run(session, project, eval_id, run_id)
    if not 1 <= limit <= 10_000:
        raise BadRequest("limit must be between 1 and 10000", param="limit")
    q = select(EvalOutputItem).where(EvalOutputItem.run_id == run_id)
    if status is not None:
        wanted = {"pass": "pass", "fail": "fail", "failed": "fail", "error": "error", "errored": "error"}
        if status not in wanted:
            raise BadRequest("status must be pass, fail or error", param="status")
        q = q.where(EvalOutputItem.status == wanted[status])
    col = EvalOutputItem.datasource_item_id
    if after is not None:
        anchor = session.get(EvalOutputItem, after)
        if anchor is None or anchor.run_id != run_id:
            raise BadRequest(f"No such object for cursor 'after': {after}", param="after")
        q = q.where(col < anchor.datasource_item_id if order == "desc" else col > anchor.datasource_item_id)
    rows = list(session.scalars(q.order_by(col.desc() if order == "desc" else col).limit(limit + 1)))
    data = [svc.output_item_object(o) for o in rows[:limit]]
    return {"object": "list", "data": data, "has_more": len(rows) > limit,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


@router.get("/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}")
def get_output_item(eval_id: str, run_id: str, output_item_id: str, session: SessionDep,
                    project: ProjectDep) -> dict:
    from api.errors import NotFound

    svc.owned_run(session, project, eval_id, run_id)
    o = session.get(EvalOutputItem, output_item_id)
    if o is None or o.run_id != run_id:
        raise NotFound(f"No such output item: {output_item_id}", param="output_item_id",
                       code="output_item_not_found")
    return svc.output_item_object(o)
