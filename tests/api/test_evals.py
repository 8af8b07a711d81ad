"""OpenAI's Evals API through the official SDK on the tiny model: evals CRUD, runs sampled through the
serving engine and graded in the worker, output items, isolation, field-naming 400s, cancel, a worker
killed mid-run that resumes without redoing stored items, and a reward-model win rate (DPO vs base)."""

import json
import time

import openai
import pytest

from tests.api.test_jobs import TERMINAL, wait_status
from tests.conftest import FAST_JOBS
from tests.support.data import preference_rows, write_jsonl
from tests.support.service import postgres_database, redis_database, start_service

RUN_DONE = ("completed", "failed", "canceled")
SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "flag": {"type": "string"}},
          "required": ["question", "flag"]}
TEMPLATE = {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]}
GREEDY = {"temperature": 0, "max_completion_tokens": 8, "seed": 7}


def items(n):
    return [{"item": {"question": f"What is {i} plus {i}?", "flag": "yes" if i % 3 else "no"}} for i in range(n)]


def criteria():
    return [
        {"type": "string_check", "name": "flag", "operation": "eq", "input": "{{item.flag}}", "reference": "yes"},
        {"type": "string_check", "name": "answered", "operation": "ne", "input": "{{sample.output_text}}",
         "reference": "@@never@@"},
        {"type": "text_similarity", "name": "echo", "evaluation_metric": "fuzzy_match",
         "input": "{{sample.output_text}}", "reference": "{{sample.output_text}}", "pass_threshold": 1.0},
    ]


def wait_run(client, eval_id, run_id, statuses=RUN_DONE, timeout=300):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in statuses:
            return run
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} stuck in {run.status}: {run.model_extra}")


@pytest.fixture(scope="module")
def an_eval(client_a):
    return client_a.evals.create(name="arith", data_source_config={
        "type": "custom", "item_schema": SCHEMA, "include_sample_schema": True}, testing_criteria=criteria())


@pytest.fixture(scope="module")
def items_file(client_a, tmp_path_factory):
    p = write_jsonl(tmp_path_factory.mktemp("evals") / "items.jsonl", items(12))
    return client_a.files.create(file=p.open("rb"), purpose="evals")


def test_eval_crud(client_a, an_eval):
    assert an_eval.object == "eval" and an_eval.name == "arith"
    schema = an_eval.data_source_config.schema_
    assert schema["properties"]["item"] == SCHEMA and schema["required"] == ["item", "sample"]
    assert [c.name for c in an_eval.testing_criteria] == ["flag", "answered", "echo"]
    got = client_a.evals.retrieve(an_eval.id)
    assert got.id == an_eval.id and got.testing_criteria[2].evaluation_metric == "fuzzy_match"
    tmp = client_a.evals.create(name="temp", data_source_config={"type": "custom", "item_schema": SCHEMA},
                                testing_criteria=criteria()[:1], metadata={"team": "x"})
    upd = client_a.evals.update(tmp.id, name="renamed", metadata={"team": "y"})
    assert upd.name == "renamed" and upd.metadata == {"team": "y"}
    ids = [e.id for e in client_a.evals.list(limit=100)]
    assert an_eval.id in ids and tmp.id in ids and ids.index(an_eval.id) < ids.index(tmp.id)  # asc default
    assert client_a.evals.delete(tmp.id).deleted
    with pytest.raises(openai.NotFoundError):
        client_a.evals.retrieve(tmp.id)


