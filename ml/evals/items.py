"""Eval items: the rows a run grades, where they come from, and the chat messages each one becomes.

An items file is JSONL with one `{"item": {...}}` object per line (a bare object is taken as the item;
an optional `"sample": {"output_text": ...}` carries a pre-computed answer for `jsonl` runs). Items are
checked against the eval's item schema (required keys and JSON types of the top-level properties).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ml.evals.criteria import EvalSpecError
from ml.evals.templates import TemplateError, lookup, render_template

_JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list,
               "object": dict, "null": type(None)}
ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class EvalItem:
    index: int
    item: dict[str, Any]
    sample: dict[str, Any] | None = None


def _row(obj: Any, where: str) -> tuple[dict, dict | None]:
    if not isinstance(obj, dict):
        raise EvalSpecError(f"{where}: each row must be a JSON object", "source")
    if "item" in obj and set(obj) <= {"item", "sample"}:
        item, sample = obj["item"], obj.get("sample")
        if not isinstance(item, dict):
            raise EvalSpecError(f"{where}: item must be an object", "source")
        if sample is not None and not isinstance(sample, dict):
            raise EvalSpecError(f"{where}: sample must be an object", "source")
        return item, sample
    return obj, None


def parse_items(lines: Iterable[str | bytes], max_items: int = 100_000) -> list[EvalItem]:
    """Items from JSONL text lines; errors name the line."""
    out: list[EvalItem] = []
    for n, line in enumerate(lines, start=1):
        text = line.decode("utf-8") if isinstance(line, bytes) else line
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise EvalSpecError(f"line {n}: invalid JSON ({e})", "source") from None
        item, sample = _row(obj, f"line {n}")
        out.append(EvalItem(len(out), item, sample))
        if len(out) > max_items:
            raise EvalSpecError(f"more than {max_items} items", "source")
    if not out:
        raise EvalSpecError("the data source has no items", "source")
    return out


def items_from_content(content: Any, param: str) -> list[EvalItem]:
    """Items from an inline `file_content` list of `{"item": ..., "sample"?: ...}`."""
    if not isinstance(content, list) or not content:
        raise EvalSpecError(f"{param} must be a non-empty list", param)
    out = []
    for i, row in enumerate(content):
        item, sample = _row(row, f"{param}[{i}]")
        out.append(EvalItem(i, item, sample))
    return out


def check_item(item: dict[str, Any], schema: dict[str, Any] | None, where: str) -> None:
    """The item's required keys are there and its top-level properties have the declared JSON types."""
    if not schema:
        return
    for key in schema.get("required") or []:
        if key not in item:
            raise EvalSpecError(f"{where}: item has no required field {key!r}", "source")
    for key, prop in (schema.get("properties") or {}).items():
        if key not in item or not isinstance(prop, dict) or "type" not in prop:
            continue
        types = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
        value = item[key]
        ok = any(isinstance(value, _JSON_TYPES.get(t, object)) and not (t in ("integer", "number") and
                                                                          isinstance(value, bool))
                 for t in types)
        if not ok:
            raise EvalSpecError(f"{where}: item.{key} should be {'/'.join(types)}", "source")


def _content_text(content: Any, at: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, dict) and content.get("type") in ("input_text", "output_text") and \
            isinstance(content.get("text"), str):
        return content["text"]
    raise EvalSpecError(f"{at}: content must be text (a string or an input_text part)", at)


def validate_template(template: Any, param: str) -> None:
    if not isinstance(template, list) or not template:
        raise EvalSpecError(f"{param} must be a non-empty list of messages", param)
    for i, m in enumerate(template):
        at = f"{param}[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise EvalSpecError(f"{at}.role must be one of {', '.join(ROLES)}", f"{at}.role")
        _content_text(m.get("content"), f"{at}.content")


def input_messages(spec: dict[str, Any], item: EvalItem) -> list[dict[str, str]]:
    """The chat messages sent to the model for one item (`template` or `item_reference`)."""
    ns = {"item": item.item, "sample": item.sample or {}}
    try:
        if spec["type"] == "template":
            return [{"role": "system" if m["role"] == "developer" else m["role"],
                     "content": render_template(_content_text(m["content"], "template"), ns)}
                    for m in spec["template"]]
        value = lookup(ns, spec["item_reference"].removeprefix("{{").removesuffix("}}").strip())
    except TemplateError as e:
        raise EvalSpecError(f"item {item.index}: {e}", "input_messages") from None
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and all(isinstance(m, dict) and m.get("role") in ROLES for m in value):
        return [{"role": "system" if m["role"] == "developer" else m["role"],
                 "content": _content_text(m.get("content"), "item_reference")} for m in value]
    raise EvalSpecError(f"item {item.index}: {spec['item_reference']} must be a string or a list of messages",
                        "input_messages.item_reference")
