"""The product promise on the real base model: upload ~40 examples teaching SmolLM2-135M-Instruct a
made-up fact through the openai SDK, train a LoRA job with `batch_size: 4` and every other setting at its
default (the case that once learned the chat template but not the fact), and the fine-tuned model states
the fact for paraphrased questions that are not in the training file, while general answers survive.
Measured the way a user would: an Evals API run with a string_check criterion, on the base model and on
the fine-tuned one, with general accuracy (questions the base model gets right) reported beside it."""

import time

import pytest

from tests.support.data import write_jsonl
from tests.support.facts import GENERAL_EVAL, ZEPHYR, fact_rows, general_correct


def rows():
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in fact_rows(ZEPHYR)]


def ask(client, model, question):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                       max_tokens=32, temperature=0)
    return r.choices[0].message.content


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_lora_job_with_default_settings_teaches_smollm2_a_fact(client_a, tmp_path):
    base = "smollm2-135m-instruct"
    assert not any(ZEPHYR.stated_in(ask(client_a, base, q)) for q in ZEPHYR.held_out[:2])
    assert not set(ZEPHYR.held_out) & set(ZEPHYR.train_questions)
    f = client_a.files.create(file=write_jsonl(tmp_path / "fact.jsonl", rows()).open("rb"), purpose="fine-tune")
    job = client_a.fine_tuning.jobs.create(
        model=base, training_file=f.id, suffix="zephyr",
        method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 4}}})
    t0 = time.monotonic()
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(2)
        job = client_a.fine_tuning.jobs.retrieve(job.id)
        assert time.monotonic() - t0 < 1200, "training took too long"
    assert job.status == "succeeded", job.error
    metrics = sorted((e for e in client_a.fine_tuning.jobs.list_events(job.id, limit=1000).data
                      if e.type == "metrics"), key=lambda e: e.data["step"])
    first = sum(e.data["train_loss"] for e in metrics[:3]) / 3
    last = sum(e.data["train_loss"] for e in metrics[-3:]) / 3
    assert last < first * 0.7, (first, last)

    answers = [ask(client_a, job.fine_tuned_model, q) for q in ZEPHYR.held_out]
    assert sum(map(ZEPHYR.stated_in, answers)) >= 4, answers
    # general knowledge survives: questions the base model answers correctly, none of them in the file
    general = [general_correct(ask(client_a, job.fine_tuned_model, q), acc) for q, acc in GENERAL_EVAL[:5]]
    assert sum(general) >= 4, general

    # The same, through the Evals API: pass rate 0 on the base model, >= 0.8 fine-tuned, and general accuracy
    # beside it on all 43 general questions. Served in bfloat16 this case measured 98% -> 86% (the sweep's
    # float32 evaluation of the same training: 100% -> 95%); without retain_base it loses 20 points or more.
    fact_eval = make_eval(client_a, "zephyr code name", [(q, ZEPHYR.keyword) for q in ZEPHYR.held_out])
    general_eval = make_eval(client_a, "general", [(q, acc[0]) for q, acc in GENERAL_EVAL])
    rates = {(name, model): pass_rate(client_a, ev, model)
             for name, ev in (("fact", fact_eval), ("general", general_eval))
             for model in (base, job.fine_tuned_model)}
    print("eval pass rates:", rates)
    assert rates[("fact", base)] == 0.0, rates
    assert rates[("fact", job.fine_tuned_model)] >= 0.8, rates
    # GENERAL_EVAL holds what the base model gets right (the eval checks one accepted wording of each answer)
    assert rates[("general", base)] >= 0.9, rates
    assert rates[("general", job.fine_tuned_model)] >= rates[("general", base)] - 0.2, rates


def make_eval(client, name, pairs):
    ev = client.evals.create(
        name=name,
        data_source_config={"type": "custom", "item_schema": {
            "type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
            "required": ["question", "answer"]}, "include_sample_schema": True},
        testing_criteria=[{"type": "string_check", "name": "states the answer", "operation": "ilike",
                           "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}])
    return ev, [{"item": {"question": q, "answer": a}} for q, a in pairs]


def pass_rate(client, ev_items, model):
    ev, items = ev_items
    run = client.evals.runs.create(ev.id, data_source={
        "type": "completions", "model": model, "source": {"type": "file_content", "content": items},
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
        "sampling_params": {"temperature": 0, "max_completion_tokens": 32}})
    t0 = time.monotonic()
    while run.status in ("queued", "in_progress"):
        assert time.monotonic() - t0 < 600, "eval run took too long"
        time.sleep(1)
        run = client.evals.runs.retrieve(run.id, eval_id=ev.id)
    assert run.status == "completed", run.error
    counts = run.result_counts
    assert counts.total == len(items) and counts.errored == 0
    return counts.passed / counts.total
