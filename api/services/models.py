"""Which models a project may see and use."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.errors import NotFound
from chatforge.db.models import Model, Project


def visible_model(session: Session, project: Project, model_id: str, param: str = "model") -> Model:
    """A model the project may use, or a 404 naming `param` (other projects' models do not exist for it)."""
    m = session.get(Model, model_id)
    if m is None or (m.project_id is not None and m.project_id != project.id):
        raise NotFound(f"The model '{model_id}' does not exist or you do not have access to it.",
                       param=param, code="model_not_found")
    return m
