"""The settings of every method are documented where clients look, from the same rules that check them:
the OpenAPI document (`JobMethod` and one schema per method, with types, ranges, defaults and docstrings)
and the console's form (/console/methods), over real HTTP. A body outside a published range is refused by
the published schema and by the API alike, with a 400 that names the field."""

from __future__ import annotations

import httpx2 as httpx
import jsonschema
import openai
import pytest

METHODS = ["supervised", "dpo", "reward_model", "ppo", "rloo", "grpo"]


@pytest.fixture(scope="module")
def openapi(service) -> dict:
    return httpx.get(f"{service.base_url}/openapi.json", timeout=60).json()


def _resolved(openapi: dict, name: str) -> dict:
    """A component schema with its $refs resolvable (JSON Schema 2020-12 over the whole document)."""
    schema = {**openapi["components"]["schemas"][name], "components": openapi["components"]}
    return schema


def test_openapi_documents_every_method_and_setting(openapi):
    schemas = openapi["components"]["schemas"]
    method = schemas["CreateJob"]["properties"]["method"]
    assert {"$ref": "#/components/schemas/JobMethod"} in method["anyOf"]
    job_method = schemas["JobMethod"]
    assert job_method["properties"]["type"]["enum"] == METHODS
    sft = schemas["SupervisedMethod"]["properties"]
    assert {"type": "integer", "minimum": 1, "maximum": 1024, "default": 16}.items() <= sft["lora"]["properties"]["r"].items()
    assert "rank" in sft["lora"]["properties"]["r"]["description"].lower()
    assert {"const": "auto"} in sft["n_epochs"]["anyOf"] and sft["n_epochs"]["default"] == "auto"
    assert sft["learning_rate"]["anyOf"][0]["exclusiveMinimum"] == 0
    assert sft["hyperparameters"]["properties"]["batch_size"] == sft["batch_size"]  # either place
    ppo = schemas["PpoMethod"]["properties"]
    assert ppo["reward_model"]["type"] == "string"
    assert ppo["batch_size"]["maximum"] == ppo["rollouts_per_step"]["maximum"]  # OpenAI's name for it
    pipeline = schemas["Stages"]["properties"]
    assert pipeline["ppo"]["allOf"] == [{"$ref": "#/components/schemas/PpoMethod"}]


@pytest.mark.parametrize("body, param", [
    ({"type": "supervised", "supervised": {"lora": {"r": 0}}}, "method.supervised.lora.r"),
    ({"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 101}}}, "method.supervised.n_epochs"),
    ({"type": "dpo", "dpo": {"beta": 0}}, "method.dpo.beta"),
    ({"type": "grpo", "grpo": {"reward_model": "x", "num_generations": 1}}, "method.grpo.num_generations"),
    ({"type": "supervised", "supervised": {"no_such_setting": 1}}, "method.supervised.no_such_setting"),
])
def test_out_of_range_is_refused_by_the_schema_and_the_api_alike(openapi, client_a, body, param):
    validator = jsonschema.Draft202012Validator(_resolved(openapi, "JobMethod"))
    assert not validator.is_valid(body)
    good = {"type": body["type"], body["type"]: {k: v for k, v in body[body["type"]].items() if k == "reward_model"}}
    assert validator.is_valid(good)
    with pytest.raises(openai.BadRequestError) as e:
        client_a.fine_tuning.jobs.create(model="tiny-llama", training_file="file-none", method=body)
    assert e.value.body["param"] == param, e.value.body


def test_console_form_shows_the_same_ranges(service, openapi):
    methods = httpx.get(f"{service.base_url}/console/methods", timeout=60).json()["methods"]
    assert list(methods) == METHODS
    sft = {s["name"]: s for s in methods["supervised"]["settings"]}
    r = {s["name"]: s for s in sft["lora"]["fields"]}["r"]
    assert r["kind"] == "int" and r["range"] == {"min": 1, "max": 1024, "min_open": False, "max_open": False}
    lr = sft["learning_rate"]
    assert lr["kind"] == "float" and lr["nullable"] and lr["range"]["min_open"] and lr["range"]["min"] == 0
    assert sft["n_epochs"]["auto"] and sft["n_epochs"]["range"]["max"] == 100
    assert sft["adapter"]["choices"] == ["lora", "qlora", "full"]
    tm = {s["name"]: s for s in sft["lora"]["fields"]}["target_modules"]
    assert tm["kind"] == "str" and tm["list"]
    published = openapi["components"]["schemas"]["SupervisedMethod"]["properties"]
    for name, spec in sft.items():
        assert spec["doc"] == published[name]["description"] and spec["default"] == published[name]["default"]
    assert methods["ppo"]["inputs"][0]["model_kind"] == "reward_model"


@pytest.mark.parametrize("method, param", [
    ({"type": "supervised", "supervised": [None, None]}, "method.supervised"),  # found by the fuzzer: was a 500
    ({"type": "dpo", "dpo": {"hyperparameters": [1]}}, "method.dpo.hyperparameters"),
    ({"type": ["supervised"]}, "method.type"),
])
def test_a_method_of_the_wrong_shape_is_a_400_naming_it(client_a, method, param):
    with pytest.raises(openai.BadRequestError) as e:
        client_a.fine_tuning.jobs.create(model="tiny-llama", training_file="file-none", method=method,
                                         hyperparameters={"n_epochs": 1})
    assert e.value.body["param"] == param, e.value.body
