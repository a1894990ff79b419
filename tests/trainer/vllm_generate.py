"""Greedy generations from the real vLLM engine, optionally through a LoRA adapter; prints one JSON line
with each reply's text, token ids and summed log-probability.

    python tests/trainer/vllm_generate.py MODEL_DIR PROMPTS_JSON [ADAPTER_DIR]

Run as a subprocess by the tests (vLLM starts its own engine process, which
needs the ``__main__`` guard). Prompts go through the model's chat template,
as the worker sends them.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    model, prompts = sys.argv[1], json.loads(sys.argv[2])
    adapter = sys.argv[3] if len(sys.argv) > 3 else None
    kw = {"enable_lora": True, "max_lora_rank": 8, "max_loras": 1} if adapter else {}
    llm = LLM(model=model, max_model_len=512, enforce_eager=True, seed=0, dtype="float32", **kw)
    messages = [[{"role": "user", "content": p}] for p in prompts]
    params = SamplingParams(temperature=0.0, max_tokens=24, logprobs=0)

    def run(**kw) -> list[dict]:
        return [{"text": o.outputs[0].text, "token_ids": list(o.outputs[0].token_ids),
                 "logprob": o.outputs[0].cumulative_logprob} for o in llm.chat(messages, params, use_tqdm=False, **kw)]

    out = {"base": run()}
    if adapter:
        out["adapter"] = run(lora_request=LoRARequest("adapter", 1, adapter))
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
