"""GET/DELETE /v1/models: shared base models plus the caller's fine-tuned models and checkpoints."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import or_, select

from api.deps import ProjectDep, SessionDep, StorageDep
from api.errors import BadRequest
from api.services.models import visible_model
from chatforge.db.models import Model

router = APIRouter(prefix="/v1", tags=["models"])


def model_object(m: Model) -> dict:
    return {
        "id": m.id,
        "object": "model",
        "created": int(m.created_at.timestamp()),
        "owned_by": "chatforge" if m.project_id is None else m.project_id,
        "parent": m.parent,
        "root": m.root,
        "kind": m.kind,
        "job_id": m.job_id,
        "step": m.step,
    }


@router.get("/models")
def list_models(session: SessionDep, project: ProjectDep) -> dict:
    rows = session.scalars(
        select(Model).where(or_(Model.project_id.is_(None), Model.project_id == project.id))
        .order_by(Model.created_at, Model.id)
    )
    return {"object": "list", "data": [model_object(m) for m in rows]}


@router.get("/models/{model_id:path}")
def get_model(model_id: str, session: SessionDep, project: ProjectDep) -> dict:
    return model_object(visible_model(session, project, model_id))


@router.delete("/models/{model_id:path}")
def delete_model(model_id: str, request: Request, session: SessionDep, project: ProjectDep,
                 storage: StorageDep) -> dict:
    m = visible_model(session, project, model_id)
    if m.project_id is None:
        raise BadRequest("Base models are shared and are removed by an operator, not through the API.",
                         param="model", code="base_model")
    doomed = [m] + list(session.scalars(select(Model).where(Model.parent == m.id, Model.kind == "checkpoint")))
    for row in doomed:
        pool = getattr(request.app.state, "engines", None)
        if pool is not None:
            pool.forget_model(row.id)
        session.delete(row)
    session.flush()
    if not session.scalar(select(Model.id).where(Model.storage_key == m.storage_key, Model.id != m.id).limit(1)):
        storage.delete(m.storage_key)
    return {"id": m.id, "object": "model", "deleted": True}
