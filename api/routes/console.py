"""The web console: the single-page app at `/` and its assets at `/static/...`, shipped inside the package
(api/static, no CDN). Also two data-free helpers for the Train form: the settings schema of every method,
built from the ml config dataclasses (the single definition of each hyperparameter, its default and its
docstring), and a dry-run check of a method body. Everything about a project's files, jobs and models
the console shows comes from the public /v1 API with the user's key; nothing here reads project data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict

from api.errors import BadRequest, NotFound
from chatforge import jobconfig
from ml.config import ConfigError, json_schema
from ml.methods import METHODS

router = APIRouter(include_in_schema=False)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".json": "application/json", ".txt": "text/plain; charset=utf-8",
               ".png": "image/png", ".svg": "image/svg+xml"}
# Only our own origin: the console works offline and this makes sure it never reaches for a CDN.
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
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


def _alternatives(prop: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON Schema alternatives of a property, nested anyOf flattened (optional(integer(auto=True)))."""
    if "anyOf" not in prop:
        return [prop]
    return [alt for sub in prop["anyOf"] for alt in _alternatives(sub)]


def _field(name: str, prop: dict[str, Any]) -> dict[str, Any]:
    """One setting as the form needs it, read off its JSON Schema (ml.config.json_schema): kind (int, float,
    bool, choice, str, group), auto, nullable, choices, and the range the server checks."""
    out: dict[str, Any] = {"name": name, "default": prop.get("default"), "doc": prop.get("description", ""),
                           "auto": False, "nullable": False}
    kinds: set[str] = set()
    for alt in _alternatives(prop):
        kind = alt.get("type")
        if alt.get("const") == "auto":
            out["auto"] = True
        elif kind == "null":
            out["nullable"] = True
        elif kind == "object":
            out["fields"] = [_field(n, p) for n, p in alt["properties"].items()]
            out["doc"] = out["doc"] or alt.get("description", "")
            kinds.add("group")
        elif kind == "array":
            out["list"] = True  # e.g. target_modules: "all-linear" or a list of names
            kinds.add("str")
        elif "enum" in alt:
            out["choices"] = alt["enum"]
            kinds.add("choice")
        elif kind == "boolean":
            kinds.add("bool")
        elif kind in ("integer", "number"):
            kinds.add("int" if kind == "integer" else "float")
            out["range"] = {"min": alt.get("minimum", alt.get("exclusiveMinimum")),
                            "max": alt.get("maximum", alt.get("exclusiveMaximum")),
                            "min_open": "exclusiveMinimum" in alt, "max_open": "exclusiveMaximum" in alt}
    for kind in ("group", "str", "choice", "bool", "float", "int"):
        if kind in kinds:
            out["kind"] = kind
            break
    else:
        raise TypeError(f"no form field for {name}: {prop!r}")
    if out["kind"] == "str":
        out.pop("choices", None)  # a keyword ("all-linear") typed in the text box
    return out


def settings_schema(cls: type) -> list[dict[str, Any]]:
    """The form of a config class: the same JSON Schema the API publishes, so the two cannot drift."""
    return [_field(name, prop) for name, prop in json_schema(cls)["properties"].items()]


def methods_schema() -> dict[str, Any]:
    out = {}
    for method, spec in METHODS.items():
        inputs = [{"name": name, "kind": "model", "required": True, "model_kind": kind,
                   "doc": f"The {kind.replace('_', ' ')} this method uses: the result of a {kind} job."}
                  for name, kind in spec.inputs]
        out[method] = {"data_kind": spec.data, "doc": " ".join((spec.config.__doc__ or "").split()),
                       "inputs": inputs, "settings": settings_schema(spec.config)}
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
    settings = (body.model_extra or {}).get(body.type) or {}
    try:
        if isinstance(settings, dict):
            settings = {k: v for k, v in settings.items() if k not in jobconfig.inputs(body.type)}
        jobconfig.build_config(body.type, settings)
    except ConfigError as e:
        return {"ok": False, "param": e.param, "message": e.message}
    return {"ok": True, "param": None, "message": None}