def test_run_samples_through_engine_grades_and_stores_items(client_a, an_eval, items_file):
    run = client_a.evals.runs.create(an_eval.id, name="tiny greedy", data_source={
        "type": "completions", "model": "tiny-llama", "source": {"type": "file_id", "id": items_file.id},
        "input_messages": TEMPLATE, "sampling_params": GREEDY})
    assert run.status in ("queued", "in_progress") and run.result_counts.total == 12
    run = wait_run(client_a, an_eval.id, run.id)
    assert run.status == "completed", run.error
    assert run.result_counts.model_dump() == {"total": 12, "passed": 8, "failed": 4, "errored": 0}
    per = {r.testing_criteria: (r.passed, r.failed) for r in run.per_testing_criteria_results}
    assert per == {"flag": (8, 4), "answered": (12, 0), "echo": (12, 0)}
    assert run.per_model_usage[0].model_name == "tiny-llama" and run.per_model_usage[0].invocation_count == 12
    assert run.report_url.endswith(f"/#/evals/{an_eval.id}/runs/{run.id}")
    assert run.model_extra["progress"] == {"completed": 12, "total": 12}

    out = list(client_a.evals.runs.output_items.list(run.id, eval_id=an_eval.id, limit=5))  # pages through all
    assert [o.datasource_item_id for o in out] == list(range(12))
    o = out[1]
    assert o.status == "pass" and o.datasource_item == items(12)[1]["item"]
    assert o.sample.model == "tiny-llama" and o.sample.input[0].content == "What is 1 plus 1?"
    assert o.sample.usage.completion_tokens >= 1 and o.sample.seed == 7 + 1
    assert {r.name: r.passed for r in o.results} == {"flag": True, "answered": True, "echo": True}
    assert out[0].status == "fail" and out[0].results[0].score == 0.0
    failed = client_a.evals.runs.output_items.list(run.id, eval_id=an_eval.id, status="fail").data
    assert sorted(f.datasource_item_id for f in failed) == [0, 3, 6, 9]
    again = client_a.evals.runs.output_items.retrieve(o.id, eval_id=an_eval.id, run_id=run.id)
    assert again.sample.output[0].content == o.sample.output[0].content

    # the same engine as /v1/chat/completions: greedy answers match the chat route token for token
    chat = client_a.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "What is 1 plus 1?"}],
                                            temperature=0, max_completion_tokens=8)
    assert chat.choices[0].message.content == o.sample.output[0].content
    runs = client_a.evals.runs.list(an_eval.id)
    assert run.id in [r.id for r in runs.data]
    assert client_a.evals.runs.list(an_eval.id, status="failed").data == []


def test_inline_items_item_reference_and_jsonl_runs(client_a, an_eval):
    content = [{"item": {"question": "hi", "flag": "yes", "chat": [{"role": "user", "content": "Hello!"}]}}]
    run = client_a.evals.runs.create(an_eval.id, data_source={
        "type": "completions", "model": "tiny-llama", "source": {"type": "file_content", "content": content},
        "input_messages": {"type": "item_reference", "item_reference": "item.chat"}, "sampling_params": GREEDY})
    run = wait_run(client_a, an_eval.id, run.id)
    assert run.status == "completed" and run.result_counts.passed == 1
    [o] = client_a.evals.runs.output_items.list(run.id, eval_id=an_eval.id).data
    assert o.sample.input[0].content == "Hello!"

    jsonl = client_a.evals.runs.create(an_eval.id, data_source={"type": "jsonl", "source": {
        "type": "file_content", "content": [{"item": {"question": "q", "flag": "yes"}, "sample": {"output_text": "a"}},
                                            {"item": {"question": "q", "flag": "no"}, "sample": {"output_text": "b"}}]}})
    jsonl = wait_run(client_a, an_eval.id, jsonl.id)
    assert jsonl.status == "completed"
    assert (jsonl.result_counts.passed, jsonl.result_counts.failed) == (1, 1)


def test_project_isolation(client_a, client_b, an_eval):
    run = client_a.evals.runs.list(an_eval.id).data[0]
    with pytest.raises(openai.NotFoundError):
        client_b.evals.retrieve(an_eval.id)
    with pytest.raises(openai.NotFoundError):
        client_b.evals.runs.retrieve(run.id, eval_id=an_eval.id)
    with pytest.raises(openai.NotFoundError):
        client_b.evals.runs.output_items.list(run.id, eval_id=an_eval.id)
    with pytest.raises(openai.NotFoundError):
        client_b.evals.delete(an_eval.id)
    assert an_eval.id not in [e.id for e in client_b.evals.list(limit=100)]


BAD_EVALS = [
    ({"data_source_config": {"type": "stored_completions"}}, "data_source_config.type"),
    ({"data_source_config": {"type": "custom", "item_schema": "x"}}, "data_source_config.item_schema"),
    ({"testing_criteria": [{"type": "score_model", "name": "j"}]}, "testing_criteria[0].type"),
    ({"testing_criteria": [{"type": "string_check", "name": "s", "operation": "eq", "input": "x"}]},
     "testing_criteria[0].reference"),
    ({"testing_criteria": [{"type": "text_similarity", "name": "t", "evaluation_metric": "meteor", "input": "a",
                            "reference": "b", "pass_threshold": 0.5}]}, "testing_criteria[0].evaluation_metric"),
    ({"testing_criteria": [{"type": "reward_model", "name": "r", "model": "tiny-llama"}]}, "testing_criteria[0].model"),
]


@pytest.mark.parametrize("patch,param", BAD_EVALS)
def test_bad_eval_names_the_field(client_a, patch, param):
    body = {"data_source_config": {"type": "custom", "item_schema": SCHEMA}, "testing_criteria": criteria(), **patch}
    with pytest.raises(openai.BadRequestError) as e:
        client_a.evals.create(**body)
    assert e.value.body["param"] == param, e.value.body


