"""The vocabulary converters use to read one raw record and complain about it precisely.

Owns RecordError (the record is refused: an error), SkipRecord (the record is dropped: a warning),
ConvertContext (collects warnings for the record being converted) and small typed getters whose
messages name the field and the expectation. It does not know any particular dataset format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


class RecordError(Exception):
    """This record cannot be used; the upload is refused until it is fixed."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class SkipRecord(Exception):
    """This record is dropped with a warning (known noise in public datasets, e.g. '<nooutput>')."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass
class ConvertContext:
    """Per-record scratch space: converters add warnings here instead of failing."""

    warnings: list[tuple[str | None, str]] = field(default_factory=list)

    def warn(self, field: str | None, message: str) -> None:
        self.warnings.append((field, message))


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def quoted(text: str, limit: int = 40) -> str:
    """A value shown inside a message: JSON-quoted and shortened."""
    s = json.dumps(text, ensure_ascii=False)
    return s if len(s) <= limit else s[: limit - 4] + '..."'


def present(d: dict[str, Any], key: str) -> bool:
    """A key counts as present unless it is missing or null (Arrow fills absent columns with null)."""
    return d.get(key) is not None


def get_str(d: dict[str, Any], key: str, path: str | None = None, *, required: bool = True) -> str:
    """d[key] as a string; a missing optional key reads as ""."""
    name = path or key
    if not present(d, key):
        if required:
            raise RecordError(name, f'missing "{name}"')
        return ""
    value = d[key]
    if not isinstance(value, str):
        raise RecordError(name, f'"{name}" must be a string, got {json_type(value)}')
    return value


def get_list(d: dict[str, Any], key: str, path: str | None = None) -> list[Any]:
    name = path or key
    if not present(d, key):
        raise RecordError(name, f'missing "{name}"')
    value = d[key]
    if not isinstance(value, list):
        raise RecordError(name, f'"{name}" must be an array, got {json_type(value)}')
    return value


def get_dict(d: dict[str, Any], key: str, path: str | None = None) -> dict[str, Any]:
    name = path or key
    if not present(d, key):
        raise RecordError(name, f'missing "{name}"')
    value = d[key]
    if not isinstance(value, dict):
        raise RecordError(name, f'"{name}" must be an object, got {json_type(value)}')
    return value


def get_number(d: dict[str, Any], key: str) -> float:
    """A number; numeric strings are accepted because CSV cells are always strings."""
    if not present(d, key):
        raise RecordError(key, f'missing "{key}"')
    value = d[key]
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise RecordError(key, f'"{key}" must be a number, got {json_type(value)}')
