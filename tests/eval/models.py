"""Model versions made deterministically from the random tiny model, and an independent reference scorer.

Honest about what they are: none of these is trained. ``perturbed`` adds
seeded Gaussian noise (``sigma`` times each tensor's own std) to every weight
of the random tiny Llama. Scored on text *sampled from the unperturbed model*,
the unperturbed model is the best of them in expectation, and more noise is
worse; so "better" and "worse" here mean "closer to / further from the
distribution the eval text came from", which is exactly what perplexity
measures. ``nan_model`` sets every weight to NaN: a model that emits garbage.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch


def _copy(src: Path, dst: Path):
    from transformers import AutoModelForCausalLM

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return AutoModelForCausalLM.from_pretrained(src, torch_dtype=torch.float32)


def perturbed(src: Path, dst: Path, sigma: float, seed: int) -> Path:
    model = _copy(src, dst)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=gen) * sigma * p.std())
    model.save_pretrained(dst, safe_serialization=True)
    return dst


def nan_model(src: Path, dst: Path) -> Path:
    model = _copy(src, dst)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    model.save_pretrained(dst, safe_serialization=True)
    return dst


def sample_text(path: Path, n_docs: int, tokens: int, seed: int) -> list[str]:
    """Documents sampled at temperature 1 from the model at ``path`` (the eval text of the gating test)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    torch.manual_seed(seed)
    docs = []
    for _ in range(n_docs):
        out = model.generate(torch.tensor([[tok.bos_token_id]]), do_sample=True, top_k=0, temperature=1.0,
                             max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, 1:], skip_special_tokens=True)
        docs.append(" ".join(text.split()))  # no blank lines inside a document
    return docs


def reference_logprobs(path: Path, ids: list[int]) -> list[float]:
    """Logprob of each of ``ids[1:]`` from one transformers forward pass in float32."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]  # (T, V)
    lp = torch.log_softmax(logits.double(), dim=-1)
    return [lp[t, ids[t + 1]].item() for t in range(len(ids) - 1)]


def reference_perplexity(path: Path, tokenizer, docs: list[str], windows) -> float:
    """exp(total NLL / tokens) over ``[BOS] + tokens`` of each doc, scored window by window."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    nll, count = 0.0, 0
    for doc in docs:
        ids = tokenizer(doc, add_special_tokens=False).input_ids
        seq = [tokenizer.bos_token_id, *ids]
        for start, score_from, end in windows(len(ids)):
            with torch.no_grad():
                logits = model(torch.tensor([seq[start:end]])).logits[0].double()
            lp = torch.log_softmax(logits, dim=-1)
            for pos in range(score_from, end):
                nll -= lp[pos - start - 1, seq[pos]].item()
        count += len(ids)
    return math.exp(nll / count)
