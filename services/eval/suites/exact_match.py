"""Exact-match generation: the tiny-chat tasks and GSM8K-style word problems.

Generation is greedy (temperature 0) with a fixed seed, so a run is
repeatable. ``tiny_chat`` sends each prompt as a user message through the chat
template and compares the whole answer; ``gsm8k`` prompts with
``Question: …\\nAnswer:`` (optionally after seeded few-shot examples) and
compares the extracted final number with the reference after ``####``.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict

from .. import stats
from .base import RunContext, Suite, SuiteError, SuiteParams, SuiteResult, file_hash, read_jsonl, resolve_dataset

_STRICT = re.compile(r"#### *(-?[0-9][0-9.,]*)")
_NUMBER = re.compile(r"-?[0-9][0-9.,]*")


def normalize(text: str) -> str:
    return " ".join(text.strip().split()).rstrip(".").lower()


def normalize_number(text: str) -> str:
    text = text.replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() else str(value)


def extract_answer(text: str) -> tuple[str | None, str]:
    """GSM8K-style: the number after ``####`` if present (strict), else the last number (flexible)."""
    if m := _STRICT.search(text):
        return normalize_number(m.group(1)), "strict"
    numbers = _NUMBER.findall(text)
    return (normalize_number(numbers[-1]), "flexible") if numbers else (None, "none")


class ExactMatchParams(SuiteParams):
    dataset: str = "tiny_chat.jsonl"
    max_tokens: int = 32


class GSM8KParams(SuiteParams):
    dataset: str = "gsm8k_sample.jsonl"
    max_tokens: int = 128
    num_fewshot: int = 0


class _GenerationSuite(Suite):
    def __init__(self, params, data_dirs) -> None:
        super().__init__(params, data_dirs)
        self.path = resolve_dataset(params.dataset, data_dirs)
        self.rows = self._validate(read_jsonl(self.path))[: params.limit or None]

    def fingerprint(self) -> str:
        return super().fingerprint()[:32] + file_hash(self.path)[:32]

    def _validate(self, rows: list[dict]) -> list[dict]:
        for i, row in enumerate(rows):
            missing = [k for k in self.required if k not in row]
            if missing:
                raise SuiteError(f"{self.path.name} sample {i} lacks {', '.join(missing)}")
        return rows


class TinyChatSuite(_GenerationSuite):
    name = "tiny_chat"
    Params = ExactMatchParams
    required = ("task", "prompt", "answer")

    async def run(self, ctx: RunContext) -> SuiteResult:
        await ctx.start(len(self.rows))

        async def one(item):
            i, row = item
            out = await ctx.client.generate(ctx.model, chat=[{"role": "user", "content": row["prompt"]}],
                                            max_tokens=self.params.max_tokens, seed=self.params.seed + i)
            return {"task": row["task"], "prompt": row["prompt"], "answer": row["answer"], "output": out.text,
                    "finish_reason": out.finish_reason, "correct": normalize(out.text) == normalize(row["answer"])}

        samples = await ctx.map(one, list(enumerate(self.rows)))
        by_task: dict[str, list[bool]] = defaultdict(list)
        for s in samples:
            by_task[s["task"]].append(s["correct"])
        metrics = {"exact_match": stats.proportion([s["correct"] for s in samples])}
        metrics |= {f"exact_match/{t}": stats.proportion(v) for t, v in sorted(by_task.items())}
        return SuiteResult(metrics, samples)


class GSM8KSuite(_GenerationSuite):
    name = "gsm8k"
    Params = GSM8KParams
    required = ("question", "answer")

    def _prompt(self, i: int) -> str:
        rng = random.Random(self.params.seed + i)
        others = [r for j, r in enumerate(self.rows) if j != i]
        shots = rng.sample(others, min(self.params.num_fewshot, len(others)))
        parts = [f"Question: {s['question']}\nAnswer: {s['answer']}" for s in shots]
        parts.append(f"Question: {self.rows[i]['question']}\nAnswer:")
        return "\n\n".join(parts)

    async def run(self, ctx: RunContext) -> SuiteResult:
        await ctx.start(len(self.rows))

        async def one(i: int):
            row = self.rows[i]
            out = await ctx.client.generate(ctx.model, prompt=self._prompt(i), max_tokens=self.params.max_tokens,
                                            stop=["\n\nQuestion:"], seed=self.params.seed + i)
            target, _ = extract_answer(row["answer"])
            got, how = extract_answer(out.text)
            return {"question": row["question"], "target": target, "output": out.text, "extracted": got,
                    "extraction": how, "correct": got is not None and got == target}

        samples = await ctx.map(one, range(len(self.rows)))
        strict = [s["correct"] and s["extraction"] == "strict" for s in samples]
        return SuiteResult({"exact_match": stats.proportion([s["correct"] for s in samples]),
                            "exact_match_strict": stats.proportion(strict)}, samples)
