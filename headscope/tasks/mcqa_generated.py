"""Generated multiple-choice questions, so that head selection has enough validation data.

The built-in set (``data/mcqa.json``) holds 48 hand-written questions: too few to choose one head
out of hundreds on a validation split and still measure it on a test split. These generators
make any number of further easy four-option questions from facts we wrote ourselves, seeded and
deterministic:

- capitals: "What is the capital of France?" (pairs from ``data/facts_capitals.json``), three
  other capitals as distractors;
- addition: "What is 7 plus 5?" with nearby numbers as distractors;
- weekdays and months: "Which day comes after Monday?" with other days (months) as distractors.

The correct option's position is drawn uniformly, so every letter is equally often right.
"""

from __future__ import annotations

import random
from typing import Any

from headscope.datafiles import load_json

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]


def _capital_pairs() -> list[tuple[str, str]]:
    data = load_json("facts_capitals.json")
    return [(str(a), str(b)) for a, b in data["pairs"]]


def _question(rng: random.Random, text: str, answer: str, pool: list[str]) -> dict[str, Any]:
    distractors = rng.sample([p for p in dict.fromkeys(pool) if p != answer], 3)
    at = rng.randrange(4)
    options = distractors[:at] + [answer] + distractors[at:]
    return {"question": text, "options": options, "answer": at}


def generated_questions(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` questions cycling through the four generators (seeded, deterministic)."""
    rng = random.Random(seed)
    capitals = _capital_pairs()
    out: list[dict[str, Any]] = []
    kinds = ["capital", "addition", "weekday", "month"]
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if kind == "capital":
            country, capital = capitals[rng.randrange(len(capitals))]
            out.append(_question(rng, f"What is the capital of {country}?", capital, [c for _, c in capitals]))
        elif kind == "addition":
            a, b = rng.randint(2, 20), rng.randint(2, 20)
            near = [str(a + b + d) for d in (-3, -2, -1, 1, 2, 3, 10)]
            out.append(_question(rng, f"What is {a} plus {b}?", str(a + b), near))
        elif kind == "weekday":
            j = rng.randrange(7)
            out.append(_question(rng, f"Which day comes after {WEEKDAYS[j]}?", WEEKDAYS[(j + 1) % 7], WEEKDAYS))
        else:
            j = rng.randrange(12)
            out.append(_question(rng, f"Which month comes after {MONTHS[j]}?", MONTHS[(j + 1) % 12], MONTHS))
    return out
