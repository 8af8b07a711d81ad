"""`{{item.question}}` / `{{sample.output_text}}` substitution, as OpenAI's graders and input templates do.

A variable is a dotted path into a namespace (`item`, `sample`); strings are inserted as they are,
other values as JSON. A path that does not exist is an error naming it, never a silent empty string.
"""

from __future__ import annotations

import json
import re
from typing import Any

_VAR = re.compile(r"\{\{\s*([A-Za-z_]\w*(?:\.\w+)*)\s*\}\}")


class TemplateError(ValueError):
    """A template names a variable the item or sample does not have."""


def lookup(namespaces: dict[str, Any], path: str) -> Any:
    head, *rest = path.split(".")
    if head not in namespaces:
        raise TemplateError(f"unknown variable {{{{{path}}}}} (use item.* or sample.*)")
    value = namespaces[head]
    for part in rest:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise TemplateError(f"{{{{{path}}}}}: no field {part!r}")
    return value


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def render_template(template: str, namespaces: dict[str, Any]) -> str:
    return _VAR.sub(lambda m: _text(lookup(namespaces, m.group(1))), template)


def variables(template: str) -> list[str]:
    return _VAR.findall(template)
