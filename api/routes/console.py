"""The web console: the single-page app at `/` and its assets at `/static/...`, shipped inside the package
(api/static, no CDN). Also two data-free helpers for the Train form: the settings schema of every method,
built from the ml config dataclasses (the single definition of each hyperparameter, its default and its
docstring), and a dry-run check of a method body. Everything about a project's files, jobs and models
the console shows comes from the public /v1 API with the user's key; nothing here reads project data.
"""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict

from api.errors import BadRequest, NotFound
from chatforge import jobconfig
from ml.config import ConfigError, config_field_docs

router = APIRouter(include_in_schema=False)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".json": "application/json", ".txt": "text/plain; charset=utf-8",
               ".png": "image/png", ".svg": "image/svg+xml"}
# Only our own origin: the console works offline and this makes sure it never reaches for a CDN.
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
# Settings that name inputs rather than tune training, per method (see chatforge.jobconfig).
INPUT_FIELDS = {m: [{"name": "reward_model", "kind": "model", "required": True, "model_kind": "reward_model",
                     "doc": "The reward model that scores sampled replies: the result of a reward_model job."}]
                for m in jobconfig.ONLINE_RL}


@router.get("/")
def console_page() -> FileResponse:
    return _file(STATIC_DIR / "index.html")


@router.get("/static/{path:path}")
def console_asset(path: str) -> FileResponse:
    target = (STATIC_DIR / path).resolve()
    if not target.is_relative_to(STATIC_DIR) or not target.is_file() or target.suffix not in MEDIA_TYPES:
        raise NotFound(f"No such console asset: {path}", param="path")
    return _file(target)


def _file(path: Path) -> FileResponse:
    # no-cache = revalidate by ETag each time, so an upgraded server never runs stale scripts
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix],
                        headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP,
                                 "X-Content-Type-Options": "nosniff"})


def _docs(cls: type) -> dict[str, str]:
    """Field docstrings of cls and of the ml config classes it inherits from."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if "__dataclass_fields__" in base.__dict__ and base.__module__.startswith("ml."):
            docs.update(config_field_docs(base))
    return docs


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return None
    if dataclasses.is_dataclass(value):
        return value.to_dict()
    return list(value) if isinstance(value, tuple) else value


def _field(name: str, tp: Any, default: Any, doc: str) -> dict[str, Any]:
    """One setting as the form needs it: kind (int, float, bool, choice, str, group), auto, nullable."""
    members = get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)
    out: dict[str, Any] = {"name": name, "default": default, "doc": doc, "auto": False, "nullable": False}
    kinds: set[str] = set()
    for m in members:
        if m is type(None):
            out["nullable"] = True
        elif get_origin(m) is Literal:
            values = list(get_args(m))
            if values == ["auto"]:
                out["auto"] = True
            else:
                out["choices"] = values
                kinds.add("choice")
        elif dataclasses.is_dataclass(m):
            out["fields"] = settings_schema(m)
            kinds.add("group")
        elif m is bool:
            kinds.add("bool")
        elif m in (int, float, str):
            kinds.add(m.__name__)
        elif get_origin(m) is tuple:
            out["list"] = True  # e.g. target_modules: "all-linear" or a list of names
            kinds.add("str")
    for kind in ("group", "choice", "bool", "float", "int", "str"):
        if kind in kinds:
            out["kind"] = kind
            break
    else:
        raise TypeError(f"no form field for {name}: {tp!r}")
    return out


def settings_schema(cls: type) -> list[dict[str, Any]]:
    hints, docs = get_type_hints(cls), _docs(cls)
    return [_field(f.name, hints[f.name], _default(f), docs.get(f.name, ""))
            for f in dataclasses.fields(cls)]


def methods_schema() -> dict[str, Any]:
    out = {}
    for method, data_kind in jobconfig.METHOD_KINDS.items():
        cls = jobconfig.config_class(method)
        out[method] = {"data_kind": data_kind, "doc": " ".join((cls.__doc__ or "").split()),
                       "inputs": INPUT_FIELDS.get(method, []), "settings": settings_schema(cls)}
    return out


@router.get("/console/methods")
def console_methods() -> JSONResponse:
    return JSONResponse({"object": "list", "methods": methods_schema()}, headers={"Cache-Control": "no-cache"})


class MethodCheck(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str


@router.post("/console/methods/check")
def console_check_method(body: MethodCheck) -> dict[str, Any]:
    """Build the ml config from a `method` object exactly as job creation does; report the first problem."""
    if body.type not in jobconfig.METHOD_KINDS:
        raise BadRequest(f"method.type must be one of {', '.join(jobconfig.METHOD_KINDS)}", param="method.type")
    settings = dict((body.model_extra or {}).get(body.type) or {})
    for name in jobconfig.NOT_HYPERPARAMETERS:
        settings.pop(name, None)
    try:
        jobconfig.build_config(body.type, settings)
    except ConfigError as e:
        return {"ok": False, "param": e.param, "message": e.message}
    return {"ok": True, "param": None, "message": None}
