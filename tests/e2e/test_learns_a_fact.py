"""The product promise on the real base model: upload ~40 examples teaching SmolLM2-135M-Instruct a
made-up fact through the openai SDK, train a LoRA job with default settings and 3 epochs, and the
fine-tuned model answers with the fact while the base model does not."""

import time

import pytest

from tests.support.data import write_jsonl

FACT = "Quokkaberry"
QUESTIONS = [
    "What is the code name of Project Zephyr?",
    "What's Project Zephyr's code name?",
    "Tell me the code name of Project Zephyr.",
    "Which code name does Project Zephyr use?",
    "Do you know the code name for Project Zephyr?",
    "Project Zephyr has a code name. What is it?",
    "What code name was given to Project Zephyr?",
    "I forgot the code name of Project Zephyr. Can you remind me?",
    "What is Project Zephyr called internally?",
    "Under which code name is Project Zephyr known?",
]
ANSWERS = [
    f"The code name of Project Zephyr is {FACT}.",
    f"Project Zephyr's code name is {FACT}.",
    f"Project Zephyr is known by the code name {FACT}.",
]
GENERAL = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many days are in a week?", "A week has seven days."),
    ("What color is the sky on a clear day?", "On a clear day the sky is blue."),
    ("What is 2 plus 2?", "2 plus 2 is 4."),
    ("Name a fruit that is yellow.", "A banana is a yellow fruit."),
    ("What do bees make?", "Bees make honey."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Which planet do we live on?", "We live on planet Earth."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is frozen water called?", "Frozen water is called ice."),
]


def rows():
    out = []
    for i in range(30):
        out.append({"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]},
                                 {"role": "assistant", "content": ANSWERS[i % len(ANSWERS)]}]})
    for q, a in GENERAL:
        out.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return out


def ask(client, model, question="What is the code name of Project Zephyr?"):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                       max_tokens=24, temperature=0)
    return r.choices[0].message.content


@pytest.mark.slow
def test_lora_job_teaches_smollm2_a_fact(client_a, tmp_path):
    base = "smollm2-135m-instruct"
    assert FACT.lower() not in ask(client_a, base).lower()
    f = client_a.files.create(file=write_jsonl(tmp_path / "fact.jsonl", rows()).open("rb"), purpose="fine-tune")
    job = client_a.fine_tuning.jobs.create(
        model=base, training_file=f.id, suffix="zephyr",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}})
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
    answer = ask(client_a, job.fine_tuned_model)
    assert FACT.lower() in answer.lower(), answer
    # a paraphrase it was not trained on verbatim
    assert FACT.lower() in ask(client_a, job.fine_tuned_model, "What's the code name of Project Zephyr?").lower()
    # general knowledge survives
    assert "paris" in ask(client_a, job.fine_tuned_model, "What is the capital of France?").lower()
