"""OpenAI cursor pagination (`after`, `limit`) over any table ordered by creation time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from api.errors import BadRequest


def paginate(session: Session, query: Select, model, after: str | None, limit: int,
             render: Callable[[Any], dict], newest_first: bool = True) -> dict:
    if not 1 <= limit <= 10_000:
        raise BadRequest("limit must be between 1 and 10000", param="limit")
    order = (model.created_at.desc(), model.id.desc()) if newest_first else (model.created_at, model.id)
    if after:
        anchor = session.get(model, after)
        if anchor is None:
            raise BadRequest(f"No such object for cursor 'after': {after}", param="after")
        if newest_first:
            query = query.where(or_(model.created_at < anchor.created_at,
                                    and_(model.created_at == anchor.created_at, model.id < anchor.id)))
        else:
            query = query.where(or_(model.created_at > anchor.created_at,
                                    and_(model.created_at == anchor.created_at, model.id > anchor.id)))
    rows = list(session.scalars(query.order_by(*order).limit(limit + 1)))
    data = [render(r) for r in rows[:limit]]
    return {"object": "list", "data": data, "has_more": len(rows) > limit,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}
