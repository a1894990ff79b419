"""The synthetic tasks of the ``tiny-chat`` recipe, as held-out eval samples.

One JSONL line per sample: ``{"task", "prompt", "answer"}``; the prompt is
sent as one user message through the model's chat template and the answer is
compared after whitespace normalisation. The trainer's recipe draws its
training data from the same kinds of task; this file draws from another seed
range, so eval samples are held out. Regenerate the shipped file with
``python -m services.eval.tasks services/eval/data/tiny_chat.jsonl``.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable

_WORDS = "red green blue cat dog sun moon tree river stone bird fish lamp door road hill".split()
_NAMES = "ann bob cai dee eve fay gus hal".split()


def arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    op = rng.choice("+-")
    return f"What is {a} {op} {b}?", str(a + b if op == "+" else a - b)


def reversal(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(_WORDS, rng.randint(3, 5))
    return f"Reverse the words: {' '.join(words)}", " ".join(reversed(words))


def sorting(rng: random.Random) -> tuple[str, str]:
    nums = [rng.randint(0, 50) for _ in range(rng.randint(3, 6))]
    return f"Sort these numbers: {' '.join(map(str, nums))}", " ".join(map(str, sorted(nums)))


def counting(rng: random.Random) -> tuple[str, str]:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(2, 8))]
    return f"How many words are there: {' '.join(words)}", str(len(words))


def copying(rng: random.Random) -> tuple[str, str]:
    text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 10)))
    return f"Copy exactly: {text}", text


def table_qa(rng: random.Random) -> tuple[str, str]:
    rows = {n: rng.randint(1, 90) for n in rng.sample(_NAMES, 3)}
    who = rng.choice(list(rows))
    table = "\n".join(f"{n} | {age}" for n, age in rows.items())
    return f"name | age\n{table}\nWhat is the age of {who}?", str(rows[who])


TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "arithmetic": arithmetic, "reversal": reversal, "sorting": sorting,
    "counting": counting, "copying": copying, "table_qa": table_qa,
}


def generate(per_task: int, seed: int = 10_000) -> list[dict]:
    rows = []
    for k, (task, fn) in enumerate(TASKS.items()):
        rng = random.Random(seed + k)
        for _ in range(per_task):
            prompt, answer = fn(rng)
            rows.append({"task": task, "prompt": prompt, "answer": answer})
    return rows


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "tiny_chat.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for row in generate(per_task=10):
            f.write(json.dumps(row) + "\n")