BAD_RUNS = [
    ({"type": "responses"}, "data_source.type"),
    ({"model": "no-such-model"}, "data_source.model"),
    ({"source": {"type": "file_content", "content": [{"item": {"question": "q"}}]}}, "data_source.source"),
    ({"input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.nope}}"}]}},
     "data_source.input_messages"),
    ({"input_messages": {"type": "template", "template": [{"role": "robot", "content": "x"}]}},
     "data_source.input_messages.template[0].role"),
    ({"sampling_params": {"temperature": 5}}, "data_source.sampling_params.temperature"),
    ({"sampling_params": {"tools": [{"type": "function"}]}}, "data_source.sampling_params.tools"),
    ({"source": {"type": "file_id", "id": "file-nope"}}, "data_source.source.id"),
]


@pytest.mark.parametrize("patch,param", BAD_RUNS)
def test_bad_run_names_the_field(client_a, an_eval, patch, param):
    ds = {"type": "completions", "model": "tiny-llama", "input_messages": TEMPLATE,
          "source": {"type": "file_content", "content": items(2)}, **patch}
    with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as e:
        client_a.evals.runs.create(an_eval.id, data_source=ds)
    assert e.value.body["param"] == param, e.value.body


# ---- a worker killed mid-run, and cancel (own service: the worker is killed) ----------------------------


@pytest.fixture(scope="module")
def chaos(tmp_path_factory, tiny_model_path):
    with postgres_database() as pg, redis_database(offset=11) as rd:
        svc = start_service(tmp_path_factory.mktemp("evalchaos"), pg, rd, workers=1,
                            models={"tiny-llama": tiny_model_path}, CHATFORGE_SERVE_MAX_BATCH="2", **FAST_JOBS)
        try:
            yield svc
        finally:
            svc.stop()


@pytest.fixture(scope="module")
def chaos_client(chaos):
    return openai.OpenAI(base_url=chaos.v1, api_key=chaos.key("evalchaos"), max_retries=0, timeout=120)


def test_run_survives_worker_kill_and_resumes_after_stored_items(chaos, chaos_client):
    c = chaos_client
    ev = c.evals.create(name="chaos", data_source_config={"type": "custom", "item_schema": SCHEMA},
                        testing_criteria=criteria())
    run = c.evals.runs.create(ev.id, data_source={
        "type": "completions", "model": "tiny-llama", "source": {"type": "file_content", "content": items(24)},
        "input_messages": TEMPLATE, "sampling_params": {"temperature": 0.7, "max_completion_tokens": 16, "seed": 3}})
    end = time.monotonic() + 300
    while time.monotonic() < end:
        r = c.evals.runs.retrieve(run.id, eval_id=ev.id)
        if r.model_extra["progress"]["completed"] >= 4 or r.status in RUN_DONE:
            break
        time.sleep(0.05)
    assert r.status == "in_progress" and r.model_extra["progress"]["completed"] < 24, r
    chaos.workers[0].kill9()
    before = {o.datasource_item_id: (o.id, o.sample.output[0].content)
              for o in c.evals.runs.output_items.list(run.id, eval_id=ev.id, limit=100).data}
    assert 4 <= len(before) < 24
    chaos.start_worker()
    run = wait_run(c, ev.id, run.id, timeout=300)
    assert run.status == "completed", run.error
    assert run.model_extra["attempts"] == 2
    assert run.result_counts.total == 24 and run.result_counts.passed + run.result_counts.failed == 24
    after = c.evals.runs.output_items.list(run.id, eval_id=ev.id, limit=100).data
    assert sorted(o.datasource_item_id for o in after) == list(range(24))  # each item once
    for o in after:  # items stored before the kill were kept, not redone
        if o.datasource_item_id in before:
            assert (o.id, o.sample.output[0].content) == before[o.datasource_item_id]


def test_cancel_and_delete_run(chaos_client):
    c = chaos_client
    ev = c.evals.create(name="cancel", data_source_config={"type": "custom", "item_schema": SCHEMA},
                        testing_criteria=criteria()[:1])
    run = c.evals.runs.create(ev.id, data_source={
        "type": "completions", "model": "tiny-llama", "source": {"type": "file_content", "content": items(200)},
        "input_messages": TEMPLATE, "sampling_params": {"max_completion_tokens": 32}})
    wait_run(c, ev.id, run.id, statuses=("in_progress",) + RUN_DONE)
    c.evals.runs.cancel(run.id, eval_id=ev.id)
    run = wait_run(c, ev.id, run.id)
    assert run.status == "canceled" and run.model_extra["progress"]["completed"] < 200
    assert c.evals.runs.delete(run.id, eval_id=ev.id).deleted
    with pytest.raises(openai.NotFoundError):
        c.evals.runs.retrieve(run.id, eval_id=ev.id)


