"""From a job's `method` object (OpenAI's shape plus our settings) to the ml config dataclass.

One translation, used by the API when it validates a request and by the worker when it runs the job.
The dataclasses in ml.config / ml.rl.config stay the single definition of every hyperparameter.
"""

from __future__ import annotations

from typing import Any

from ml.config import ConfigError
from ml.methods import METHODS

METHOD_KINDS = {name: spec.data for name, spec in METHODS.items()}  # method -> the data its file must hold


def config_class(method: str):
    return METHODS[method].config


def inputs(method: str) -> dict[str, str]:
    """Settings of `method` that name a model (not hyperparameters): name -> the kind that model must be."""
    return dict(METHODS[method].inputs)


def _accepts_auto(cls, name: str) -> bool:
    return "auto" in str(cls.__dataclass_fields__[name].type).lower()


def flatten_method(method_type: str, body: dict[str, Any]) -> dict[str, Any]:
    """{"hyperparameters": {...}, other settings...} -> the flat dict the ml config takes.

    "auto" on a field that has no auto mode means the config's default. OpenAI's
    `learning_rate_multiplier` scales the method's default learning rate where the config has no
    multiplier of its own. {"adapter": "qlora", "bits": 4} is shorthand for quant.bits. A method's aliases
    rename OpenAI's names (PPO reads `batch_size` as rollouts_per_step; RLOO/GRPO as prompts per step).
    """
    cls = config_class(method_type)
    names = cls.__dataclass_fields__
    body = dict(body or {})
    spec = METHODS[method_type]
    flat = {**{k: v for k, v in body.items() if k != "hyperparameters" and k not in dict(spec.inputs)},
            **(body.get("hyperparameters") or {})}
    if "bits" in flat:
        flat["quant"] = {**(flat.get("quant") or {}), "bits": flat.pop("bits")}
    if "learning_rate_multiplier" in flat and "learning_rate_multiplier" not in names:
        mult = flat.pop("learning_rate_multiplier")
        if mult != "auto":
            if not isinstance(mult, (int, float)) or isinstance(mult, bool) or not 0 < mult <= 100:
                raise ConfigError("learning_rate_multiplier", f'must be a number in (0, 100] or "auto", got {mult!r}')
            flat.setdefault("learning_rate", names["learning_rate"].default * mult)
    for key in [k for k, v in flat.items() if v == "auto" and (k not in names or not _accepts_auto(cls, k))]:
        flat.pop(key)
    for alias, name in spec.aliases:  # e.g. OpenAI's batch_size is PPO's rollouts_per_step
        if alias in flat:
            value = flat.pop(alias)
            if flat.setdefault(name, value) != value:
                raise ConfigError(alias, f"is {method_type}'s {name}; got {alias} {value!r} and {name} "
                                  f"{flat[name]!r}: set one of them")
    return flat


def _object(value: Any, param: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(param, f"must be an object of settings, got {type(value).__name__}")
    return value


def api_param(method_type: str, param: str) -> str:
    """The request's name for a ConfigError param raised past the API (by a recipe): a setting of the method
    becomes "method.<type>.<setting>"; other names (training_file) stay as they are."""
    fields = config_class(method_type).__dataclass_fields__ if method_type in METHODS else {}
    return f"method.{method_type}.{param}" if param.split(".")[0] in fields else param


def build_config(method_type: str, body: dict[str, Any]):
    """The ml config for a method body; ConfigError params are prefixed "method.<type>."."""
    prefix = f"method.{method_type}"
    _object(_object(body, prefix).get("hyperparameters"), f"{prefix}.hyperparameters")
    try:
        return config_class(method_type).from_dict(flatten_method(method_type, body))
    except ConfigError as e:
        raise e.under(f"method.{method_type}") from None
    except TypeError as e:
        raise ConfigError(f"method.{method_type}", str(e)) from None


def config_for(method: dict[str, Any]):
    mtype = method.get("type", "supervised")
    return build_config(mtype, method.get(mtype) or {})


def _openai_extras(spec, props: dict[str, Any]) -> dict[str, Any]:
    """The names flatten_method accepts beyond the config's own fields, documented."""
    extra: dict[str, Any] = {}
    if "learning_rate_multiplier" not in props and "learning_rate" in props:
        extra["learning_rate_multiplier"] = {
            "anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": 100}, {"const": "auto"}],
            "description": "OpenAI's: scales this method's default learning_rate (ignored when learning_rate is set)."}
    for alias, name in spec.aliases:
        rule = {k: v for k, v in props[name].items() if k not in ("description", "default")}
        extra[alias] = {**rule, "description": f"OpenAI's name for {name} (give one of the two)."}
    if "quant" in props:
        extra["bits"] = {"enum": [4, 8], "description": "Shorthand for quant.bits."}
    return extra


def _schema_name(method: str | None) -> str:
    return "JobMethod" if method is None else "".join(p.capitalize() for p in method.split("_")) + "Method"


def schema_ref(method: str | None = None, nullable: bool = False) -> dict[str, Any]:
    """A JSON Schema reference to `JobMethod` (method None) or to one method's settings object."""
    ref = {"$ref": f"#/components/schemas/{_schema_name(method)}"}
    # wrapped: a bare $ref beside a description makes pydantic look the name up among its own models
    return {"anyOf": [ref, {"type": "null"}]} if nullable else {"allOf": [ref]}


def method_components() -> dict[str, Any]:
    """OpenAPI components for a job's `method` object, built from the config classes (ml.config.json_schema):
    `JobMethod` and one `<Method>Method` schema per method with every setting's type, range, default and
    docstring. Settings may stand in `hyperparameters` (OpenAI's place) or beside it."""
    from ml.config import json_schema

    out: dict[str, Any] = {}
    refs: dict[str, Any] = {}
    for name, spec in METHODS.items():
        cfg = json_schema(spec.config)
        props = dict(cfg["properties"])
        props.update(_openai_extras(spec, props))
        models = {key: {"type": "string", "description": f"Required: the id of a {kind} model (the result of a "
                                                           f"{kind} job)."} for key, kind in spec.inputs}
        title = _schema_name(name)
        out[title] = {
            "type": "object", "title": title, "description": cfg["description"],
            "properties": {"hyperparameters": {"type": "object", "properties": props, "additionalProperties": False,
                                               "description": "OpenAI's hyperparameters object; any setting of this "
                                                              "method may be given here or beside it."},
                           **models, **props},
            "additionalProperties": False,
        }
        refs[name] = schema_ref(name)
    out["JobMethod"] = {
        "type": "object", "title": "JobMethod",
        "description": "OpenAI's method object: `type` and the settings under the key of that type. ChatForge "
                       "adds reward_model, ppo, rloo and grpo and more settings per method; unknown settings "
                       "are refused with a 400 naming them.",
        "properties": {"type": {"enum": list(METHODS), "default": "supervised"}, **refs},
        "additionalProperties": False,
    }
    return out
