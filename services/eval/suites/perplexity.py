"""Perplexity of held-out text, scored by rolling windows over prompt logprobs.

Each document is tokenised once (no special tokens) and preceded by the BOS
token, so the first real token has a context. Windows of at most ``window``
tokens slide by ``stride``: every token is predicted exactly once, from the
up to ``window - 1`` tokens before it. With ``stride == window - 1`` the
windows are disjoint (lm-evaluation-harness's ``loglikelihood_rolling``);
smaller strides give each prediction more context.
"""

from __future__ import annotations

import json

from .. import stats
from ..client import ModelOutputError
from .base import RunContext, Suite, SuiteError, SuiteParams, SuiteResult, file_hash, resolve_dataset


class PerplexityParams(SuiteParams):
    dataset: str = "heldout.txt"
    """A ``.txt`` file (documents separated by blank lines) or ``.jsonl`` with a ``text`` field."""
    window: int = 0
    """Tokens per request including context; 0 = the model's context window minus one."""
    stride: int = 0
    """New tokens scored per window; 0 = ``window - 1`` (disjoint windows)."""


def rolling_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """``(start, score_from, end)`` over positions ``0..n_tokens`` of ``[BOS] + tokens``.

    Position 0 is BOS. A window feeds positions ``start:end`` and scores the
    predictions of positions ``score_from:end``; together the windows score
    positions ``1..n_tokens`` exactly once, and each window holds at most
    ``window`` positions.
    """
    if window < 2 or not 1 <= stride <= window - 1:
        raise ValueError(f"need window >= 2 and 1 <= stride <= window - 1 (window={window}, stride={stride})")
    out, scored = [], 1
    while scored <= n_tokens:
        end = min(n_tokens + 1, scored + stride)
        start = max(0, end - window)
        out.append((start, scored, end))
        scored = end
    return out


def load_documents(path) -> list[str]:
    if path.suffix == ".jsonl":
        docs = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        docs = [d.strip() for d in path.read_text(encoding="utf-8").split("\n\n")]
    docs = [d for d in docs if d]
    if not docs:
        raise SuiteError(f"{path.name} has no documents")
    return docs


class PerplexitySuite(Suite):
    name = "perplexity"
    Params = PerplexityParams

    def __init__(self, params: PerplexityParams, data_dirs) -> None:
        super().__init__(params, data_dirs)
        self.path = resolve_dataset(params.dataset, data_dirs)
        self.docs = load_documents(self.path)[: params.limit or None]

    def fingerprint(self) -> str:
        return super().fingerprint()[:32] + file_hash(self.path)[:32]

    async def _bos(self, ctx: RunContext) -> int:
        info = json.loads((await ctx.client.tokenizer_info(ctx.model)).config_json)
        for name in ("bos_token", "eos_token"):
            if info.get(name):
                return (await ctx.client.tokenize(ctx.model, info[name]))[0]
        raise SuiteError("the tokenizer has neither a BOS nor an EOS token to start documents with")

    async def run(self, ctx: RunContext) -> SuiteResult:
        window = self.params.window or (await ctx.client.max_model_len(ctx.model)) - 1
        stride = self.params.stride or window - 1
        bos = await self._bos(ctx)
        encoded = [await ctx.client.tokenize(ctx.model, d) for d in self.docs]
        jobs = []
        for i, ids in enumerate(encoded):
            seq = [bos, *ids]
            jobs += [(i, seq[s:e], f - s) for s, f, e in rolling_windows(len(ids), window, stride)]
        await ctx.start(len(jobs))

        async def score(job):
            doc, ids, skip = job
            lps = await ctx.client.prompt_logprobs(ctx.model, ids)
            return doc, lps[skip - 1:]  # lps[k] predicts ids[k + 1]

        nll = [0.0] * len(encoded)
        for doc, lps in await ctx.map(score, jobs):
            nll[doc] -= sum(lps)
        counts = [len(ids) for ids in encoded]
        if any(c == 0 for c in counts):
            raise ModelOutputError("a document tokenised to no tokens")
        nll_m, ppl_m = stats.perplexity(nll, counts)
        samples = [{"doc": i, "chars": len(d), "tokens": c, "nll": s, "perplexity": _exp(s / c)}
                   for i, (d, c, s) in enumerate(zip(self.docs, counts, nll, strict=True))]
        return SuiteResult({"perplexity": ppl_m, "nll_per_token": nll_m}, samples)


def _exp(x: float) -> float:
    import math

    return math.exp(min(x, 700.0))