# ---- pairwise: a DPO model against its base, judged by a trained reward model -------------------------


@pytest.fixture(scope="module")
def trained(client_a, tmp_path_factory):
    pref = client_a.files.create(file=write_jsonl(tmp_path_factory.mktemp("pw") / "pref.jsonl",
                                                  preference_rows(10)).open("rb"), purpose="fine-tune").id

    def train(mtype, settings):
        job = client_a.fine_tuning.jobs.create(model="tiny-llama", training_file=pref,
                                               method={"type": mtype, mtype: settings})
        return job

    jobs = [train("reward_model", {"hyperparameters": {"n_epochs": 1, "batch_size": 4}, "max_length": 64}),
            train("dpo", {"hyperparameters": {"n_epochs": 1, "batch_size": 4}, "max_length": 64})]
    done = [wait_status(client_a, j.id, TERMINAL, timeout=600) for j in jobs]
    assert all(j.status == "succeeded" for j in done), [j.error for j in done]
    return done[0].fine_tuned_model, done[1].fine_tuned_model


def test_pairwise_win_rate_dpo_vs_base(client_a, trained, service, key_a):
    import httpx2 as httpx

    rm, dpo = trained
    ev = client_a.evals.create(name="dpo vs base", data_source_config={"type": "custom", "item_schema": {
        "type": "object", "properties": {"n": {"type": "integer"}}}}, testing_criteria=[
        {"type": "reward_model", "name": "judge", "model": rm, "mode": "pairwise"},
        {"type": "reward_model", "name": "rm-score", "model": rm, "pass_threshold": -1e9}])
    with pytest.raises(openai.BadRequestError) as e:  # pairwise needs a baseline
        client_a.evals.runs.create(ev.id, data_source={"type": "completions", "model": dpo, "input_messages": {
            "type": "template", "template": [{"role": "user", "content": "Please greet guest number {{item.n}}."}]},
            "source": {"type": "file_content", "content": [{"item": {"n": 1}}]}})
    assert e.value.body["param"] == "data_source.baseline_model"
    run = client_a.evals.runs.create(ev.id, data_source={
        "type": "completions", "model": dpo, "baseline_model": "tiny-llama",
        "source": {"type": "file_content", "content": [{"item": {"n": i}} for i in range(10)]},
        "input_messages": {"type": "template", "template": [
            {"role": "user", "content": "Please greet guest number {{item.n}}."}]},
        "sampling_params": {"temperature": 0, "max_completion_tokens": 12}})
    run = wait_run(client_a, ev.id, run.id)
    assert run.status == "completed", run.error
    [pw] = run.model_extra["pairwise"]
    assert pw["model"] == dpo and pw["baseline_model"] == "tiny-llama" and pw["judge"] == rm
    assert pw["wins"] + pw["losses"] + pw["ties"] == pw["n"] == 10
    assert pw["win_rate"] == pytest.approx((pw["wins"] + pw["ties"] / 2) / 10)
    assert 0 <= pw["ci_low"] <= pw["win_rate"] <= pw["ci_high"] <= 1 and pw["interval"] == "wilson"
    usage = {u.model_name: u.invocation_count for u in run.per_model_usage}
    assert usage == {dpo: 10, "tiny-llama": 10}
    out = client_a.evals.runs.output_items.list(run.id, eval_id=ev.id, limit=10).data
    outcomes = [next(r for r in o.results if r.name == "judge").model_extra["outcome"] for o in out]
    assert outcomes.count("win") == pw["wins"] and outcomes.count("tie") == pw["ties"]
    # the grader's rewards are the same scores POST /v1/rewards gives
    o = out[0]
    judge = next(r for r in o.results if r.name == "judge").model_extra
    conv = [m.model_dump() for m in o.sample.input]
    body = {"model": rm, "items": [
        {"messages": conv + [{"role": "assistant", "content": o.sample.output[0].content}]},
        {"messages": conv + [{"role": "assistant", "content": o.model_extra["baseline_sample"]["output"][0]["content"]}]}]}
    r = httpx.post(service.v1 + "/rewards", json=body, headers={"Authorization": f"Bearer {key_a}"}, timeout=120)
    scores = [d["score"] for d in r.json()["data"]]
    assert scores == pytest.approx([judge["reward"], judge["baseline_reward"]], abs=1e-4)
    assert json.dumps(run.model_extra["pairwise"])  # plain JSON for the console
