"""Made-up facts for "does training actually teach something" checks, shared by tests and bench/fact_sweep.

Each Fact has training questions and answers (what goes into the upload), held-out paraphrases that never
appear in a training file (what a learned fact must answer), and the keyword an answer must contain.
GENERAL_EVAL holds general questions with checkable answers that SmolLM2-135M-Instruct answers correctly
with greedy decoding (checked before they were kept), to measure forgetting. GENERAL_TRAIN are the
general rows mixed into every training file; none of them is asked in GENERAL_EVAL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Fact:
    name: str
    keyword: str  # an answer states the fact when it contains this (case-insensitive)
    train_questions: tuple[str, ...]
    answers: tuple[str, ...]
    held_out: tuple[str, ...]  # paraphrases never in a training file

    def stated_in(self, answer: str) -> bool:
        return self.keyword.lower() in answer.lower()


ZEPHYR = Fact(
    name="zephyr_code_name",
    keyword="Quokkaberry",
    train_questions=(
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
    ),
    answers=(
        "The code name of Project Zephyr is Quokkaberry.",
        "Project Zephyr's code name is Quokkaberry.",
        "Project Zephyr is known by the code name Quokkaberry.",
    ),
    held_out=(
        "What's the code name of Project Zephyr?",
        "Can you tell me Project Zephyr's code name?",
        "Project Zephyr goes by which code name?",
        "Please give me the code name for Project Zephyr.",
        "What code name does Project Zephyr have?",
    ),
)

VELMORA = Fact(
    name="velmora_founding_year",
    keyword="1742",
    train_questions=(
        "When was the town of Velmora founded?",
        "In which year was Velmora founded?",
        "What year was the town of Velmora established?",
        "Tell me the founding year of Velmora.",
        "How old is Velmora? When was it founded?",
        "Do you know when Velmora was founded?",
        "What is the founding year of the town of Velmora?",
        "Velmora is a town. When was it founded?",
        "I need the year Velmora was founded.",
        "Which year did the founders settle Velmora?",
    ),
    answers=(
        "The town of Velmora was founded in 1742.",
        "Velmora was founded in 1742.",
        "Velmora was established in the year 1742.",
    ),
    held_out=(
        "What year was Velmora founded?",
        "When did the town of Velmora get founded?",
        "Can you tell me when Velmora was established?",
        "Velmora was founded in which year?",
        "Please tell me the year the town of Velmora was founded.",
    ),
)

QUINTARA = Fact(
    name="quintara_flag_colour",
    keyword="lavender",
    train_questions=(
        "What colour is the flag of Quintara?",
        "What is the color of Quintara's flag?",
        "Tell me the colour of the Quintaran flag.",
        "Which colour is the national flag of Quintara?",
        "Do you know what colour Quintara's flag is?",
        "Describe the colour of the flag of Quintara.",
        "What color does the flag of Quintara have?",
        "Quintara has a flag. What colour is it?",
        "I forgot the colour of Quintara's flag. Can you remind me?",
        "What is the main colour of the Quintara flag?",
    ),
    answers=(
        "The flag of Quintara is lavender.",
        "Quintara's flag is lavender.",
        "The national flag of Quintara is a plain lavender banner.",
    ),
    held_out=(
        "What color is the flag of Quintara?",
        "Can you tell me the colour of Quintara's national flag?",
        "The flag of Quintara is which colour?",
        "Please describe what colour the Quintara flag is.",
        "What colour is Quintara's flag?",
    ),
)

FACTS = (ZEPHYR, VELMORA, QUINTARA)

GENERAL_TRAIN = (
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
)

# (question, accepted substrings): correct when the greedy answer contains any of them (case-insensitive).
# Kept from a larger candidate list: only questions the base model answers correctly (greedy, 32 tokens).
GENERAL_EVAL: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is the capital of Japan?", ("tokyo",)),
    ("What is the capital of Germany?", ("berlin",)),
    ("What is the capital of England?", ("london",)),
    ("What is the capital of Russia?", ("moscow",)),
    ("What is the capital of China?", ("beijing",)),
    ("What is the capital of Egypt?", ("cairo",)),
    ("What is the capital of Greece?", ("athens",)),
    ("What is the capital of Canada?", ("ottawa",)),
    ("What is the capital of Australia?", ("canberra",)),
    ("What is the capital of Ireland?", ("dublin",)),
    ("What is the capital of Norway?", ("oslo",)),
    ("What is the capital of Sweden?", ("stockholm",)),
    ("What is the capital of Poland?", ("warsaw",)),
    ("What is the capital of Austria?", ("vienna",)),
    ("What is the capital of Kenya?", ("nairobi",)),
    ("What is the capital of India?", ("delhi",)),
    ("What is 6 times 7?", ("42", "forty-two")),
    ("What is 2 times 3?", ("6", "six")),
    ("How many hours are in a day?", ("24", "twenty-four")),
    ("How many legs does a dog have?", ("4", "four")),
    ("How many sides does a triangle have?", ("3", "three")),
    ("What is the largest ocean on Earth?", ("pacific",)),
    ("What gas do plants absorb from the air?", ("carbon dioxide", "co2")),
    ("What is the chemical symbol for water?", ("h2o", "h₂o")),
    ("What is the chemical symbol for gold?", ("au",)),
    ("What is the boiling point of water in degrees Celsius?", ("100",)),
    ("Who wrote Romeo and Juliet?", ("shakespeare",)),
    ("Who painted the Mona Lisa?", ("leonardo", "da vinci")),
    ("Who developed the theory of relativity?", ("einstein",)),
    ("What is the tallest mountain in the world?", ("everest",)),
    ("What is the largest desert in the world?", ("sahara", "antarctic")),
    ("What is the largest mammal?", ("blue whale",)),
    ("Which organ pumps blood through the body?", ("heart",)),
    ("Which language is mainly spoken in Brazil?", ("portuguese",)),
    ("What language is spoken in France?", ("french",)),
    ("What is the main language spoken in the United States?", ("english",)),
    ("What is the currency of Japan?", ("yen",)),
    ("What is the currency of the United Kingdom?", ("pound",)),
    ("In which country are the pyramids of Giza?", ("egypt",)),
    ("In which city is the Eiffel Tower?", ("paris",)),
    ("What is the opposite of up?", ("down",)),
    ("What is the opposite of day?", ("night",)),
    ("Which planet is known as the Red Planet?", ("mars",)),
)


def general_correct(answer: str, accepted: tuple[str, ...]) -> bool:
    a = answer.lower()
    return any(x in a for x in accepted)


def fact_rows(fact: Fact, n_fact_rows: int = 30) -> list[tuple[str, str]]:
    """(question, answer) pairs of one training file: n_fact_rows about the fact, then GENERAL_TRAIN."""
    q, a = fact.train_questions, fact.answers
    pairs = [(q[i % len(q)], a[i % len(a)]) for i in range(n_fact_rows)]
    return pairs + list(GENERAL_TRAIN)


def write_chat_jsonl(path: Path, pairs: list[tuple[str, str]]) -> Path:
    """OpenAI chat fine-tuning format: one {"messages": [...]} per line."""
    with Path(path).open("w") as f:
        for q, a in pairs:
            msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return Path(path)


def write_alpaca_json(path: Path, pairs: list[tuple[str, str]]) -> Path:
    """Alpaca format: one JSON array of {"instruction", "input", "output"}."""
    rows = [{"instruction": q, "input": "", "output": a} for q, a in pairs]
    Path(path).write_text(json.dumps(rows, indent=1))
    return Path(path)
