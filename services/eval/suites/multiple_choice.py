"""Multiple choice by loglikelihood: ARC- and HellaSwag-format JSONL from local files.

Each choice is scored as the summed logprob of ``" " + choice`` after the
context, from one prompt-logprobs request of ``[BOS] + context + choice``.
The continuation's tokens are those of the whole string past the context's,
so BPE merges across the boundary are scored as the model sees them (as
lm-evaluation-harness does). ``acc`` picks the largest sum; ``acc_norm``
divides by the continuation's length in bytes first.

Accepted rows:
- ARC: ``{"question", "choices": {"text": [...], "label": [...]}, "answerKey"}``
- HellaSwag: ``{"ctx", "endings": [...], "label"}``
- plain: ``{"question", "choices": [...], "answer": <index>}``
"""

from __future__ import annotations

import json

from .. import stats
from .base import RunContext, Suite, SuiteError, SuiteParams, SuiteResult, file_hash, read_jsonl, resolve_dataset


class MultipleChoiceParams(SuiteParams):
    dataset: str = "arc_sample.jsonl"


def normalize_row(row: dict) -> tuple[str, list[str], int]:
    """``(context, choices, gold index)`` from any accepted row format."""
    if "endings" in row:
        return row["ctx"], list(row["endings"]), int(row["label"])
    choices = row["choices"]
    if isinstance(choices, dict):
        labels, texts = list(choices["label"]), list(choices["text"])
        gold = labels.index(str(row["answerKey"]))
    else:
        texts, gold = list(choices), int(row["answer"])
    return f"Question: {row['question']}\nAnswer:", texts, gold


class MultipleChoiceSuite(Suite):
    name = "multiple_choice"
    Params = MultipleChoiceParams

    def __init__(self, params: MultipleChoiceParams, data_dirs) -> None:
        super().__init__(params, data_dirs)
        self.path = resolve_dataset(params.dataset, data_dirs)
        rows = read_jsonl(self.path)[: params.limit or None]
        try:
            self.items = [normalize_row(r) for r in rows]
        except (KeyError, ValueError, TypeError) as exc:
            raise SuiteError(
                f"{self.path.name} is not ARC, HellaSwag or plain multiple-choice JSONL: {exc!r}") from None
        for i, (_, choices, gold) in enumerate(self.items):
            if not 0 <= gold < len(choices) or len(choices) < 2:
                raise SuiteError(f"{self.path.name} sample {i}: the answer is not one of at least two choices")

    def fingerprint(self) -> str:
        return super().fingerprint()[:32] + file_hash(self.path)[:32]

    async def _bos(self, ctx: RunContext) -> list[int]:
        info = json.loads((await ctx.client.tokenizer_info(ctx.model)).config_json)
        token = info.get("bos_token") or info.get("eos_token")
        return (await ctx.client.tokenize(ctx.model, token))[:1] if token else []

    async def run(self, ctx: RunContext) -> SuiteResult:
        bos = await self._bos(ctx)
        jobs = [(i, j) for i, (_, choices, _) in enumerate(self.items) for j in range(len(choices))]
        await ctx.start(len(jobs))

        async def score(job):
            i, j = job
            context, choices, _ = self.items[i]
            ctx_ids = await ctx.client.tokenize(ctx.model, context)
            whole = await ctx.client.tokenize(ctx.model, context + " " + choices[j])
            n_cont = len(whole) - len(ctx_ids)
            if whole[: len(ctx_ids)] != ctx_ids or n_cont < 1:
                ctx_ids, n_cont = whole[:-1], 1  # the boundary merged away: score the last token only
            lps = await ctx.client.prompt_logprobs(ctx.model, bos + whole)
            return sum(lps[-n_cont:])

        scores = await ctx.map(score, jobs)
        samples, k = [], 0
        for context, choices, gold in self.items:
            lls = scores[k: k + len(choices)]
            k += len(choices)
            norm = [ll / len((" " + c).encode()) for ll, c in zip(lls, choices, strict=True)]
            pred, pred_norm = max(range(len(lls)), key=lls.__getitem__), max(range(len(norm)), key=norm.__getitem__)
            samples.append({"context": context, "choices": choices, "gold": gold, "loglikelihoods": lls,
                            "pred": pred, "pred_norm": pred_norm, "acc": pred == gold, "acc_norm": pred_norm == gold})
        return SuiteResult({"acc": stats.proportion([s["acc"] for s in samples]),
                            "acc_norm": stats.proportion([s["acc_norm"] for s in samples])}, samples)
