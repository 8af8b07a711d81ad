"""The product promise on the real base model: upload ~40 examples teaching SmolLM2-135M-Instruct a
made-up fact through the openai SDK, train a LoRA job with `batch_size: 4` and every other setting at its
default (the case that once learned the chat template but not the fact), and the fine-tuned model states
the fact for paraphrased questions that are not in the training file, while general answers survive."""

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
        assert time.monotonic() - t0 < 900, "training took too long"
    assert job.status == "succeeded", job.error
    metrics = sorted((e for e in client_a.fine_tuning.jobs.list_events(job.id, limit=1000).data
                      if e.type == "metrics"), key=lambda e: e.data["step"])
    first = sum(e.data["train_loss"] for e in metrics[:3]) / 3
    last = sum(e.data["train_loss"] for e in metrics[-3:]) / 3
    assert last < first * 0.7, (first, last)

    answers = [ask(client_a, job.fine_tuned_model, q) for q in ZEPHYR.held_out]
    assert sum(map(ZEPHYR.stated_in, answers)) >= 4, answers
    # general knowledge survives: questions the base model answers correctly, none of them in the file
    general = [general_correct(ask(client_a, job.fine_tuned_model, q), acc) for q, acc in GENERAL_EVAL[:10]]
    assert sum(general) >= 8, general
