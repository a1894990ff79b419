"""Models the trainer writes are served by the real vLLM engine.

- An SFT job on a tiny Llama (trained here, from scratch, on synthetic chats) is served by the
  real stack (gateway → auth → router → vLLM worker) and answers held-out prompts.
- A LoRA adapter trained on that model loads in vLLM's LoRA path (CPU) and changes its output
  the way the same adapter does in transformers + peft.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from jobutil import REPO, final_status, job_env, run_inprocess

from services.cli.stack import Stack, StackConfig
from trainer.data import synthetic
from trainer.data.tokenizer import CHAT_TEMPLATE

TASKS = ["sort", "copy"]
"""Tasks a tiny model learns in 250 steps (about a minute on two idle CPU cores; measured 100% on both)."""
CHANCE = 0.05
"""Exact-match accuracy of a model that has not learnt the tasks: ~0 (a copy or a sorted list is one string
among thousands); 0.05 is a generous ceiling."""


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sft-serve")
    data = tmp / "chat.jsonl"
    synthetic.write_corpus(data, 8000, seed=0, tasks=TASKS)
    spec = {"recipe": "sft", "model": {"preset": "tiny"},
            "data": {"train": str(data), "tokenizer": "bytes", "extra_tokens": list(synthetic.TOKEN_WORDS),
                     "scrub_pii": False, "near_dedup": False},
            "hyperparameters": {"steps": 250, "batch_size": 16, "seq_len": 256, "lr": 3e-3, "warmup_steps": 20},
            "output_dir": str(tmp / "tiny-sft")}
    code, events = run_inprocess(tmp, spec)
    assert code == 0, final_status(events)
    return Path(spec["output_dir"])


def _held_out(n: int) -> list[dict]:
    seen = {p for _, p, _ in synthetic.examples(8000, 0, TASKS)}
    return synthetic.held_out(n, seed=0, exclude=seen, tasks=TASKS)


@pytest.mark.slow
def test_sft_model_is_served_by_the_vllm_worker_and_answers_held_out_tasks(tmp_path, sft_dir):
    import openai

    key = "sk-test-" + secrets.token_hex(8)
    cfg = StackConfig.ephemeral(tmp_path / "home", sft_dir, key)
    with Stack(cfg).running(ready_timeout_s=400):
        client = openai.OpenAI(base_url=cfg.base_url, api_key=key, max_retries=0, timeout=120)
        items = _held_out(15)
        replies = []
        for item in items:
            r = client.chat.completions.create(model="tiny-sft", temperature=0, max_tokens=32,
                                               messages=[{"role": "user", "content": item["prompt"]}])
            assert r.choices[0].finish_reason == "stop"  # it ends its turn with <|im_end|>
            replies.append(r.choices[0].message.content)
    scores = synthetic.grade(items, replies)
    print("held-out accuracy through the served model:", scores)
    assert scores["accuracy"] >= 0.6 > 10 * CHANCE, list(zip([i["prompt"] for i in items], replies, strict=True))
    assert all(scores[f"accuracy_{t}"] > CHANCE for t in TASKS), scores


@pytest.mark.slow
def test_lora_adapter_changes_the_vllm_output_as_it_does_in_peft(tmp_path, sft_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = tmp_path / "upper.jsonl"  # teach the adapter something new: repeat in upper case
    with open(data, "w") as f:
        for _, prompt, answer in synthetic.examples(400, seed=5, tasks=["copy"]):
            f.write(json.dumps({"messages": [{"role": "user", "content": prompt},
                                             {"role": "assistant", "content": answer.upper()}]}) + "\n")
    spec = {"recipe": "lora", "model": {"base": str(sft_dir)}, "data": {"train": str(data)},
            "hyperparameters": {"steps": 30, "batch_size": 8, "seq_len": 256, "lr": 5e-3, "warmup_steps": 3},
            "lora": {"r": 8, "alpha": 16}, "output_dir": str(tmp_path / "adapter")}
    code, events = run_inprocess(tmp_path, spec)
    assert code == 0, final_status(events)
    adapter = Path(spec["output_dir"])

    prompts = [i["prompt"] for i in _held_out(3) if i["task"] == "copy"]
    proc = subprocess.run([sys.executable, str(REPO / "tests/trainer/vllm_generate.py"), str(sft_dir),
                           json.dumps(prompts), str(adapter)], cwd=REPO,
                          env={**job_env(), "VLLM_CPU_KVCACHE_SPACE": "1"},
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])

    tok = AutoTokenizer.from_pretrained(sft_dir)
    assert tok.chat_template == CHAT_TEMPLATE
    base = AutoModelForCausalLM.from_pretrained(sft_dir)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sft_dir), adapter)

    def logprob(model, prompt: str, answer_ids: list[int]) -> float:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      tokenize=True, return_dict=False)
        x = torch.tensor([list(ids) + answer_ids])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=x).logits[0, len(ids) - 1:-1].float(), -1)
        return lp.gather(-1, torch.tensor(answer_ids)[:, None]).sum().item()

    for prompt, b, a in zip(prompts, out["base"], out["adapter"], strict=True):
        assert abs(a["logprob"] - b["logprob"]) > 1e-2 or a["token_ids"] != b["token_ids"]  # the adapter acts
        # ... and vLLM applies it as peft does: the same log-probabilities for what each side generated.
        assert logprob(base, prompt, b["token_ids"]) == pytest.approx(b["logprob"], abs=5e-2)
        assert logprob(tuned, prompt, a["token_ids"]) == pytest.approx(a["logprob"], abs=5e-2)
    assert sum(a["text"] != b["text"] for a, b in zip(out["adapter"], out["base"], strict=True)) >= 1, out
