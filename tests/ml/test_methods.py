"""The method table and the one description of every setting.

Each config class declares its method (ml.config.MethodSpec) and each field one rule; the rule both checks
values and yields the field's JSON Schema (ml.config.json_schema), which the API publishes and the console
builds its form from. These tests hold the rule and its schema to the same answers on probe values taken
at and around every bound, so the documentation cannot promise what the check refuses or the reverse.
"""

from __future__ import annotations

from dataclasses import fields

import jsonschema
import pytest

from ml.config import ConfigError, SupervisedConfig, config_field_docs, json_schema
from ml.methods import METHODS

GENERIC = [None, True, False, "auto", "x", "", 0, 1, -1, 2, 3, 4, 8, 0.5, 1.5, -0.5, 2**40, 1e9,
           [], ["q_proj"], [""], "all-linear", {}]


def _config_classes():
    seen, todo = [], [spec.config for spec in METHODS.values()]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        todo += [f.metadata["nested"] for f in fields(cls) if "nested" in f.metadata]
    return seen


def _probes(schema: dict) -> list:
    """Values at, just inside and just outside each numeric bound of a property, plus generic values."""
    out = list(GENERIC)
    for alt in schema.get("anyOf", [schema]):
        for sub in alt.get("anyOf", [alt]):
            step = 1 if sub.get("type") == "integer" else 1e-6
            for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                if key in sub:
                    out += [sub[key] - step, sub[key], sub[key] + step]
            out += list(sub.get("enum", []))
    return out


def _accepts(check, name, value) -> bool:
    try:
        check(name, value)
    except ConfigError:
        return False
    return True


CASES = [(cls, f) for cls in _config_classes() for f in fields(cls) if "nested" not in f.metadata]


@pytest.mark.parametrize("cls, f", CASES, ids=[f"{c.__name__}.{f.name}" for c, f in CASES])
def test_each_rule_and_its_published_schema_give_the_same_answer(cls, f):
    prop = {k: v for k, v in json_schema(cls)["properties"][f.name].items() if k not in ("description", "default")}
    validator = jsonschema.Draft202012Validator(prop)
    for value in _probes(prop):
        if isinstance(value, float) and value.is_integer() and "integer" in str(prop):
            continue  # JSON Schema counts 4.0 as an integer; the rule (and Python code after it) wants an int
        assert validator.is_valid(value) == _accepts(f.metadata["check"], f.name, value), (f.name, value)


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: c.__name__)
def test_schema_carries_every_field_with_its_default_and_docstring(cls):
    schema, docs = json_schema(cls), config_field_docs(cls)
    assert sorted(schema["properties"]) == sorted(f.name for f in fields(cls))
    assert schema["additionalProperties"] is False
    for name, prop in schema["properties"].items():
        assert prop["description"] == docs[name] and prop["description"]
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(cls().to_dict())  # the defaults are valid


def test_every_method_is_declared_once_by_its_config_class():
    assert set(METHODS) == {"supervised", "reward_model", "dpo", "ppo", "rloo", "grpo"}
    assert METHODS["supervised"].config is SupervisedConfig
    assert {s.data for s in METHODS.values()} == {"sft", "preference", "prompts"}
    assert METHODS["reward_model"].produces == "reward_model"
    assert all(dict(s.inputs) == {"reward_model": "reward_model"} for s in METHODS.values() if s.data == "prompts")
    for spec in METHODS.values():
        assert callable(spec.load_recipe()), spec.recipe
    with pytest.raises(TypeError, match="declared twice"):
        type("Again", (SupervisedConfig,), {}, method="dpo", data="preference", recipe="x:y")
