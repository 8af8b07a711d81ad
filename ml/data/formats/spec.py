"""FormatSpec: how one dataset format is recognised and converted into canonical records.

A record is recognised by the top-level keys it must have (`keys`), refined by an optional predicate
(`matches`) where formats share keys; the most specific match (most keys) wins. Formats of one
`family` may appear mixed in a file (a chat file with a few prompt-only rows); different families may
not. The converters themselves live next to their formats (chat, instruction, preference).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ml.data.formats.fields import ConvertContext
from ml.records import Record

Converter = Callable[[dict[str, Any], ConvertContext], list[Record]]


@dataclass(frozen=True)
class FormatSpec:
    name: str
    kind: str | None  # "sft" | "preference" | "prompts"; None = recognised but not trainable yet
    family: str
    description: str
    keys: frozenset[str]
    convert: Converter
    example: dict[str, Any]
    matches: Callable[[dict[str, Any]], bool] | None = None
    optional: frozenset[str] = field(default_factory=frozenset)
    # Set for formats that are recognised and validated but cannot be trained on yet (kind is None).
    unsupported: str | None = None

    def accepts(self, record: dict[str, Any], present_keys: frozenset[str]) -> bool:
        if not self.keys <= present_keys:
            return False
        return self.matches is None or bool(self.matches(record))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description for an API listing of supported formats."""
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "required_keys": sorted(self.keys),
            "optional_keys": sorted(self.optional),
            "example": self.example,
            "supported": self.unsupported is None,
        }
